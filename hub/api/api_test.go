package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/syncbuf"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const hubHost = "hub.local"

// fakeDevices is the device side seen by the handlers.
type fakeDevices struct {
	InvokeFunc func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error)

	mu       sync.Mutex
	notified []notification
	revoked  []string
}

type notification struct {
	id      string
	version int64
	patch   string
}

func (f *fakeDevices) Invoke(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
	if f.InvokeFunc == nil {
		return 0, nil, hubapi.ErrDeviceNotOnline
	}
	return f.InvokeFunc(ctx, id, method, payload, connect, response)
}

func (f *fakeDevices) Revoke(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, id)
}

// takeRevoked returns and forgets the identities revoked so far.
func (f *fakeDevices) takeRevoked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.revoked
	f.revoked = nil
	return r
}

func (f *fakeDevices) NotifyDesired(id string, version int64, patch []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notified = append(f.notified, notification{id, version, string(patch)})
}

func (f *fakeDevices) notifications() []notification {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]notification(nil), f.notified...)
}

type env struct {
	t      *testing.T
	store  *store.Store
	dev    *fakeDevices
	srv    *httptest.Server
	logBuf *syncbuf.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "hub.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: st, dev: &fakeDevices{}, logBuf: &syncbuf.Buffer{}}
	st.OnDesired(e.dev.NotifyDesired) // as the hub registers its broker
	e.srv = httptest.NewServer(New(Config{
		Store:   st,
		Devices: e.dev,
		Hosts:   func() []string { return []string{hubHost + ":8883"} },
		Log:     zerolog.New(e.logBuf).Level(zerolog.DebugLevel),
	}))
	t.Cleanup(func() {
		e.srv.Close()
		e.srv.Client().CloseIdleConnections()
		_ = st.Close()
	})
	return e
}

func (e *env) token(policy string) string {
	e.t.Helper()
	p, err := e.store.Policy(policy)
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := sas.Sign(p.PrimaryKey, hubHost, p.Name, time.Now().Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

func (e *env) do(method, path, auth, body string, hdr ...string) response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{res.StatusCode, res.Header, b}
}

// nodeError parses an error body the way the Node service SDK does: Style A
// only, Message split at ';', code name after ':'.
func nodeError(t *testing.T, b []byte) (name, text string) {
	t.Helper()
	var env struct {
		Message          string
		ExceptionMessage string
	}
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("error body is not JSON: %s", b)
	}
	parts := strings.SplitN(env.Message, ";", 2)
	code := strings.SplitN(parts[0], ":", 2)
	if len(parts) != 2 || len(code) != 2 || code[0] != "ErrorCode" {
		return "", env.Message
	}
	if !strings.HasPrefix(env.ExceptionMessage, "Tracking ID:") {
		t.Errorf("ExceptionMessage = %q", env.ExceptionMessage)
	}
	return code[1], parts[1]
}

// styleB parses a Style B body: Message holds a JSON string.
func styleB(t *testing.T, b []byte) (code int, msg string) {
	t.Helper()
	var env struct{ Message, ExceptionMessage string }
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("error body is not JSON: %s", b)
	}
	var inner struct {
		ErrorCode    int    `json:"errorCode"`
		TrackingID   string `json:"trackingId"`
		Message      string `json:"message"`
		TimestampUTC string `json:"timestampUtc"`
	}
	if err := json.Unmarshal([]byte(env.Message), &inner); err != nil {
		t.Fatalf("Style B Message is not JSON: %q", env.Message)
	}
	if inner.TrackingID == "" || inner.TimestampUTC == "" {
		t.Errorf("Style B body lacks trackingId/timestampUtc: %s", env.Message)
	}
	return inner.ErrorCode, inner.Message
}

func wantStyleA(t *testing.T, r response, status int, name string) string {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (%s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != contentTypeJSON {
		t.Errorf("Content-Type = %q", ct)
	}
	got, text := nodeError(t, r.body)
	if got != name {
		t.Fatalf("error code name = %q, want %q (%s)", got, name, r.body)
	}
	return text
}

func wantStyleB(t *testing.T, r response, status, code int) string {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (%s)", r.status, status, r.body)
	}
	got, msg := styleB(t, r.body)
	if got != code {
		t.Fatalf("errorCode = %d, want %d", got, code)
	}
	return msg
}

func (e *env) create(id string) iothub.Device {
	e.t.Helper()
	d, err := e.store.CreateDevice(iothub.Device{DeviceID: id})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func echoDevice(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
	return 200, payload, nil
}

func TestRightsMatrix(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	e.dev.InvokeFunc = echoDevice
	policies := []string{"iothubowner", "service", "registryRead", "registryReadWrite", "device"}
	type route struct {
		name, method, path, body string
		allowed                  []string
		okStatus                 int
	}
	routes := []route{
		{"invoke", "POST", "/twins/d1/methods", `{"methodName":"m"}`, []string{"iothubowner", "service"}, 200},
		{"twin get", "GET", "/twins/d1", "", []string{"iothubowner", "service", "registryRead", "registryReadWrite"}, 200},
		{"twin patch", "PATCH", "/twins/d1", `{"tags":{"a":1}}`, []string{"iothubowner", "service", "registryReadWrite"}, 200},
		{"twin put", "PUT", "/twins/d1", `{"tags":{"a":2}}`, []string{"iothubowner", "service", "registryReadWrite"}, 200},
		{"device create", "PUT", "/devices/new-%s", `{}`, []string{"iothubowner", "registryReadWrite"}, 200},
		{"device get", "GET", "/devices/d1", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"device list", "GET", "/devices", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"device delete", "DELETE", "/devices/del-%s", "", []string{"iothubowner", "registryReadWrite"}, 204},
		{"query", "POST", "/devices/query", `{"query":"SELECT * FROM devices"}`, []string{"iothubowner", "service", "registryRead", "registryReadWrite"}, 200},
		{"module list", "GET", "/devices/d1/modules", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"module create", "PUT", "/devices/d1/modules/new-%s", `{}`, []string{"iothubowner", "registryReadWrite"}, 200},
		{"module get", "GET", "/devices/d1/modules/m1", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"module delete", "DELETE", "/devices/d1/modules/del-%s", "", []string{"iothubowner", "registryReadWrite"}, 204},
		{"module twin get", "GET", "/twins/d1/modules/m1", "", []string{"iothubowner", "service", "registryRead", "registryReadWrite"}, 200},
		{"module twin patch", "PATCH", "/twins/d1/modules/m1", `{"tags":{"a":1}}`, []string{"iothubowner", "service", "registryReadWrite"}, 200},
		{"module twin put", "PUT", "/twins/d1/modules/m1", `{"tags":{"a":2}}`, []string{"iothubowner", "service", "registryReadWrite"}, 200},
		{"module invoke", "POST", "/twins/d1/modules/m1/methods", `{"methodName":"m"}`, []string{"iothubowner", "service"}, 200},
		{"bulk registry", "POST", "/devices", `[{"id":"bulk-%s","importMode":"create"}]`, []string{"iothubowner", "registryReadWrite"}, 200},
		{"registry statistics", "GET", "/statistics/devices", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"service statistics", "GET", "/statistics/service", "", []string{"iothubowner", "service"}, 200},
	}
	e.createModule("d1", "m1")
	for _, p := range policies {
		e.create("del-" + p)
		e.createModule("d1", "del-"+p)
	}
	for _, rt := range routes {
		for _, p := range policies {
			t.Run(rt.name+"/"+p, func(t *testing.T) {
				path := rt.path
				if strings.Contains(path, "%s") {
					path = fmt.Sprintf(path, p)
				}
				body := rt.body
				if strings.Contains(body, "%s") {
					body = fmt.Sprintf(body, p)
				}
				r := e.do(rt.method, path+"?api-version=2021-04-12", e.token(p), body)
				allowed := false
				for _, a := range rt.allowed {
					allowed = allowed || a == p
				}
				if !allowed {
					text := wantStyleA(t, r, 401, "IotHubUnauthorizedAccess")
					if text != "Unauthorized" {
						t.Errorf("401 text = %q", text)
					}
					return
				}
				if r.status != rt.okStatus {
					t.Fatalf("status = %s, want %d", r, rt.okStatus)
				}
			})
		}
	}
}

func TestAuthFailures(t *testing.T) {
	e := newEnv(t)
	d := e.create("d1")
	owner, _ := e.store.Policy("iothubowner")
	sign := func(key, res, skn string, exp time.Time) string {
		tok, err := sas.Sign(key, res, skn, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	future := time.Now().Add(time.Hour)
	other, _ := e.store.Policy("service")
	host := strings.TrimPrefix(e.srv.URL, "http://")
	cases := []struct {
		name string
		auth string
		ok   bool
	}{
		{"primary key", sign(owner.PrimaryKey, hubHost, "iothubowner", future), true},
		{"secondary key", sign(owner.SecondaryKey, hubHost, "iothubowner", future), true},
		{"host with port", sign(owner.PrimaryKey, hubHost+":8883", "iothubowner", future), true},
		// The address the client reached is no name of the hub (Config.Hosts).
		{"host it was reached at", sign(owner.PrimaryKey, host, "iothubowner", future), false},
		{"missing header", "", false},
		{"not a SAS", "Bearer abc", false},
		{"malformed SAS", "SharedAccessSignature sr=x", false},
		{"expired", sign(owner.PrimaryKey, hubHost, "iothubowner", time.Now().Add(-time.Minute)), false},
		{"wrong key", sign(other.PrimaryKey, hubHost, "iothubowner", future), false},
		{"unknown policy", sign(owner.PrimaryKey, hubHost, "nobody", future), false},
		{"device key token", sign(d.Authentication.SymmetricKey.PrimaryKey, hubHost+"/devices/d1", "", future), false},
		{"device audience with policy", sign(owner.PrimaryKey, hubHost+"/devices/d1", "iothubowner", future), false},
		{"other host", sign(owner.PrimaryKey, "elsewhere.example", "iothubowner", future), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("GET", "/twins/d1", tc.auth, "")
			if tc.ok {
				if r.status != 200 {
					t.Fatalf("status = %s, want 200", r)
				}
				return
			}
			if text := wantStyleA(t, r, 401, "IotHubUnauthorizedAccess"); text != "Unauthorized" {
				t.Errorf("text = %q", text)
			}
		})
	}
	// Unknown routes are not revealed to unauthenticated callers.
	wantStyleA(t, e.do("GET", "/nowhere", "", ""), 401, "IotHubUnauthorizedAccess")
	// Nothing secret reaches the log.
	logs := e.logBuf.String()
	for _, secret := range []string{owner.PrimaryKey, owner.SecondaryKey, "sig="} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains a secret (%q...)", secret[:4])
		}
	}
	if !strings.Contains(logs, `"status":401`) {
		t.Error("requests are not logged")
	}
}

func TestInvoke(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	e.create("a%b#c?d")
	owner := e.token("iothubowner")
	type call struct {
		id, method, payload string
		connect, response   time.Duration
	}
	var (
		mu   sync.Mutex
		last call
	)
	answer := struct {
		status int
		body   []byte
		err    error
	}{}
	e.dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
		mu.Lock()
		defer mu.Unlock()
		last = call{id, method, string(payload), connect, response}
		return answer.status, answer.body, answer.err
	}
	set := func(status int, body string, err error) {
		mu.Lock()
		defer mu.Unlock()
		answer.status, answer.body, answer.err = status, []byte(body), err
	}
	got := func() call {
		mu.Lock()
		defer mu.Unlock()
		return last
	}

	set(200, `{"ok":true}`, nil)
	r := e.do("POST", "/twins/d1/methods?api-version=2021-04-12", owner,
		`{"methodName":"reboot","payload":null,"timeoutInSeconds":30,"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}`)
	if r.status != 200 || string(r.body) != `{"status":200,"payload":{"ok":true}}` {
		t.Fatalf("invoke = %s", r)
	}
	if r.header.Get("Content-Type") != contentTypeJSON {
		t.Errorf("Content-Type = %q", r.header.Get("Content-Type"))
	}
	if c := got(); c != (call{"d1", "reboot", "null", 0, 30 * time.Second}) {
		t.Errorf("device saw %+v", c)
	}

	// Absent payload → null; defaults; percent-encoded id.
	r = e.do("POST", "/twins/"+url.PathEscape("a%b#c?d")+"/methods", owner, `{"methodName":"m"}`)
	if r.status != 200 {
		t.Fatalf("invoke = %s", r)
	}
	if c := got(); c != (call{"a%b#c?d", "m", "null", 0, 30 * time.Second}) {
		t.Errorf("device saw %+v", c)
	}

	// Payload forwarded as given; timeouts honoured.
	r = e.do("POST", "/twins/d1/methods", owner, `{"methodName":"m","payload":{"delay": 5,"s":"x"},"responseTimeoutInSeconds":5,"connectTimeoutInSeconds":300}`)
	if r.status != 200 {
		t.Fatalf("invoke = %s", r)
	}
	if c := got(); c != (call{"d1", "m", `{"delay": 5,"s":"x"}`, 300 * time.Second, 5 * time.Second}) {
		t.Errorf("device saw %+v", c)
	}

	// Device error status is still HTTP 200; non-JSON or empty bodies become null.
	for _, tc := range []struct {
		status     int
		body, want string
	}{
		{500, `{"error":"boom"}`, `{"status":500,"payload":{"error":"boom"}}`},
		{404, `not json`, `{"status":404,"payload":null}`},
		{200, ``, `{"status":200,"payload":null}`},
		{201, ` [1, 2] `, `{"status":201,"payload":[1,2]}`},
	} {
		set(tc.status, tc.body, nil)
		r = e.do("POST", "/twins/d1/methods", owner, `{"methodName":"m"}`)
		if r.status != 200 || string(r.body) != tc.want {
			t.Errorf("device answered %d %q: got %s, want %s", tc.status, tc.body, r, tc.want)
		}
	}

	// Offline and timeout use Style B.
	set(0, "", fmt.Errorf("wrapped: %w", hubapi.ErrDeviceNotOnline))
	r = e.do("POST", "/twins/d1/methods", owner, `{"methodName":"m"}`)
	wantStyleB(t, r, 404, iothub.CodeDeviceNotOnline)
	if r.header.Get("iothub-errorcode") != "DeviceNotOnline" {
		t.Errorf("iothub-errorcode = %q", r.header.Get("iothub-errorcode"))
	}
	set(0, "", hubapi.ErrTimeout)
	wantStyleB(t, e.do("POST", "/twins/d1/methods", owner, `{"methodName":"m"}`), 504, iothub.CodeGatewayTimeout)
	set(0, "", errors.New("broker exploded"))
	wantStyleA(t, e.do("POST", "/twins/d1/methods", owner, `{"methodName":"m"}`), 500, "ServerError")

	// Unknown device: Style A DeviceNotFound, which Node turns into DeviceNotFoundError.
	if text := wantStyleA(t, e.do("POST", "/twins/nope/methods", owner, `{"methodName":"m"}`), 404, "DeviceNotFound"); text != "nope" {
		t.Errorf("text = %q", text)
	}

	// Bad requests.
	big := `"` + strings.Repeat("x", iothub.MaxMethodPayload) + `"`
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"no method name", `{"payload":1}`, 400, "ArgumentInvalid"},
		{"slash in method name", `{"methodName":"a/b"}`, 400, "ArgumentInvalid"},
		{"wildcard in method name", `{"methodName":"a#"}`, 400, "ArgumentInvalid"},
		{"response timeout 4", `{"methodName":"m","responseTimeoutInSeconds":4}`, 400, "ArgumentInvalid"},
		{"response timeout 301", `{"methodName":"m","responseTimeoutInSeconds":301}`, 400, "ArgumentInvalid"},
		{"connect timeout -1", `{"methodName":"m","connectTimeoutInSeconds":-1}`, 400, "ArgumentInvalid"},
		{"connect timeout 301", `{"methodName":"m","connectTimeoutInSeconds":301}`, 400, "ArgumentInvalid"},
		{"timeout as string", `{"methodName":"m","responseTimeoutInSeconds":"30"}`, 400, "IotHubFormatError"},
		{"timeout fraction", `{"methodName":"m","responseTimeoutInSeconds":30.5}`, 400, "IotHubFormatError"},
		{"malformed JSON", `{"methodName":`, 400, "IotHubFormatError"},
		{"trailing data", `{"methodName":"m"} x`, 400, "IotHubFormatError"},
		{"payload over 128KB", `{"methodName":"m","payload":` + big + `}`, 413, "MessageTooLarge"},
		{"body over 256KB", `{"methodName":"m","payload":"` + strings.Repeat("y", MaxBodySize) + `"}`, 413, "MessageTooLarge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStyleA(t, e.do("POST", "/twins/d1/methods", owner, tc.body), tc.status, tc.code)
		})
	}
	// A payload of exactly 128 KB is accepted.
	set(200, "null", nil)
	exact := `"` + strings.Repeat("x", iothub.MaxMethodPayload-2) + `"`
	if r := e.do("POST", "/twins/d1/methods", owner, `{"methodName":"m","payload":`+exact+`}`); r.status != 200 {
		t.Errorf("128 KB payload: %d", r.status)
	}
}

func TestInvokeCallerGone(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	started := make(chan struct{})
	e.dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
		close(started)
		<-ctx.Done()
		return 0, nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/twins/d1/methods", strings.NewReader(`{"methodName":"m"}`))
	req.Header.Set("Authorization", e.token("service"))
	done := make(chan error, 1)
	go func() {
		res, err := e.srv.Client().Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	testwait.Recv(t, started, "the direct method to reach the device")
	cancel()
	if err := testwait.Recv(t, done, "the client call to end"); !errors.Is(err, context.Canceled) {
		t.Errorf("client error = %v, want context.Canceled", err)
	}
}

func TestTwins(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	owner := e.token("iothubowner")

	r := e.do("GET", "/twins/d1", owner, "")
	var tw map[string]any
	if r.status != 200 || json.Unmarshal(r.body, &tw) != nil {
		t.Fatalf("GET twin = %s", r)
	}
	if tw["deviceId"] != "d1" || tw["etag"] != "AAAAAAAAAAE=" || r.header.Get("ETag") != `"AAAAAAAAAAE="` {
		t.Errorf("twin = %s, ETag %q", r.body, r.header.Get("ETag"))
	}
	props := tw["properties"].(map[string]any)
	if props["desired"].(map[string]any)["$version"] != float64(1) {
		t.Errorf("desired = %v", props["desired"])
	}

	// PATCH merges and notifies the device with the applied patch.
	r = e.do("PATCH", "/twins/d1", owner, `{"tags":{"site":"lab"},"properties":{"desired":{"interval":5,"big":4503599627370495,"x":null}}}`, "If-Match", `"AAAAAAAAAAE="`)
	if r.status != 200 {
		t.Fatalf("PATCH = %s", r)
	}
	if !strings.Contains(string(r.body), `"big":4503599627370495`) || !strings.Contains(string(r.body), `"tags":{"site":"lab"}`) {
		t.Errorf("PATCH result = %s", r.body)
	}
	n := e.dev.notifications()
	if len(n) != 1 || n[0] != (notification{"d1", 2, `{"$version":2,"big":4503599627370495,"interval":5,"x":null}`}) {
		t.Errorf("notifications = %+v", n)
	}
	if r.header.Get("ETag") != `"AAAAAAAAAAI="` {
		t.Errorf("ETag = %q", r.header.Get("ETag"))
	}

	// Stale etag → 412 PreconditionFailed (Node: InvalidEtagError).
	wantStyleA(t, e.do("PATCH", "/twins/d1", owner, `{"tags":{"a":1}}`, "If-Match", `"AAAAAAAAAAE="`), 412, "PreconditionFailed")
	wantStyleA(t, e.do("PUT", "/twins/d1", owner, `{"tags":{"a":1}}`, "If-Match", `"AAAAAAAAAAE="`), 412, "PreconditionFailed")

	// Tags-only PATCH does not notify.
	if r := e.do("PATCH", "/twins/d1", owner, `{"tags":{"site":null}}`); r.status != 200 {
		t.Fatalf("PATCH = %s", r)
	}
	if len(e.dev.notifications()) != 1 {
		t.Error("tags-only PATCH notified the device")
	}

	// PUT replaces and notifies the difference.
	r = e.do("PUT", "/twins/d1", owner, `{"deviceId":"d1","tags":{"t":1},"properties":{"desired":{"interval":6,"$metadata":{},"$version":2},"reported":{"ignored":1}}}`, "If-Match", "*")
	if r.status != 200 {
		t.Fatalf("PUT = %s", r)
	}
	n = e.dev.notifications()
	if len(n) != 2 || n[1] != (notification{"d1", 3, `{"$version":3,"big":null,"interval":6}`}) {
		t.Errorf("notifications = %+v", n)
	}
	if strings.Contains(string(r.body), "ignored") {
		t.Error("PUT wrote reported properties")
	}

	// Errors.
	wantStyleA(t, e.do("GET", "/twins/nope", owner, ""), 404, "DeviceNotFound")
	wantStyleA(t, e.do("PATCH", "/twins/nope", owner, `{"tags":{"a":1}}`), 404, "DeviceNotFound")
	wantStyleA(t, e.do("PATCH", "/twins/d1", owner, `{"tags":{"a.b":1}}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("PATCH", "/twins/d1", owner, `{"properties":{"desired":{"s":"`+strings.Repeat("x", 4097)+`"}}}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("PATCH", "/twins/d1", owner, `{"tags":`), 400, "IotHubFormatError")
	wantStyleA(t, e.do("PATCH", "/twins/d1", owner, `[]`), 400, "IotHubFormatError")
}

func TestRegistry(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")

	// Create as the Node SDK does.
	r := e.do("PUT", "/devices/myDevice?api-version=2021-04-12", owner,
		`{"deviceId":"myDevice","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}},"extra":1}`)
	if r.status != 200 || r.header.Get("ETag") != `"MA=="` {
		t.Fatalf("create = %s ETag %q", r, r.header.Get("ETag"))
	}
	var d iothub.Device
	if err := json.Unmarshal(r.body, &d); err != nil {
		t.Fatal(err)
	}
	if d.DeviceID != "myDevice" || d.Authentication.SymmetricKey.PrimaryKey == "" || d.ETag != "MA==" || d.Status != "enabled" {
		t.Errorf("created = %+v", d)
	}
	wantStyleA(t, e.do("PUT", "/devices/myDevice", owner, `{"deviceId":"myDevice"}`), 409, "DeviceAlreadyExists")

	// Update with If-Match.
	r = e.do("PUT", "/devices/myDevice", owner, `{"deviceId":"myDevice","status":"disabled"}`, "If-Match", `"MA=="`)
	if r.status != 200 || r.header.Get("ETag") != `"MQ=="` || !strings.Contains(string(r.body), `"status":"disabled"`) {
		t.Fatalf("update = %s", r)
	}
	wantStyleA(t, e.do("PUT", "/devices/myDevice", owner, `{"status":"enabled"}`, "If-Match", `"MA=="`), 412, "PreconditionFailed")
	wantStyleA(t, e.do("PUT", "/devices/ghost", owner, `{}`, "If-Match", `*`), 404, "DeviceNotFound")
	wantStyleA(t, e.do("PUT", "/devices/a", owner, `{"deviceId":"b"}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("PUT", "/devices/"+url.PathEscape("bad/id"), owner, `{}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("PUT", "/devices/x", owner, `{"status":"sleepy"}`), 400, "ArgumentInvalid")

	// Get.
	r = e.do("GET", "/devices/myDevice", owner, "")
	if r.status != 200 || r.header.Get("ETag") != `"MQ=="` {
		t.Fatalf("get = %s", r)
	}
	if text := wantStyleA(t, e.do("GET", "/devices/ghost", owner, ""), 404, "DeviceNotFound"); text != "ghost" {
		t.Errorf("text = %q", text)
	}

	// List.
	for _, id := range []string{"b", "a", "c"} {
		e.create(id)
	}
	r = e.do("GET", "/devices?top=2", owner, "")
	var list []iothub.Device
	if r.status != 200 || json.Unmarshal(r.body, &list) != nil || len(list) != 2 || list[0].DeviceID != "a" {
		t.Fatalf("list = %s", r)
	}
	r = e.do("GET", "/devices", owner, "")
	if json.Unmarshal(r.body, &list) != nil || len(list) != 4 {
		t.Fatalf("list = %s", r)
	}
	for _, top := range []string{"0", "1001", "x", "-1"} {
		wantStyleA(t, e.do("GET", "/devices?top="+top, owner, ""), 400, "ArgumentInvalid")
	}

	// Delete.
	wantStyleA(t, e.do("DELETE", "/devices/myDevice", owner, "", "If-Match", `"MA=="`), 412, "PreconditionFailed")
	r = e.do("DELETE", "/devices/myDevice", owner, "", "If-Match", `"*"`)
	if r.status != 204 || len(r.body) != 0 {
		t.Fatalf("delete = %s", r)
	}
	wantStyleA(t, e.do("GET", "/twins/myDevice", owner, ""), 404, "DeviceNotFound")
	wantStyleA(t, e.do("DELETE", "/devices/myDevice", owner, ""), 404, "DeviceNotFound")
}

func TestQuery(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")
	for i := range 25 {
		id := fmt.Sprintf("d%02d", i)
		e.create(id)
		if i%2 == 0 {
			if _, _, err := e.store.PatchTwin(id, iothub.Twin{Tags: map[string]any{"site": "lab"}}, "*"); err != nil {
				t.Fatal(err)
			}
		}
	}
	q := func(query string, hdr ...string) response {
		b, _ := json.Marshal(map[string]string{"query": query})
		return e.do("POST", "/devices/query?api-version=2021-04-12", owner, string(b), hdr...)
	}

	// Walk all pages as the Node SDK does.
	var ids []string
	cont := ""
	pages := 0
	for {
		hdr := []string{"x-ms-max-item-count", "10"}
		if cont != "" {
			hdr = append(hdr, "x-ms-continuation", cont)
		}
		r := q("SELECT * FROM devices", hdr...)
		if r.status != 200 {
			t.Fatalf("page %d = %s", pages, r)
		}
		if r.header.Get("x-ms-item-type") != "twin" {
			t.Errorf("x-ms-item-type = %q", r.header.Get("x-ms-item-type"))
		}
		var items []iothub.Twin
		if err := json.Unmarshal(r.body, &items); err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			ids = append(ids, it.DeviceID)
		}
		pages++
		if pages > 100 {
			t.Fatalf("still paging after %d pages of 10 (continuation %q)", pages, cont)
		}
		vals, present := r.header["X-Ms-Continuation"]
		if !present {
			break
		}
		if len(vals) != 1 || vals[0] == "" {
			t.Fatalf("empty continuation header")
		}
		cont = vals[0]
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	if pages != 3 || len(ids) != 25 || ids[0] != "d00" || ids[24] != "d24" {
		t.Errorf("walked %d pages, %d items: %v", pages, len(ids), ids)
	}

	// Default page size is 100; exact fit leaves no continuation.
	r := q("SELECT * FROM devices WHERE tags.site = 'lab'")
	var items []map[string]any
	_ = json.Unmarshal(r.body, &items)
	if len(items) != 13 || r.header.Get("x-ms-continuation") != "" {
		t.Errorf("filtered query: %d items, continuation %q", len(items), r.header.Get("x-ms-continuation"))
	}
	r = q("SELECT * FROM devices", "x-ms-max-item-count", "25")
	if _, ok := r.header["X-Ms-Continuation"]; ok {
		t.Error("continuation on an exactly full last page")
	}

	// TOP bounds the whole result, across pages.
	r = q("SELECT TOP 15 * FROM devices", "x-ms-max-item-count", "10")
	_ = json.Unmarshal(r.body, &items)
	next := r.header.Get("x-ms-continuation")
	if len(items) != 10 || next == "" {
		t.Fatalf("TOP page 1: %d items, continuation %q", len(items), next)
	}
	r = q("SELECT TOP 15 * FROM devices", "x-ms-max-item-count", "10", "x-ms-continuation", next)
	items = nil
	_ = json.Unmarshal(r.body, &items)
	if _, more := r.header["X-Ms-Continuation"]; len(items) != 5 || more || items[4]["deviceId"] != "d14" {
		t.Errorf("TOP page 2: %d items, more %v", len(items), more)
	}

	// Projection and aggregates are raw.
	r = q("SELECT COUNT() AS n FROM devices WHERE tags.site = 'lab'")
	if r.status != 200 || string(r.body) != `[{"n":13}]` || r.header.Get("x-ms-item-type") != "raw" {
		t.Errorf("count = %s (%s)", r, r.header.Get("x-ms-item-type"))
	}
	r = q("SELECT deviceId FROM devices WHERE deviceId = 'd03'")
	if string(r.body) != `[{"deviceId":"d03"}]` {
		t.Errorf("projection = %s", r)
	}
	r = q("SELECT * FROM devices.modules")
	if r.status != 200 || string(r.body) != `[]` {
		t.Errorf("modules = %s", r)
	}

	// Errors.
	text := wantStyleA(t, q("SELECT * FROM devices WHERE"), 400, "ArgumentInvalid")
	if !strings.Contains(text, "syntax error at position") {
		t.Errorf("syntax error text = %q", text)
	}
	wantStyleA(t, e.do("POST", "/devices/query", owner, `{}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("POST", "/devices/query", owner, `{"query":`), 400, "IotHubFormatError")
	wantStyleA(t, q("SELECT * FROM devices", "x-ms-max-item-count", "0"), 400, "ArgumentInvalid")
	wantStyleA(t, q("SELECT * FROM devices", "x-ms-max-item-count", "ten"), 400, "ArgumentInvalid")
	wantStyleA(t, q("SELECT * FROM devices", "x-ms-continuation", "garbage!"), 400, "ArgumentInvalid")
	wantStyleA(t, q("SELECT * FROM devices WHERE deviceId = 'x'", "x-ms-continuation", cont), 400, "ArgumentInvalid")
	// A page size above the maximum is clamped.
	if r := q("SELECT * FROM devices", "x-ms-max-item-count", "5000"); r.status != 200 {
		t.Errorf("large page size: %s", r)
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	owner := e.token("iothubowner")
	wantStyleA(t, e.do("GET", "/nowhere?api-version=2020-09-30", owner, ""), 404, "NotFound")
	wantStyleA(t, e.do("GET", "/jobs/v2/j1", owner, ""), 404, "NotFound")
	r := e.do("DELETE", "/twins/d1", owner, "")
	wantStyleA(t, r, 405, "MethodNotAllowed")
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "PATCH") {
		t.Errorf("Allow = %q", allow)
	}
	wantStyleA(t, e.do("GET", "/twins/d1/methods", owner, ""), 405, "MethodNotAllowed")
	wantStyleA(t, e.do("PATCH", "/devices", owner, "{}"), 405, "MethodNotAllowed")
	// Any api-version, or none, is accepted.
	for _, v := range []string{"", "?api-version=2016-11-14", "?api-version=whatever"} {
		if r := e.do("GET", "/twins/d1"+v, owner, ""); r.status != 200 {
			t.Errorf("api-version %q: %s", v, r)
		}
	}
}
