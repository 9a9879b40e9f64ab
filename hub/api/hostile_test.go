package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/rs/zerolog"
)

// Hostile requests: each test sends what a well-behaved SDK never would and
// checks the answer a user sees (status, IoT Hub error, stored state).

// ownerToken signs a service token for the audience host with the owner key.
func (e *env) ownerToken(host string) string {
	e.t.Helper()
	p, err := e.store.Policy("iothubowner")
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := sas.Sign(p.PrimaryKey, host, p.Name, time.Now().Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// rawRequest writes req to the server as bytes on a fresh connection (TLS
// when cfg is not nil) and reads the response; the path is sent verbatim.
func rawRequest(t *testing.T, addr string, cfg *tls.Config, req string) response {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	var (
		c   net.Conn
		err error
	)
	if cfg != nil {
		c, err = tls.DialWithDialer(&d, "tcp", addr, cfg)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	// The whole exchange has 5 s.
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", firstLine(req), err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return response{res.StatusCode, res.Header, b}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

func httpRequest(method, path, host, auth, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path, host)
	if auth != "" {
		fmt.Fprintf(&b, "Authorization: %s\r\n", auth)
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.String()
}

// hubMessage returns the error name and text of an IoT Hub error body, and
// fails the test if the body is not valid JSON in either envelope.
func hubMessage(t *testing.T, r response) (name, text string) {
	t.Helper()
	if !json.Valid(r.body) {
		t.Fatalf("error body is not valid JSON: %q", r.body)
	}
	he := iothub.ParseErrorBody(r.status, r.body)
	return he.Name, he.Message
}

func TestHostileAudienceIsTheHubsOwnNames(t *testing.T) {
	e := newEnv(t) // Hosts: hub.local:8883
	e.create("d1")
	addr := e.srv.Listener.Addr().String()
	for _, c := range []struct {
		name, sr, host string
		want           int
	}{
		{"other host named in the Host header too", "evil.example", "evil.example", 401},
		{"other host with the Host header's port", "evil.example:8883", "evil.example:8883", 401},
		{"other host, Host header is the listener", "evil.example", addr, 401},
		{"the listener's address is not a hub name", addr, addr, 401},
		{"own name without port", hubHost, addr, 200},
		{"own name with port", hubHost + ":8883", addr, 200},
		{"own name, other case", strings.ToUpper(hubHost), "evil.example", 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := rawRequest(t, addr, nil, httpRequest("GET", "/devices/d1", c.host, e.ownerToken(c.sr), ""))
			if res.status != c.want {
				t.Fatalf("token for %q with Host %q: %v, want %d", c.sr, c.host, res, c.want)
			}
			if c.want == 401 {
				if name, _ := hubMessage(t, res); name != "IotHubUnauthorizedAccess" {
					t.Fatalf("error name %q, want IotHubUnauthorizedAccess", name)
				}
			}
		})
	}
}

func TestHostileAudienceIgnoresTLSServerName(t *testing.T) {
	st := newEnv(t).store
	if _, err := st.CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(New(Config{
		Store: st, Devices: &fakeDevices{},
		Hosts: func() []string { return []string{hubHost} },
		Log:   zerolog.Nop(),
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e := &env{t: t, store: st}
	addr := srv.Listener.Addr().String()
	for _, c := range []struct {
		name, sr, sni, host string
		want                int
	}{
		{"other host as SNI and Host", "evil.example", "evil.example", "evil.example", 401},
		{"other host as SNI only", "evil.example", "evil.example", hubHost, 401},
		{"own name, other SNI", hubHost, "evil.example", "evil.example", 200},
		{"own name as SNI", hubHost, hubHost, hubHost, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: c.sni, InsecureSkipVerify: true} // the test server's own certificate
			res := rawRequest(t, addr, cfg, httpRequest("GET", "/devices/d1", c.host, e.ownerToken(c.sr), ""))
			if res.status != c.want {
				t.Fatalf("token for %q, SNI %q, Host %q: %v, want %d", c.sr, c.sni, c.host, res, c.want)
			}
		})
	}
}

// badUTF8 is a string value holding a byte that is not UTF-8.
const badUTF8 = "\"caf\xe9\""

func TestHostileInvalidUTF8BodiesAreRefused(t *testing.T) {
	jobs := &fakeJobs{}
	e := newJobsEnv(t, jobs)
	e.create("d1")
	e.createModule("d1", "m1")
	called := false
	e.dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
		called = true
		return 200, payload, nil
	}
	tok := e.token("iothubowner")
	for _, c := range []struct{ name, method, path, body string }{
		{"device", "PUT", "/devices/d2", `{"deviceId":"d2","statusReason":` + badUTF8 + `}`},
		{"device with an existing id", "PUT", "/devices/d1", `{"deviceId":"d1","status":"disabled","statusReason":` + badUTF8 + `}`},
		{"twin patch value", "PATCH", "/twins/d1", `{"tags":{"city":` + badUTF8 + `}}`},
		{"twin patch key", "PATCH", "/twins/d1", `{"properties":{"desired":{"caf` + "\xe9" + `":1}}}`},
		{"twin replace", "PUT", "/twins/d1", `{"tags":{"city":` + badUTF8 + `}}`},
		{"twin lone surrogate escape", "PATCH", "/twins/d1", `{"tags":{"city":"\ud800"}}`},
		{"module", "PUT", "/devices/d1/modules/m2", `{"moduleId":"m2","managedBy":` + badUTF8 + `}`},
		{"module twin", "PATCH", "/twins/d1/modules/m1", `{"tags":{"city":` + badUTF8 + `}}`},
		{"bulk", "POST", "/devices", `[{"id":"d3","importMode":"create","statusReason":` + badUTF8 + `}]`},
		{"job", "PUT", "/jobs/v2/j1", `{"jobId":"j1","type":"scheduleUpdateTwin","queryCondition":"deviceId = 'd1'","updateTwin":{"tags":{"city":` + badUTF8 + `}}}`},
		{"query", "POST", "/devices/query", `{"query":"SELECT * FROM devices WHERE tags.city = ` + "'caf\xe9'" + `"}`},
		{"method payload", "POST", "/twins/d1/methods", `{"methodName":"m","payload":{"city":` + badUTF8 + `}}`},
		{"module method payload", "POST", "/twins/d1/modules/m1/methods", `{"methodName":"m","payload":` + badUTF8 + `}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := e.do(c.method, c.path, tok, c.body)
			if res.status != 400 {
				t.Fatalf("%s %s: %v, want 400", c.method, c.path, res)
			}
			name, text := hubMessage(t, res)
			if name != "IotHubFormatError" || !strings.Contains(text, "UTF-8") {
				t.Fatalf("%s %s: error %s %q, want IotHubFormatError naming UTF-8", c.method, c.path, name, text)
			}
		})
	}
	if called {
		t.Fatal("a method with an invalid payload reached the device")
	}
	if _, err := e.store.Device("d2"); err == nil {
		t.Fatal("device d2 was created from an invalid body")
	}
	if d, _ := e.store.Device("d1"); d.Status != "enabled" {
		t.Fatalf("d1 status %q after refused updates, want enabled", d.Status)
	}
	tw, err := e.store.Twin("d1")
	if err != nil {
		t.Fatal(err)
	}
	if len(tw.Tags) != 0 || len(withoutMeta(tw.Properties.Desired)) != 0 {
		t.Fatalf("twin changed by refused patches: tags %v desired %v", tw.Tags, tw.Properties.Desired)
	}
	if len(jobs.created) != 0 {
		t.Fatalf("job created from an invalid body: %+v", jobs.created)
	}
	// Valid non-ASCII text is stored as sent.
	res := e.do("PATCH", "/twins/d1", tok, `{"tags":{"city":"café \u00e9 ✓"}}`)
	if res.status != 200 {
		t.Fatalf("valid UTF-8 patch: %v", res)
	}
	if tw, _ := e.store.Twin("d1"); tw.Tags["city"] != "café é ✓" {
		t.Fatalf("stored tag %q", tw.Tags["city"])
	}
}

func withoutMeta(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if !strings.HasPrefix(k, "$") {
			out[k] = v
		}
	}
	return out
}

func TestHostilePathIDs(t *testing.T) {
	e := newJobsEnv(t, &fakeJobs{})
	e.create("d1")
	tok := e.token("iothubowner")
	addr := e.srv.Listener.Addr().String()
	for _, c := range []struct{ name, method, path, body, want string }{
		{"device id not UTF-8", "GET", "/devices/caf%E9", "", "deviceId"},
		{"device id with NUL", "GET", "/devices/d1%00x", "", "deviceId"},
		{"device id with NUL on PUT", "PUT", "/devices/a%00", `{}`, "deviceId"},
		{"device id with control character", "DELETE", "/devices/a%0Ab", "", "deviceId"},
		{"twin id not UTF-8", "PATCH", "/twins/%FF", `{"tags":{"a":1}}`, "deviceId"},
		{"method target with NUL", "POST", "/twins/d1%00/methods", `{"methodName":"m"}`, "deviceId"},
		{"module id not UTF-8", "GET", "/devices/d1/modules/%C3", "", "moduleId"},
		{"module id with NUL", "PUT", "/devices/d1/modules/m%00", `{}`, "moduleId"},
		{"module twin id with NUL", "GET", "/twins/d1/modules/%00", "", "moduleId"},
		{"job id not UTF-8", "GET", "/jobs/v2/%FE", "", "jobId"},
		{"job id with NUL", "PUT", "/jobs/v2/j%00", `{"type":"scheduleUpdateTwin"}`, "jobId"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := rawRequest(t, addr, nil, httpRequest(c.method, c.path, hubHost, tok, c.body))
			if res.status != 400 {
				t.Fatalf("%s %s: %v, want 400", c.method, c.path, res)
			}
			name, text := hubMessage(t, res)
			if name != "ArgumentInvalid" || !strings.Contains(text, c.want) {
				t.Fatalf("%s %s: error %s %q, want ArgumentInvalid naming %s", c.method, c.path, name, text, c.want)
			}
		})
	}
}

func TestHostileNonASCIIIDsAreNamedReadably(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	tok := e.token("iothubowner")
	for _, c := range []struct {
		name, method, path, body string
		status                   int
		want                     []string
	}{
		{"unknown device", "GET", "/devices/%C3%A9t%C3%A9", "", 404, []string{"été"}},
		{"unknown twin", "GET", "/twins/%C3%A9t%C3%A9", "", 404, []string{"été"}},
		{"invalid device id", "PUT", "/devices/%C3%A9t%C3%A9", `{}`, 400, []string{`"été"`, `'é'`}},
		{"invalid module id", "PUT", "/devices/d1/modules/%E2%9C%93", `{}`, 400, []string{`"✓"`, `'✓'`}},
		{"unknown module", "GET", "/devices/d1/modules/%C3%A9", "", 404, []string{"'é'"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := e.do(c.method, c.path, tok, c.body)
			if res.status != c.status {
				t.Fatalf("%s %s: %v, want %d", c.method, c.path, res, c.status)
			}
			_, text := hubMessage(t, res)
			for _, w := range c.want {
				if !strings.Contains(text, w) {
					t.Errorf("message %q does not contain %s", text, w)
				}
			}
			if strings.ContainsAny(text, "Ã\uFFFD") {
				t.Errorf("message %q is mojibake", text)
			}
		})
	}
}

// stringPayload is a JSON string value whose encoding is exactly n bytes.
func stringPayload(n int) string { return `"` + strings.Repeat("x", n-2) + `"` }

func TestHostileMethodPayloadLimit(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	var got int
	e.dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
		got = len(payload)
		return 200, []byte(`{"ok":true}`), nil
	}
	tok := e.token("iothubowner")
	call := func(payload string) response {
		return e.do("POST", "/twins/d1/methods", tok, `{"methodName":"m","payload":`+payload+`}`)
	}
	if res := call(stringPayload(iothub.MaxMethodPayload)); res.status != 200 || got != iothub.MaxMethodPayload {
		t.Fatalf("payload of exactly %d bytes: %v (device got %d bytes)", iothub.MaxMethodPayload, res, got)
	}
	// Whitespace around the value is not payload.
	got = 0
	if res := call(" \n" + stringPayload(iothub.MaxMethodPayload) + "\n "); res.status != 200 || got == 0 {
		t.Fatalf("payload of %d bytes with whitespace around it: %v", iothub.MaxMethodPayload, res)
	}
	got = 0
	for _, p := range []string{
		stringPayload(iothub.MaxMethodPayload + 1),
		`{"a":` + stringPayload(iothub.MaxMethodPayload) + `}`,
	} {
		res := call(p)
		if res.status != 413 {
			t.Fatalf("payload of %d bytes: %v, want 413", len(p), res)
		}
		if name, text := hubMessage(t, res); name != "MessageTooLarge" || !strings.Contains(text, "131072") {
			t.Fatalf("payload of %d bytes: error %s %q, want MessageTooLarge naming the limit", len(p), name, text)
		}
	}
	if got != 0 {
		t.Fatal("an oversized payload reached the device")
	}
}

func TestHostileMethodResponseTooLarge(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	e.createModule("d1", "m1")
	e.dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
		return 0, nil, fmt.Errorf("device d1 answered 200000 bytes: %w", hubapi.ErrResponseTooLarge)
	}
	tok := e.token("iothubowner")
	for _, path := range []string{"/twins/d1/methods", "/twins/d1/modules/m1/methods"} {
		res := e.do("POST", path, tok, `{"methodName":"m","payload":null}`)
		if res.status != 413 {
			t.Fatalf("POST %s, device answer too large: %v, want 413", path, res)
		}
		he := iothub.ParseErrorBody(res.status, res.body)
		if he.Code != iothub.CodeMessageTooLarge || !strings.Contains(he.Message, "128 KB") {
			t.Fatalf("POST %s: error %d %q, want 413001 naming the limit", path, he.Code, he.Message)
		}
	}
}

// The store refuses invalid reported patches the same way (the MQTT path).
func TestHostileReportedPatchUTF8(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	for _, p := range []string{
		`{"fw":` + badUTF8 + `}`,
		`{"caf` + "\xe9" + `":1}`,
		`{"fw":"\udc00"}`,
		`{"fw":"a\ud800\u0041"}`,
	} {
		_, err := e.store.PatchReported("d1", []byte(p))
		ve, ok := err.(*store.ValidationError)
		if !ok || ve.Code != iothub.CodeIotHubFormatError || !strings.Contains(ve.Msg, "UTF-8") {
			t.Fatalf("PatchReported(%q) = %v, want an IotHubFormatError naming UTF-8", p, err)
		}
	}
	if _, err := e.store.PatchReported("d1", []byte(`{"fw":"\ud83d\ude00 ok"}`)); err != nil {
		t.Fatalf("a surrogate pair is valid: %v", err)
	}
}

// A request that reaches the store after it closed (the hub shutting down)
// is 503, which the SDKs retry, not a 500.
func TestHostileClosedStoreIs503(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	tok := e.token("iothubowner")
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/devices/d1", ""},
		{"GET", "/twins/d1", ""},
		{"PATCH", "/twins/d1", `{"tags":{"a":1}}`},
		{"PUT", "/devices/d2", `{}`},
		{"POST", "/devices/query", `{"query":"SELECT * FROM devices"}`},
		{"POST", "/devices/query", `{"query":"SELECT deviceId FROM devices"}`},
	} {
		res := e.do(c.method, c.path, tok, c.body)
		if res.status != 503 {
			t.Errorf("%s %s on a closed store: %v, want 503", c.method, c.path, res)
			continue
		}
		if name, _ := hubMessage(t, res); name != "ServiceUnavailable" {
			t.Errorf("%s %s: error name %q, want ServiceUnavailable", c.method, c.path, name)
		}
	}
}
