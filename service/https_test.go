package service

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testKey is a base64 policy key used by the fake hubs.
const testKey = "dGhpcyBpcyBhIHRlc3Qga2V5IGZvciBkbWN0bCEhIQ=="

// recorder keeps the requests a fake hub saw.
type recorder struct {
	mu   sync.Mutex
	reqs []seen
}

type seen struct {
	Method, Path, RawPath, RequestURI string
	Query                             map[string][]string
	Header                            http.Header
	Body                              []byte
}

func (r *recorder) add(req *http.Request) seen {
	body, _ := io.ReadAll(req.Body)
	s := seen{req.Method, req.URL.Path, req.URL.RawPath, req.RequestURI, req.URL.Query(), req.Header.Clone(), body}
	r.mu.Lock()
	r.reqs = append(r.reqs, s)
	r.mu.Unlock()
	return s
}

func (r *recorder) all() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.reqs...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// testTimeout bounds the calls of one test through testContext.
const testTimeout = 20 * time.Second

// testContext is t.Context() with a deadline testTimeout from now, so that
// a call that should return fails the test instead of hanging it.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newTestClient starts a TLS server with h and returns a client for it
// that trusts the server's certificate through WithRootCAs.
func newTestClient(t *testing.T, h http.HandlerFunc, opts ...Option) (*Client, *httptest.Server, *recorder) {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := rec.add(r)
		r.Body = io.NopCloser(strings.NewReader(string(s.Body)))
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	cs, err := sas.ParseService("HostName=" + srv.Listener.Addr().String() + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey)
	if err != nil {
		t.Fatal(err)
	}
	all := append([]Option{
		WithRootCAs(pool),
		WithLogger(zerolog.New(zerolog.NewTestWriter(t))),
		WithRetry(4, func(int) time.Duration { return 0 }),
	}, opts...)
	c, err := New(cs, all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, srv, rec
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	switch b := v.(type) {
	case []byte:
		w.Write(b)
	case string:
		io.WriteString(w, b)
	default:
		json.NewEncoder(w).Encode(v)
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestRequestShape(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := now
	var mu sync.Mutex
	c, srv, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"deviceId":"dev 1/x","etag":"AAAAAAAAAAE=","properties":{"desired":{},"reported":{}}}`)
	}, WithClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }), WithUserAgent("dmctl/1.2.3"))

	ctx := testContext(t)
	if _, err := c.Twin(ctx, "dev 1/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateTwin(ctx, "dev 1/x", TwinPatch{Desired: json.RawMessage(`{"a":1}`)}, "AAAAAAAAAAE="); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	clock = now.Add(56 * time.Minute) // within 5 minutes of the token's 1 h expiry
	mu.Unlock()
	if _, err := c.Twin(ctx, "dev 1/x"); err != nil {
		t.Fatal(err)
	}

	reqs := rec.all()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	host := srv.Listener.Addr().String()
	for i, r := range reqs {
		if got := r.Query["api-version"]; len(got) != 1 || got[0] != iothub.APIVersion {
			t.Errorf("req %d: api-version %v", i, got)
		}
		if !strings.HasPrefix(r.RequestURI, "/twins/dev%201%2Fx?") {
			t.Errorf("req %d: request URI %q: id not path-escaped", i, r.RequestURI)
		}
		if r.Path != "/twins/dev 1/x" {
			t.Errorf("req %d: path %q", i, r.Path)
		}
		if !uuidRE.MatchString(r.Header.Get("Request-Id")) {
			t.Errorf("req %d: Request-Id %q is not a UUID v4", i, r.Header.Get("Request-Id"))
		}
		if ua := r.Header.Get("User-Agent"); ua != "dmctl/1.2.3" {
			t.Errorf("req %d: User-Agent %q", i, ua)
		}
		at := now
		if i == 2 {
			at = now.Add(56 * time.Minute)
		}
		tok, err := sas.Verify(r.Header.Get("Authorization"), sas.Audience{Hosts: []string{host}}, at, testKey)
		if err != nil {
			t.Errorf("req %d: Authorization does not verify: %v", i, err)
			continue
		}
		if tok.KeyName != "iothubowner" {
			t.Errorf("req %d: skn %q", i, tok.KeyName)
		}
		if want := at.Add(time.Hour).Truncate(time.Second); i != 1 && !tok.Expiry.Equal(want) {
			t.Errorf("req %d: expiry %v, want %v", i, tok.Expiry, want)
		}
	}
	if reqs[0].Header.Get("Authorization") != reqs[1].Header.Get("Authorization") {
		t.Error("token not reused for a second request within its lifetime")
	}
	if reqs[1].Header.Get("Authorization") == reqs[2].Header.Get("Authorization") {
		t.Error("token not renewed 5 minutes before expiry")
	}
	if reqs[0].Method != "GET" || reqs[1].Method != "PATCH" {
		t.Errorf("methods %s %s", reqs[0].Method, reqs[1].Method)
	}
	if ct := reqs[1].Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("PATCH Content-Type %q", ct)
	}
	if im := reqs[1].Header.Get("If-Match"); im != `"AAAAAAAAAAE="` {
		t.Errorf("If-Match %q", im)
	}
	if got := string(reqs[1].Body); got != `{"properties":{"desired":{"a":1}}}` {
		t.Errorf("PATCH body %s", got)
	}
}

func TestBaseURL(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"myhub.azure-devices.net", "myhub.azure-devices.net"},
		{"localhost:8443", "localhost:8443"},
		{"localhost:443", "localhost"},
		{"[::1]:8443", "[::1]:8443"},
	} {
		cs := &sas.ConnectionString{HostName: tc.host, SharedAccessKeyName: "p", SharedAccessKey: testKey}
		c, err := New(cs)
		if err != nil {
			t.Fatal(err)
		}
		if c.base.Host != tc.want || c.base.Scheme != "https" {
			t.Errorf("%s: base %s, want https://%s", tc.host, c.base.String(), tc.want)
		}
		if c.own == nil || c.own.Proxy == nil || c.own.TLSClientConfig.InsecureSkipVerify {
			t.Errorf("%s: own transport without proxy support or with verification off", tc.host)
		}
	}
	if _, err := New(&sas.ConnectionString{HostName: "h", DeviceID: "d", SharedAccessKey: testKey}); err == nil {
		t.Error("device connection string accepted")
	}
}

func TestUntrustedCertificate(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("request reached a server whose certificate is not trusted")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	defer srv.Close()
	cs, _ := sas.ParseService("HostName=" + srv.Listener.Addr().String() + ";SharedAccessKeyName=p;SharedAccessKey=" + testKey)
	c, err := New(cs, WithRootCAs(x509.NewCertPool()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Twin(testContext(t), "d")
	var ue x509.UnknownAuthorityError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want an unknown-authority error", err)
	}
}

func TestErrorEnvelopes(t *testing.T) {
	now := time.Now()
	cases := []struct {
		name     string
		status   int
		body     string
		header   string
		is       []*APIError
		isNot    []*APIError
		code     int
		errName  string
		contains string
	}{
		{"style A not found", 404, string(iothub.RegistryErrorBody(iothub.CodeDeviceNotFound, "dev1", now)), "",
			[]*APIError{ErrDeviceNotFound}, []*APIError{ErrDeviceNotOnline, ErrMethodTimeout}, 404001, "DeviceNotFound", "device not found"},
		{"style B offline", 404, string(iothub.MethodErrorBody(iothub.CodeDeviceNotOnline, "Timed out waiting for device to connect.", now)), "",
			[]*APIError{ErrDeviceNotOnline}, []*APIError{ErrDeviceNotFound}, 404103, "DeviceNotOnline", "Timed out waiting for device to connect."},
		{"style B method timeout", 504, string(iothub.MethodErrorBody(iothub.CodeGatewayTimeout, "Timed out waiting for the response from device.", now)), "",
			[]*APIError{ErrMethodTimeout}, []*APIError{ErrDeviceNotOnline, ErrThrottled}, 504101, "GatewayTimeout", "device did not answer in time"},
		{"bare 504", 504, "gateway timeout", "",
			[]*APIError{ErrMethodTimeout}, nil, 0, "", "gateway timeout"},
		{"style A unauthorized", 401, `{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized","ExceptionMessage":"Tracking ID:x-TimeStamp:y"}`, "",
			[]*APIError{ErrUnauthorized}, []*APIError{ErrDeviceNotFound}, 401002, "IotHubUnauthorizedAccess", "Unauthorized"},
		{"style A etag", 412, `{"Message":"ErrorCode:PreconditionFailed;Precondition failed: Device version did not match","ExceptionMessage":""}`, "",
			[]*APIError{ErrPreconditionFailed}, nil, 412001, "PreconditionFailed", "Device version did not match"},
		{"bare 412", 412, ``, "",
			[]*APIError{ErrPreconditionFailed}, nil, 0, "", "HTTP 412"},
		{"throttled", 429, string(iothub.RegistryErrorBody(iothub.CodeThrottled, "slow down", now)), "",
			[]*APIError{ErrThrottled}, []*APIError{ErrUnauthorized}, 429001, "ThrottlingException", "slow down"},
		{"header only", 404, ``, "DeviceNotOnline",
			[]*APIError{ErrDeviceNotOnline}, []*APIError{ErrDeviceNotFound}, 404103, "DeviceNotOnline", "HTTP 404"},
		{"non-JSON body", 502, "  <html><body>Bad Gateway</body></html>\n\n", "",
			nil, []*APIError{ErrMethodTimeout, ErrThrottled}, 0, "", ": <html><body>Bad Gateway</body></html>"},
		{"plain 404 is no sentinel", 404, "Not found", "",
			nil, []*APIError{ErrDeviceNotFound, ErrDeviceNotOnline}, 0, "", "Not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.header != "" {
					w.Header().Set("iothub-errorcode", tc.header)
				}
				writeJSON(w, tc.status, tc.body)
			}, WithRetry(1, nil))
			_, err := c.InvokeMethod(testContext(t), "dev1", iothub.MethodRequest{MethodName: "m"})
			if err == nil {
				t.Fatal("no error")
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("%v is not an *APIError", err)
			}
			if ae.Status != tc.status || ae.Code != tc.code || ae.Name != tc.errName {
				t.Errorf("got status %d code %d name %q, want %d %d %q", ae.Status, ae.Code, ae.Name, tc.status, tc.code, tc.errName)
			}
			for _, s := range tc.is {
				if !errors.Is(err, s) {
					t.Errorf("errors.Is(%v, %v) = false", err, s)
				}
			}
			for _, s := range tc.isNot {
				if errors.Is(err, s) {
					t.Errorf("errors.Is(%v, %v) = true", err, s)
				}
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not contain %q", err, tc.contains)
			}
			if !strings.Contains(err.Error(), `invoke "m" on device "dev1"`) {
				t.Errorf("error %q does not name the operation", err)
			}
			if strings.Contains(err.Error(), "SharedAccessSignature") || strings.Contains(err.Error(), testKey) {
				t.Errorf("error %q leaks a secret", err)
			}
			if rec.count() != 1 {
				t.Errorf("%d requests", rec.count())
			}
		})
	}
}

func TestErrorBodyBounded(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	c, _, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		io.WriteString(w, big)
	}, WithRetry(1, nil))
	_, err := c.Device(testContext(t), "d")
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v", err)
	}
	if len(ae.Message) > maxMessageLen+len("…") {
		t.Errorf("message is %d bytes, want at most %d", len(ae.Message), maxMessageLen+3)
	}
}

func TestResponseBodyBounded(t *testing.T) {
	c, _, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"deviceId":"`)
		io.WriteString(w, strings.Repeat("a", MaxResponseBody))
		io.WriteString(w, `"}`)
	})
	_, err := c.Device(testContext(t), "d")
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("err = %v, want a body-size error", err)
	}
}

// sleepRecorder replaces Client.sleep: it records the delays and returns at once.
type sleepRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.delays = append(s.delays, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleepRecorder) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.delays...)
}

func TestRetryIdempotentThenSuccess(t *testing.T) {
	for _, status := range []int{429, 500, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			var mu sync.Mutex
			n := 0
			c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				n++
				first := n == 1
				mu.Unlock()
				if first {
					w.Header().Set("Retry-After", "7")
					writeJSON(w, status, iothub.RegistryErrorBody(status*1000+1, "try again", time.Now()))
					return
				}
				writeJSON(w, 200, `{"deviceId":"d","etag":"MA=="}`)
			})
			sr := &sleepRecorder{}
			c.sleep = sr.sleep
			d, err := c.Device(testContext(t), "d")
			if err != nil {
				t.Fatal(err)
			}
			if d.DeviceID != "d" || d.ETag != "MA==" {
				t.Errorf("device %+v", d)
			}
			if rec.count() != 2 {
				t.Errorf("%d requests, want 2", rec.count())
			}
			if got := sr.get(); len(got) != 1 || got[0] != 7*time.Second {
				t.Errorf("delays %v, want [7s] from Retry-After", got)
			}
			reqs := rec.all()
			if reqs[0].Header.Get("Request-Id") == reqs[1].Header.Get("Request-Id") {
				t.Error("retry reused the Request-Id")
			}
		})
	}
}

func TestRetryBounded(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 503, iothub.RegistryErrorBody(iothub.CodeServiceUnavailable, "down", time.Now()))
	}, WithRetry(4, func(attempt int) time.Duration { return time.Duration(attempt) * time.Millisecond }))
	sr := &sleepRecorder{}
	c.sleep = sr.sleep
	_, err := c.Twin(testContext(t), "d")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 503 {
		t.Fatalf("err = %v, want the last 503", err)
	}
	if rec.count() != 4 {
		t.Errorf("%d requests, want 4", rec.count())
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}
	if got := sr.get(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delays %v, want %v", got, want)
	}
}

func TestRetryStopsAtDeadline(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		writeJSON(w, 429, iothub.RegistryErrorBody(iothub.CodeThrottled, "slow", time.Now()))
	})
	ctx, cancel := context.WithTimeout(testContext(t), time.Minute)
	defer cancel()
	_, err := c.Twin(ctx, "d")
	if !errors.Is(err, ErrThrottled) {
		t.Fatalf("err = %v, want ErrThrottled", err)
	}
	if rec.count() != 1 {
		t.Errorf("%d requests: waited past the deadline's reach", rec.count())
	}
}

func TestRetryHonoursCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext(t))
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		cancel()
		writeJSON(w, 500, "boom")
	}, WithRetry(4, func(int) time.Duration { return testTimeout / 2 }))
	_, err := c.Twin(ctx, "d")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if rec.count() != 1 {
		t.Errorf("%d requests after cancel", rec.count())
	}
}

func TestNonIdempotentNotRetried(t *testing.T) {
	for _, status := range []int{429, 500, 503} {
		c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, status, iothub.MethodErrorBody(status*1000+1, "fail", time.Now()))
		})
		ctx := testContext(t)
		ops := map[string]func() error{
			"invoke": func() error {
				_, err := c.InvokeMethod(ctx, "d", iothub.MethodRequest{MethodName: "rebootDevice"})
				return err
			},
			"update twin": func() error {
				_, err := c.UpdateTwin(ctx, "d", TwinPatch{Tags: json.RawMessage(`{}`)}, "")
				return err
			},
			"create": func() error { _, err := c.CreateDevice(ctx, "d"); return err },
			"delete": func() error { return c.DeleteDevice(ctx, "d", "") },
		}
		for name, op := range ops {
			before := rec.count()
			err := op()
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != status {
				t.Errorf("%s %d: err = %v", name, status, err)
			}
			want := 1
			if name == "create" && status == 429 {
				want = 4 // a throttled request was not run: safe to send again
			}
			if n := rec.count() - before; n != want {
				t.Errorf("%s %d: sent %d times, want %d", name, status, n, want)
			}
		}
	}
}

func TestRetryAfterDate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ae := &APIError{Status: 429, retryAfter: now.Add(90 * time.Second).Format(http.TimeFormat)}
	if got := retryAfter(ae, now); got != 90*time.Second {
		t.Errorf("retryAfter = %v, want 90s", got)
	}
	ae.retryAfter = "soon"
	if got := retryAfter(ae, now); got != 0 {
		t.Errorf("retryAfter(garbage) = %v", got)
	}
}
