package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer the command writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveHub runs 'dmctl hub serve' with args until the test ends and
// returns its stdout once the ready file exists.
func serveHub(t *testing.T, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut lockedBuffer
	done := make(chan int, 1)
	argv := append([]string{"dmctl", "hub", "serve", "--data", filepath.Join(dir, "hub"), "--listen", "127.0.0.1:0", "--ready-file", ready}, args...)
	go func() { done <- Main(ctx, argv, strings.NewReader(""), &out, &errOut) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("hub serve did not stop within 15s of the cancel")
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil && strings.Contains(out.String(), "\n") {
			return out.String()
		}
		select {
		case code := <-done:
			t.Fatalf("hub serve exited %d before it was ready: %s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after 15s waiting for hub serve's ready file; stderr: %s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHubServeDashboardAnnounced(t *testing.T) {
	out := serveHub(t)
	var link string
	for _, l := range strings.Split(out, "\n") {
		if u, ok := strings.CutPrefix(l, "Dashboard: "); ok {
			link = u
		}
	}
	u, err := url.Parse(link)
	if err != nil || u.Scheme != "https" || u.Path != "/login" || len(u.Query().Get("token")) < 40 || !strings.HasPrefix(u.Host, "localhost:") {
		t.Fatalf("no 'Dashboard: https://localhost:PORT/login?token=...' line in:\n%s", out)
	}
}

func TestHubServeDashboardJSON(t *testing.T) {
	// The ready file is written after the announcement.
	out := serveHub(t, "-o", "json")
	var got struct {
		DashboardURL string `json:"dashboardURL"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("hub serve -o json: %v in %s", err, out)
	}
	if !strings.HasPrefix(got.DashboardURL, "https://localhost:") || !strings.Contains(got.DashboardURL, "/login?token=") {
		t.Fatalf("dashboardURL = %q in %s", got.DashboardURL, out)
	}
}

func TestHubServeDashboardOff(t *testing.T) {
	out := serveHub(t, "--dashboard", "off")
	if strings.Contains(out, "Dashboard:") {
		t.Fatalf("--dashboard off still announced a dashboard:\n%s", out)
	}
}

func TestHubServeDashboardInvalidAddress(t *testing.T) {
	for _, addr := range []string{"8080", "localhost", "127.0.0.1:99999", "127.0.0.1:http"} {
		code, _, stderr := runMain(t, "hub", "serve", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--dashboard", addr)
		if code != exitUsage || !strings.Contains(stderr, "invalid --dashboard") {
			t.Errorf("--dashboard %q: exit %d, stderr %q; want exit %d naming --dashboard", addr, code, stderr, exitUsage)
		}
	}
}

func TestHubServeDashboardBusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	data := filepath.Join(t.TempDir(), "hub")
	code, _, stderr := runMain(t, "hub", "serve", "--data", data, "--listen", "127.0.0.1:0", "--dashboard", busy.Addr().String())
	if code == 0 || !strings.Contains(stderr, "--dashboard") {
		t.Fatalf("busy dashboard port: exit %d, stderr %q; want a failure whose hint names --dashboard", code, stderr)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("the data folder was created: %v", err)
	}
}
