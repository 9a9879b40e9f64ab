package hub_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
)

func restClient(t *testing.T, hs *hubtest.Server) *http.Client {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}, Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// TestConfigurationReachesConnectedDevice creates a configuration over REST
// and waits for the connected device to receive its desired patch, and for
// the twin to show the configuration applied.
func TestConfigurationReachesConnectedDevice(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t, func(c *hub.Config) { c.ConfigurationInterval = 50 * time.Millisecond })
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.subscribe(t, iothub.DesiredFilter)

	body := `{"id":"fw","content":{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.0"}}},"targetCondition":"deviceId = 'd1'","priority":1}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "https://"+hs.HostName()+"/configurations/fw?api-version=2021-04-12", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", policyToken(t, hs))
	req.Header.Set("Content-Type", "application/json")
	resp, err := restClient(t, hs).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT /configurations/fw: %d %s", resp.StatusCode, raw)
	}
	m := d.next(ctx, t) // bounded by testCtx: 30 s for the desired patch
	var patch map[string]any
	if err := json.Unmarshal(m.Payload(), &patch); err != nil {
		t.Fatal(err)
	}
	if fw, _ := patch["firmware"].(map[string]any); fw["fwVersion"] != "2.0" {
		t.Fatalf("device received %s on %s", m.Payload(), m.Topic())
	}
	tw, err := hs.Store().Twin("d1")
	if err != nil {
		t.Fatal(err)
	}
	if tw.Configurations["fw"].Status != iothub.ConfigurationApplied {
		t.Fatalf("twin configurations %v", tw.Configurations)
	}
}

func TestPackagesServed(t *testing.T) {
	dir := t.TempDir()
	pkg := []byte("firmware image 2.0\n")
	if err := os.WriteFile(filepath.Join(dir, "fw-2.0.bin"), pkg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "b.bin"), []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret.txt")
	if err := os.WriteFile(secret, []byte("not for devices"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, "link.bin")); err != nil {
		t.Fatal(err)
	}
	hs := hubtest.NewServer(t, func(c *hub.Config) { c.PackagesDir = dir })
	client := restClient(t, hs)
	get := func(method, path string) (int, http.Header, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(testCtx(t), method, "https://"+hs.HostName()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	code, hdr, b := get("GET", "/packages/fw-2.0.bin")
	sum := sha256.Sum256(b)
	want := sha256.Sum256(pkg)
	if code != 200 || hdr.Get("Content-Length") != fmt.Sprint(len(pkg)) || hex.EncodeToString(sum[:]) != hex.EncodeToString(want[:]) {
		t.Fatalf("download: %d, Content-Length %q, %q", code, hdr.Get("Content-Length"), b)
	}
	if code, _, b := get("GET", "/packages/sub/b.bin"); code != 200 || string(b) != "b" {
		t.Errorf("file in a sub-folder: %d %q", code, b)
	}
	for _, p := range []string{
		"/packages/missing.bin", "/packages/", "/packages/sub", "/packages/sub/",
		"/packages/../hub.db", "/packages/%2e%2e/hub.db", "/packages/sub/%2e%2e/%2e%2e/hub.db",
		"/packages/..%2fhub.db", "/packages/link.bin", "/packages/sub\\..\\fw-2.0.bin",
	} {
		if code, _, b := get("GET", p); code != 404 {
			t.Errorf("GET %s: %d %q, want 404", p, code, b)
		}
	}
	if code, _, _ := get("PUT", "/packages/fw-2.0.bin"); code != 405 {
		t.Errorf("PUT a package: %d, want 405", code)
	}
	// No auth on packages, but the REST API still needs it.
	if code, _, _ := get("GET", "/devices"); code != 401 {
		t.Errorf("GET /devices without a token: %d, want 401", code)
	}
}

func TestPackagesFolderMustExist(t *testing.T) {
	_, err := hub.New(hub.Config{DataDir: t.TempDir(), Listen: []string{"127.0.0.1:0"}, PackagesDir: filepath.Join(t.TempDir(), "missing")})
	if err == nil || !strings.Contains(err.Error(), "packages folder") {
		t.Fatalf("New with a missing packages folder: %v", err)
	}
}
