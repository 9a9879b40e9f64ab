package browser

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dmctl/dmctl/internal/cli"
)

var screenshots = flag.String("screenshots", "", "write a full-page PNG of each dashboard page into this folder (dashboard-<page>.png)")

// hubProc is one `dmctl hub serve` run in-process through cli.Main.
type hubProc struct {
	dir       string
	ca        string // ca.pem
	serverPEM string // server.pem, the certificate Chromium trusts
	ownerCS   string // the iothubowner connection string it printed
	dashURL   string // the Dashboard: login URL it printed
	origin    string // https://localhost:PORT of the dashboard
	stdout    *lockedBuffer
	stderr    *lockedBuffer
	stop      func()
}

// startHub runs `dmctl hub serve` until stop, and reads what it printed.
func startHub(t testing.TB) *hubProc {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	data := filepath.Join(dir, "hub")
	h := &hubProc{dir: dir, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"dmctl", "--log-level", "warn", "hub", "serve", "--listen", "127.0.0.1:0",
			"--data", data, "--ready-file", ready, "--configuration-interval", "200ms"}, strings.NewReader(""), h.stdout, h.stderr)
	}()
	h.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Errorf("dmctl hub serve did not stop within 20 s of its context ending")
		}
	})
	err := waitFor(20*time.Second, "dmctl hub serve to write its ready file", func() (bool, error) {
		select {
		case code := <-done:
			return false, fmt.Errorf("dmctl hub serve exited %d: %s", code, h.stderr.String())
		default:
		}
		_, err := os.Stat(ready)
		return err == nil, nil
	})
	if err != nil {
		h.stop()
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(h.stdout.String(), "\n") {
		if u, ok := strings.CutPrefix(line, "Dashboard: "); ok {
			h.dashURL = strings.TrimSpace(u)
		}
		if cs, ok := strings.CutPrefix(line, "  HostName="); ok && h.ownerCS == "" {
			h.ownerCS = "HostName=" + strings.TrimSpace(cs)
		}
	}
	if h.dashURL == "" || h.ownerCS == "" {
		h.stop()
		t.Fatalf("dmctl hub serve printed no Dashboard: line or no connection string:\n%s", h.stdout.String())
	}
	u := strings.SplitN(h.dashURL, "/login", 2)
	if len(u) != 2 || !strings.HasPrefix(u[0], "https://") {
		h.stop()
		t.Fatalf("Dashboard URL %q: want https://HOST:PORT/login?token=...", h.dashURL)
	}
	h.origin = u[0]
	h.ca = filepath.Join(data, "ca.pem")
	h.serverPEM = filepath.Join(data, "server.pem")
	t.Cleanup(h.stop)
	return h
}

// dmctl runs one dmctl command against the hub and returns its stdout.
func (h *hubProc) dmctl(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut := &lockedBuffer{}, &lockedBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if code := cli.Main(ctx, append([]string{"dmctl"}, args...), strings.NewReader(""), out, errOut); code != 0 {
		t.Fatalf("dmctl %s: exit %d:\n%s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

// service runs a `dmctl service ...` command with the hub's connection
// string and CA.
func (h *hubProc) service(t testing.TB, args ...string) string {
	t.Helper()
	return h.dmctl(t, append(append([]string{"service"}, args...), "--connection-string", h.ownerCS, "--ca-file", h.ca)...)
}

// createDevice registers id with tags (JSON, "" none) and returns its
// connection string.
func (h *hubProc) createDevice(t testing.TB, id, tags string) string {
	t.Helper()
	args := []string{"device", "create", "--device", id}
	if tags != "" {
		args = append(args, "--tags", tags)
	}
	return strings.TrimSpace(h.service(t, args...))
}

// deviceProc is one `dmctl device run` in-process, logging JSON.
type deviceProc struct {
	log  *lockedBuffer
	stop func()
}

// runDevice runs `dmctl device run` with extra args (a --connection-string
// or --connection-strings-file) until stop, and waits until it is
// connected (its ready file).
func (h *hubProc) runDevice(t testing.TB, name string, args ...string) *deviceProc {
	t.Helper()
	ready := filepath.Join(h.dir, name+".ready.json")
	d := &deviceProc{log: &lockedBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	full := append([]string{"dmctl", "--log-format", "json", "--log-level", "info", "device", "run",
		"--ca-file", h.ca, "--ready-file", ready, "--reboot-delay", "300ms"}, args...)
	go func() { done <- cli.Main(ctx, full, strings.NewReader(""), &lockedBuffer{}, d.log) }()
	d.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Errorf("dmctl device run %s did not stop within 20 s", name)
		}
	})
	t.Cleanup(d.stop)
	err := waitFor(30*time.Second, "dmctl device run ("+name+") to connect", func() (bool, error) {
		select {
		case code := <-done:
			return false, fmt.Errorf("dmctl device run exited %d:\n%s", code, d.log.String())
		default:
		}
		_, err := os.Stat(ready)
		return err == nil, nil
	})
	if err != nil {
		d.stop()
		t.Fatal(err)
	}
	return d
}

// logLine is the part of a device's JSON log line the tests read.
type logLine struct {
	Level   string          `json:"level"`
	Event   string          `json:"event"`
	Version int64           `json:"version"`
	Patch   json.RawMessage `json:"patch"`
	Message string          `json:"message"`
}

// lines decodes the device's JSON log; a line that is not JSON fails.
func (d *deviceProc) lines() ([]logLine, error) {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(d.log.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("device log line is not JSON: %q", sc.Text())
		}
		out = append(out, l)
	}
	return out, sc.Err()
}

// waitFor polls cond every 50 ms until it is true, it fails, or d passes;
// the error names what was waited for.
func waitFor(d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// browse is a browser for one hub: Chromium trusting the hub's server
// certificate.
func browse(t testing.TB, h *hubProc) *Browser {
	t.Helper()
	out := &lockedBuffer{}
	b, err := Start(context.Background(), Config{TrustCert: h.serverPEM, Output: out})
	if err != nil {
		t.Fatalf("%v\nchromium's output:\n%s", err, tail(out.String(), 4000))
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close browser: %v", err)
		}
	})
	return b
}

// do runs actions in tab with a deadline of d; what says what they wait for.
func do(t testing.TB, tab context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := runFor(tab, d, what, actions...); err != nil {
		t.Fatal(err)
	}
}

// get runs one action that returns a value, with a deadline of d.
func get[T any](t testing.TB, tab context.Context, d time.Duration, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, d)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// textIs waits (up to d) until the text of the first element matching css
// satisfies ok, and returns it.
func waitText(t testing.TB, tab context.Context, d time.Duration, css, what string, ok func(string) bool) string {
	t.Helper()
	var last string
	err := waitFor(d, what, func() (bool, error) {
		ctx, cancel := context.WithTimeout(tab, 2*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => { const e = document.querySelector(`+jsString(css)+`); return e ? e.textContent : "\u0000absent"; })()`))
		if err != nil {
			return false, nil // the page may be navigating
		}
		last = v
		return ok(v), nil
	})
	if err != nil {
		t.Fatalf("%v (last text of %s: %q)", err, css, last)
	}
	return last
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// screenshot takes a full-page PNG of the tab, checks it is a PNG of a
// sensible size, and writes it to -screenshots as dashboard-<name>.png.
func screenshot(t testing.TB, tab context.Context, name string) {
	t.Helper()
	buf := get(t, tab, 20*time.Second, "full-page screenshot of "+name, chromedp.FullScreenshot(100))
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("screenshot of %s (%d bytes): not a PNG: %v", name, len(buf), err)
	}
	if r := img.Bounds(); r.Dx() < 800 || r.Dy() < 300 || len(buf) < 10<<10 {
		t.Fatalf("screenshot of %s: %dx%d, %d bytes; want at least 800x300 and 10 KiB", name, r.Dx(), r.Dy(), len(buf))
	}
	if *screenshots == "" {
		return
	}
	if err := os.MkdirAll(*screenshots, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(*screenshots, "dashboard-"+name+".png")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// runCLI runs dmctl args through cli.Main and returns its exit code.
func runCLI(ctx context.Context, stdout, stderr *lockedBuffer, args ...string) int {
	return cli.Main(ctx, append([]string{"dmctl"}, args...), strings.NewReader(""), stdout, stderr)
}
