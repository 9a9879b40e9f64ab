package compat

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// newID returns a device id unique to this run, e.g. "mqtt-1a2b3c4d".
func newID(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// registeredDevice is a device identity in the hub's registry.
type registeredDevice struct {
	id  string
	key string
}

// nodeCS is the device connection string with no port, as the official
// device SDK needs it: MQTT goes to 8883, MQTT over WebSockets to 443.
func (d registeredDevice) nodeCS() string {
	return "HostName=localhost;DeviceId=" + d.id + ";SharedAccessKey=" + d.key
}

// dmctlCS is the device connection string for dmctl's device, with the
// hub's MQTT port spelled out.
func (d registeredDevice) dmctlCS() string {
	return "HostName=localhost:8883;DeviceId=" + d.id + ";SharedAccessKey=" + d.key
}

// registerDevice creates a device with hub-generated keys, straight in the
// hub's store. On failure the test's report ends with the hub's log lines
// about the device.
func registerDevice(t *testing.T, prefix string) registeredDevice {
	t.Helper()
	id := newID(prefix)
	d, err := env.hub.Store().CreateDevice(iothub.Device{
		DeviceID:       id,
		Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{}},
	})
	if err != nil {
		t.Fatalf("registering %s: %v", id, err)
	}
	if d.Authentication == nil || d.Authentication.SymmetricKey == nil || d.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("registering %s: the store generated no primary key", id)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpHubLog(t, id)
		}
	})
	return registeredDevice{id: id, key: d.Authentication.SymmetricKey.PrimaryKey}
}

// dumpHubLog logs the hub's log lines that mention id.
func dumpHubLog(t *testing.T, id string) {
	f, err := os.Open(env.hubLog)
	if err != nil {
		t.Logf("hub log: %v", err)
		return
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), id) {
			lines = append(lines, sc.Text())
		}
	}
	const max = 80
	if len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	t.Logf("--- hub log lines mentioning %s (%d shown):\n%s", id, len(lines), strings.Join(lines, "\n"))
}

// waitConnected waits until the hub reports the device's connection state
// as want.
func waitConnected(ctx context.Context, id string, want bool) error {
	ctx, cancel := context.WithTimeout(ctx, waitStep)
	defer cancel()
	for {
		if env.hub.Connected(id) == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hub never reported %s connected=%v: %w", id, want, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitTwinState waits until the twin's connectionState is want. The twin
// follows the connection shortly after it changes, as on the real hub.
func waitTwinState(t *testing.T, ctx context.Context, id, want string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, waitStep)
	defer cancel()
	for {
		tw := getTwin(t, ctx, id)
		if tw.ConnectionState == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("twin connectionState of %s stayed %q, want %q: %w", id, tw.ConnectionState, want, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// rest calls the hub's REST API on 443 as iothubowner. It is the neutral
// service-side observer for the device tests: a plain HTTPS request, so a
// failure points at the hub or at the device under test, not at a client.
func rest(ctx context.Context, method, path string, body any, header map[string]string) (int, []byte, error) {
	token, err := sas.Sign(env.serviceKey, "localhost", "iothubowner", time.Now().Add(time.Hour))
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
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://localhost:443"+path+sep+"api-version="+iothub.APIVersion, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: env.hub.CAPool()}}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// getTwin reads a twin through REST.
func getTwin(t *testing.T, ctx context.Context, id string) iothub.Twin {
	t.Helper()
	status, body, err := rest(ctx, "GET", "/twins/"+url.PathEscape(id), nil, nil)
	if err != nil {
		t.Fatalf("GET /twins/%s: %v", id, err)
	}
	if status != http.StatusOK {
		t.Fatalf("GET /twins/%s: HTTP %d %s", id, status, body)
	}
	var tw iothub.Twin
	if err := json.Unmarshal(body, &tw); err != nil {
		t.Fatalf("GET /twins/%s: %v in %s", id, err, body)
	}
	return tw
}

// patchDesired merges desired properties through REST (If-Match: *).
func patchDesired(t *testing.T, ctx context.Context, id string, desired map[string]any) {
	t.Helper()
	body := map[string]any{"properties": map[string]any{"desired": desired}}
	status, resp, err := rest(ctx, "PATCH", "/twins/"+url.PathEscape(id), body, map[string]string{"If-Match": `"*"`})
	if err != nil {
		t.Fatalf("PATCH /twins/%s: %v", id, err)
	}
	if status != http.StatusOK {
		t.Fatalf("PATCH /twins/%s: HTTP %d %s", id, status, resp)
	}
}

// setStatus enables or disables a device identity through REST.
func setStatus(t *testing.T, ctx context.Context, id, status string) {
	t.Helper()
	code, body, err := rest(ctx, "GET", "/devices/"+url.PathEscape(id), nil, nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /devices/%s: HTTP %d %s %v", id, code, body, err)
	}
	var d map[string]any
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	d["status"] = status
	code, body, err = rest(ctx, "PUT", "/devices/"+url.PathEscape(id), d, map[string]string{"If-Match": `"*"`})
	if err != nil || code != http.StatusOK {
		t.Fatalf("PUT /devices/%s: HTTP %d %s %v", id, code, body, err)
	}
}

// invokeREST invokes a direct method through REST. payload nil sends no
// payload member at all.
func invokeREST(t *testing.T, ctx context.Context, id, method string, payload any) (int, iothub.MethodResult, []byte) {
	t.Helper()
	req := map[string]any{"methodName": method, "responseTimeoutInSeconds": 10, "connectTimeoutInSeconds": 0}
	if payload != nil {
		req["payload"] = payload
	}
	status, body, err := rest(ctx, "POST", "/twins/"+url.PathEscape(id)+"/methods", req, nil)
	if err != nil {
		t.Fatalf("invoking %s on %s: %v", method, id, err)
	}
	var res iothub.MethodResult
	if status == http.StatusOK {
		if err := json.Unmarshal(body, &res); err != nil {
			t.Fatalf("invoking %s on %s: HTTP 200 with a body that is not a method result: %v: %s", method, id, err, body)
		}
	}
	return status, res, body
}

// jsonEqual reports whether two JSON values are equal after decoding.
func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}
