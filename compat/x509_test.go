package compat

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// registerX509Device creates a selfSigned device with the given thumbprints
// straight in the hub's store.
func registerX509Device(t *testing.T, id, primary, secondary string) {
	t.Helper()
	tp := &iothub.X509Thumbprint{}
	if primary != "" {
		tp.PrimaryThumbprint = &primary
	}
	if secondary != "" {
		tp.SecondaryThumbprint = &secondary
	}
	if _, err := env.hub.Store().CreateDevice(iothub.Device{
		DeviceID:       id,
		Authentication: &iothub.Authentication{Type: iothub.AuthSelfSigned, X509Thumbprint: tp},
	}); err != nil {
		t.Fatalf("registering the X.509 device %s: %v", id, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpHubLog(t, id)
		}
	})
}

// identityResult is what device_identity.js printed last.
type identityResult struct {
	OK        bool           `json:"ok"`
	Telemetry bool           `json:"telemetry"`
	Reported  map[string]any `json:"reported"`
	Error     struct {
		Name    string `json:"name"`
		Message string `json:"message"`
	} `json:"error"`
}

// runIdentityDevice runs device_identity.js with an x509=true connection
// string and the certificate files.
func runIdentityDevice(t *testing.T, ctx context.Context, host, id string, c testCert, extraEnv []string, args ...string) (runResult, identityResult) {
	t.Helper()
	cs := "HostName=" + host + ";DeviceId=" + id + ";x509=true"
	argv := nodeArgv("device_identity.js", append([]string{"--cert", c.certFile, "--key", c.keyFile}, args...)...)
	r := runProc(t, ctx, "device_identity.js x509 "+id, append([]string{"DEVICE_CONNECTION_STRING=" + cs}, extraEnv...), argv...)
	var out identityResult
	if err := r.lastJSON(&out); err != nil {
		t.Fatalf("device_identity.js printed no result (%v):\n%s", err, r)
	}
	return r, out
}

// wantRefused checks that the SDK's open failed as IoT Hub's CONNACK 5 does.
func wantRefused(t *testing.T, r runResult, out identityResult) {
	t.Helper()
	if r.code == 0 || out.OK {
		t.Fatalf("the SDK connected:\n%s", r)
	}
	t.Logf("open refused: %s %q", out.Error.Name, out.Error.Message)
	if out.Error.Name != "UnauthorizedError" || !strings.Contains(out.Error.Message, "Not authorized") {
		t.Errorf("open failed with %s %q, want UnauthorizedError mentioning \"Not authorized\" (CONNACK 5)", out.Error.Name, out.Error.Message)
	}
}

// TestOfficialX509SelfSigned: the official device SDK logs in with a
// self-signed certificate (x509=true, setOptions({cert, key, ca})) whose
// thumbprint is registered, sends telemetry and reports properties. (The
// Node SDK's ModuleClient takes SAS keys only: fromConnectionString throws
// NotImplementedError for x509=true. The Python suite covers X.509 modules.)
func TestOfficialX509SelfSigned(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	dir := t.TempDir()

	t.Run("SHA-1 primary thumbprint: telemetry and reported properties", func(t *testing.T) {
		t.Parallel()
		id := newID("sdk-x509")
		c := newTestCert(t, dir, id, certOpts{cn: id})
		registerX509Device(t, id, c.SHA1(), "")
		r, out := runIdentityDevice(t, ctx, "localhost", id, c, nil, "--ca", env.caFile, "--report", "23")
		if r.code != 0 || !out.OK {
			t.Fatalf("the X.509 device failed:\n%s", r)
		}
		if got, _ := out.Reported["identityCheck"].(float64); got != 23 {
			t.Errorf("the device's twin read shows reported %v, want identityCheck=23", out.Reported)
		}
		if got, _ := getTwin(t, ctx, id).Properties.Reported["identityCheck"].(float64); got != 23 {
			t.Errorf("the service twin lacks the X.509 device's reported identityCheck=23")
		}
	})

	t.Run("SHA-256 secondary thumbprint", func(t *testing.T) {
		t.Parallel()
		id := newID("sdk-x509-256")
		c := newTestCert(t, dir, id, certOpts{cn: id})
		other := newTestCert(t, dir, id+"-other", certOpts{cn: id})
		registerX509Device(t, id, other.SHA256(), c.SHA256())
		r, out := runIdentityDevice(t, ctx, "localhost", id, c, nil, "--mode", "open")
		if r.code != 0 || !out.OK {
			t.Fatalf("the X.509 device failed:\n%s", r)
		}
	})

	t.Run("thumbprint mismatch is refused", func(t *testing.T) {
		t.Parallel()
		id := newID("sdk-x509-bad")
		registered := newTestCert(t, dir, id, certOpts{cn: id})
		presented := newTestCert(t, dir, id+"-presented", certOpts{cn: id})
		registerX509Device(t, id, registered.SHA1(), "")
		r, out := runIdentityDevice(t, ctx, "localhost", id, presented, nil, "--mode", "open")
		wantRefused(t, r, out)
	})
}

// hubServe is a `dmctl hub serve` process of its own with the endpoints the
// SDKs need.
type hubServe struct {
	host      string
	caFile    string // the hub's TLS CA
	ownerKey  string
	dmctlCS   string // HostName=host:8883
	serviceCS string // HostName=host (what the SDKs take)
}

// startHubServe runs dmctl hub serve on host's ports 8883 and 443 with
// extra flags and waits until it is ready.
func startHubServe(t *testing.T, ctx context.Context, dmctl, host string, flags ...string) hubServe {
	t.Helper()
	data := t.TempDir()
	ready := filepath.Join(data, "ready.json")
	argv := append([]string{dmctl, "hub", "serve", "--data", data, "--hostname", host,
		"--listen", host + ":8883", "--listen", host + ":443", "--ready-file", ready}, flags...)
	p := startProc(t, ctx, "dmctl hub serve "+host, nil, argv...)
	if err := waitReadyFile(ctx, p, ready); err != nil {
		t.Fatal(err)
	}
	r := runProc(t, ctx, "dmctl hub connection-string", nil, dmctl, "hub", "connection-string", "--data", data, "--ready-file", ready)
	if r.code != 0 {
		t.Fatalf("dmctl hub connection-string: %s", r)
	}
	h := hubServe{host: host, caFile: filepath.Join(data, "ca.pem"), dmctlCS: strings.TrimSpace(r.stdout)}
	cs, err := sas.ParseService(h.dmctlCS)
	if err != nil {
		t.Fatalf("dmctl hub connection-string printed something that does not parse: %v", err)
	}
	h.ownerKey = cs.SharedAccessKey
	h.serviceCS = "HostName=" + host + ";SharedAccessKeyName=" + cs.SharedAccessKeyName + ";SharedAccessKey=" + cs.SharedAccessKey
	return h
}

// waitReadyFile waits until p writes its ready file, failing as soon as p
// exits (a flag it does not know, a port it cannot bind).
func waitReadyFile(ctx context.Context, p *proc, path string) error {
	ctx, cancel := context.WithTimeout(ctx, waitStep)
	defer cancel()
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			return nil
		}
		if p.hasExited() {
			return fmt.Errorf("%s exited before it wrote %s:\n%s", p.name, path, p.stderrText())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s wrote no %s within %v: %w\n%s", p.name, path, waitStep, ctx.Err(), p.stderrText())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// rest calls this hub's REST API on 443 as iothubowner.
func (h hubServe) rest(ctx context.Context, method, path string, body any) (int, []byte, error) {
	token, err := sas.Sign(h.ownerKey, h.host, "iothubowner", time.Now().Add(time.Hour))
	if err != nil {
		return 0, nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+h.host+":443"+path+"?api-version="+iothub.APIVersion, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	pem, err := os.ReadFile(h.caFile)
	if err != nil {
		return 0, nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// TestOfficialX509CA: devices whose certificates a CA given to `dmctl hub
// serve --x509-ca` signed (CN = device id) log in with the official Node and
// Python device SDKs; a wrong CN or an unknown CA is refused. The hub runs
// on 127.0.0.3's ports 8883 and 443, the SDKs' fixed ones. Not parallel:
// TestPythonTutorialThroughHubServe uses the same address later.
func TestOfficialX509CA(t *testing.T) {
	dmctl := requireDmctl(t, "hub serve", "hub connection-string")
	py := requirePython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	ca := newTestCert(t, dir, "device-ca", certOpts{cn: "dmctl compat device CA", ca: true})
	stranger := newTestCert(t, dir, "stranger-ca", certOpts{cn: "not trusted", ca: true})
	h := startHubServe(t, ctx, dmctl, "127.0.0.3", "--x509-ca", ca.certFile)
	nodeEnv := []string{"NODE_EXTRA_CA_CERTS=" + h.caFile}

	register := func(t *testing.T, id string) {
		t.Helper()
		status, body, err := h.rest(ctx, "PUT", "/devices/"+url.PathEscape(id),
			map[string]any{"deviceId": id, "authentication": map[string]any{"type": iothub.AuthCertificateAuthority}})
		if err != nil || status != http.StatusOK {
			t.Fatalf("PUT /devices/%s (certificateAuthority): HTTP %d %s %v", id, status, body, err)
		}
	}

	t.Run("Node: CA-signed, CN = device id", func(t *testing.T) {
		t.Parallel()
		id := newID("sdk-ca")
		register(t, id)
		leaf := newTestCert(t, dir, id, certOpts{cn: id, parent: &ca})
		r, out := runIdentityDevice(t, ctx, h.host, id, leaf, nodeEnv, "--ca", h.caFile, "--report", "31")
		if r.code != 0 || !out.OK {
			t.Fatalf("the CA-signed device failed:\n%s", r)
		}
		status, body, err := h.rest(ctx, "GET", "/twins/"+url.PathEscape(id), nil)
		if err != nil || status != http.StatusOK || !strings.Contains(string(body), `"identityCheck":31`) {
			t.Errorf("service twin of the CA-signed device: HTTP %d %s %v, want reported identityCheck=31", status, body, err)
		}
	})

	t.Run("Node: CN is another device's id", func(t *testing.T) {
		t.Parallel()
		id := newID("sdk-ca-cn")
		register(t, id)
		leaf := newTestCert(t, dir, id, certOpts{cn: id + "-other", parent: &ca})
		r, out := runIdentityDevice(t, ctx, h.host, id, leaf, nodeEnv, "--mode", "open")
		wantRefused(t, r, out)
	})

	t.Run("Node: signed by a CA the hub does not trust", func(t *testing.T) {
		t.Parallel()
		id := newID("sdk-ca-stranger")
		register(t, id)
		leaf := newTestCert(t, dir, id, certOpts{cn: id, parent: &stranger})
		r, out := runIdentityDevice(t, ctx, h.host, id, leaf, nodeEnv, "--mode", "open")
		wantRefused(t, r, out)
	})

	t.Run("Python: create_device_with_certificate_authority, create_from_x509_certificate", func(t *testing.T) {
		t.Parallel()
		id := newID("py-ca")
		leaf := newTestCert(t, dir, id, certOpts{cn: id, parent: &ca})
		r := runProc(t, ctx, "x509_device.py "+id, pythonEnv(h.caFile, "IOTHUB_CONNECTION_STRING="+h.serviceCS),
			py, filepath.Join(pythonDir(), "x509_device.py"), "--device", id, "--cert", leaf.certFile, "--key", leaf.keyFile, "--register", "ca")
		var out struct {
			OK       bool           `json:"ok"`
			Reported map[string]any `json:"reported"`
		}
		if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK {
			t.Fatalf("x509_device.py (%v):\n%s", err, r)
		}
		if out.Reported["x509Check"] != id {
			t.Errorf("the service twin shows reported %v, want x509Check=%s", out.Reported, id)
		}
	})
}
