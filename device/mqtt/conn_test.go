package mqtt_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
)

func TestMain(m *testing.M) {
	zerolog.TimeFieldFormat = time.RFC3339Nano // event timings in test logs
	goleak.VerifyTestMain(m)
}

// fastBackoff keeps reconnect tests quick.
var fastBackoff = retry.Constant(time.Millisecond)

// rig is one simulated device running against a test hub.
type rig struct {
	srv  *hubtest.Server
	id   string
	conn *mqtt.Conn
	dev  *device.Device
	logs *syncBuffer
}

// startDevice registers id on srv and runs a device for it until the test
// ends. cfg fields that are set override the test defaults.
func startDevice(t *testing.T, srv *hubtest.Server, id string, cfg mqtt.Config, dcfg device.Config) *rig {
	t.Helper()
	if cfg.ConnectionString == nil {
		cs, err := sas.ParseDevice(srv.CreateDevice(t, id))
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnectionString = cs
	}
	r := &rig{srv: srv, id: id, logs: &syncBuffer{}}
	log := zerolog.New(io.MultiWriter(r.logs, zerolog.NewTestWriter(t))).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	if cfg.RootCAs == nil {
		cfg.RootCAs = srv.CAPool()
	}
	if cfg.Backoff == nil {
		cfg.Backoff = fastBackoff
	}
	cfg.ClientType = "dmctl/test"
	cfg.Log = log
	dcfg.Log = log
	conn, err := mqtt.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.conn = conn
	r.dev = device.New(conn, dcfg)
	r.dev.Handle("echo", func(_ context.Context, p json.RawMessage) (int, any) { return 200, p })

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.dev.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("device Run: %v", err)
		}
	})
	select {
	case <-conn.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("device stopped before connecting: %v", err)
	}
	return r
}

// count returns how many log lines carry event.
func (r *rig) count(event string) int {
	return strings.Count(r.logs.String(), `"event":"`+event+`"`)
}

// waitEvent waits until event has been logged n times.
func (r *rig) waitEvent(t *testing.T, event string, n int) {
	t.Helper()
	for r.count(event) < n {
		select {
		case <-t.Context().Done():
			t.Fatalf("event %q logged %d times, want %d", event, r.count(event), n)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// hubREST calls the hub's service API as iothubowner.
type hubREST struct {
	base   string
	cs     *sas.ConnectionString
	client *http.Client
}

func newREST(t *testing.T, srv *hubtest.Server) *hubREST {
	cs, err := sas.ParseService(srv.ServiceConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	return &hubREST{
		base: "https://" + cs.HostName,
		cs:   cs,
		client: &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: srv.CAPool()},
			DisableKeepAlives: true,
		}},
	}
}

func (h *hubREST) do(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, h.base+path+"?api-version="+iothub.APIVersion, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := h.cs.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/json")
	if method == http.MethodPatch {
		req.Header.Set("If-Match", "*")
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// invoke calls a direct method through the REST API; the hub waits up to
// connectTimeout seconds for the device to be online.
func (h *hubREST) invoke(t *testing.T, id, method, payload string, connectTimeout int) iothub.MethodResult {
	t.Helper()
	rt := 20
	req := iothub.MethodRequest{MethodName: method, ResponseTimeoutInSeconds: &rt, ConnectTimeoutInSeconds: &connectTimeout}
	if payload != "" {
		req.Payload = json.RawMessage(payload)
	}
	status, body := h.do(t, http.MethodPost, "/twins/"+id+"/methods", req)
	if status != http.StatusOK {
		t.Fatalf("invoke %s: HTTP %d: %s", method, status, body)
	}
	var res iothub.MethodResult
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatalf("invoke %s: %v in %s", method, err, body)
	}
	return res
}

func reported(t *testing.T, srv *hubtest.Server, id string) map[string]any {
	t.Helper()
	tw, err := srv.Store().Twin(id)
	if err != nil {
		t.Fatal(err)
	}
	return tw.Properties.Reported
}

// waitReported waits until the device's reported property key satisfies ok.
func waitReported(t *testing.T, srv *hubtest.Server, id, key string, ok func(any) bool) any {
	t.Helper()
	for {
		v, present := reported(t, srv, id)[key]
		if present && ok(v) {
			return v
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("reported %s = %v, never as expected", key, v)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestMethodRoundTrip(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	rest := newREST(t, srv)

	res := rest.invoke(t, "d1", "echo", `{"x":[1,2],"s":"a b"}`, 0)
	if res.Status != 200 || string(res.Payload) != `{"x":[1,2],"s":"a b"}` {
		t.Errorf("echo = %d %s, want 200 with the payload back", res.Status, res.Payload)
	}
	res = rest.invoke(t, "d1", "echo", "", 0)
	if res.Status != 200 || string(res.Payload) != "null" {
		t.Errorf("echo without payload = %d %s, want 200 null", res.Status, res.Payload)
	}

	res = rest.invoke(t, "d1", "nope", `{}`, 0)
	if res.Status != 404 || string(res.Payload) != `{"error":"method not found","method":"nope"}` {
		t.Errorf("unknown method = %d %s, want 404 naming it", res.Status, res.Payload)
	}

	// A body that is not JSON can only come from the hub itself.
	status, body, err := srv.Hub().Devices().Invoke(t.Context(), "d1", "echo", []byte("{oops"), time.Second, 10*time.Second)
	if err != nil || status != 400 || !strings.Contains(string(body), `"payload is not valid JSON"`) {
		t.Errorf("non-JSON payload = %d %s %v, want 400", status, body, err)
	}

	if _, ok := reported(t, srv, "d1")[device.RebootTimeProperty]; ok {
		t.Errorf("rebootTime reported on first start")
	}
	if r.count("connected") != 1 || r.count("subscribed") != 1 {
		t.Errorf("connected %d times, subscribed %d times, want 1 each", r.count("connected"), r.count("subscribed"))
	}
}

func TestDesiredPatchReachesDevice(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	r.waitEvent(t, "twin", 1) // the twin read after connect
	status, body := newREST(t, srv).do(t, http.MethodPatch, "/twins/d1",
		map[string]any{"properties": map[string]any{"desired": map[string]any{"interval": 42}}})
	if status != http.StatusOK {
		t.Fatalf("patch desired: HTTP %d %s", status, body)
	}
	r.waitEvent(t, "desired", 1)
	if !strings.Contains(r.logs.String(), `"interval":42`) {
		t.Errorf("desired patch not logged:\n%s", r.logs.String())
	}
}

func TestRebootCycle(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	rest := newREST(t, srv)
	before := time.Now().UTC()

	res := rest.invoke(t, "d1", device.RebootMethod, `{"delaySeconds":1}`, 0)
	var ack device.RebootResponse
	if err := json.Unmarshal(res.Payload, &ack); res.Status != 200 || err != nil || ack.DelaySeconds != 1 {
		t.Fatalf("rebootDevice = %d %s, want 200 with delaySeconds 1", res.Status, res.Payload)
	}
	if err := srv.WaitConnected(t.Context(), "d1", false); err != nil {
		t.Fatalf("device never went offline: %v", err)
	}
	if err := srv.WaitConnected(t.Context(), "d1", true); err != nil {
		t.Fatalf("device never came back: %v", err)
	}
	v := waitReported(t, srv, "d1", device.RebootTimeProperty, func(any) bool { return true })
	rt, err := time.Parse(time.RFC3339Nano, v.(string))
	if err != nil || rt.Before(before) {
		t.Errorf("rebootTime %v: not RFC 3339 or before the request (%v)", v, err)
	}
	r.waitEvent(t, "rebooted", 1)
	if r.count("suspended") != 1 || r.count("resumed") != 1 || r.count("connected") != 2 {
		t.Errorf("suspended %d, resumed %d, connected %d; want 1, 1, 2", r.count("suspended"), r.count("resumed"), r.count("connected"))
	}

	// A second reboot reports a new, later value.
	res = rest.invoke(t, "d1", device.RebootMethod, `{"delaySeconds":0}`, 10)
	if res.Status != 200 {
		t.Fatalf("second rebootDevice = %d %s", res.Status, res.Payload)
	}
	waitReported(t, srv, "d1", device.RebootTimeProperty, func(x any) bool { return x != v })
}

func TestSASRenewalKeepsMethodsWorking(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{SASTTL: 3 * time.Second}, device.Config{})
	rest := newREST(t, srv)
	calls := 0
	for r.count("token_renewed") < 2 {
		res := rest.invoke(t, "d1", "echo", fmt.Sprintf(`{"n":%d}`, calls), 10)
		if res.Status != 200 || string(res.Payload) != fmt.Sprintf(`{"n":%d}`, calls) {
			t.Fatalf("call %d during renewals = %d %s", calls, res.Status, res.Payload)
		}
		calls++
	}
	q, err := r.conn.Queue([]byte(`{"afterRenewal":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-q; err != nil {
		t.Fatalf("report after renewal: %v", err)
	}
	if r.count("retrying") != 0 || r.count("connect_failed") != 0 {
		t.Errorf("renewal went through failed connects:\n%s", r.logs.String())
	}
	t.Logf("%d method calls answered across %d token renewals; longest switch %s",
		calls, r.count("token_renewed"), longestRenewal(t, r.logs.String()))
}

func TestHubRestart(t *testing.T) {
	for _, tt := range []struct {
		name    string
		backoff retry.Backoff
	}{
		{"1ms backoff", fastBackoff},
		{"default backoff", retry.Exponential(mqtt.DefaultBaseBackoff, mqtt.DefaultMaxBackoff)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := hubtest.NewServer(t)
			r := startDevice(t, srv, "d1", mqtt.Config{Backoff: tt.backoff}, device.Config{})
			rest := newREST(t, srv)
			r.waitEvent(t, "twin", 1)

			q, err := r.conn.Queue([]byte(`{"aroundRestart":1}`))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			srv.Restart(t)
			restarted := time.Now()
			r.waitEvent(t, "connected", 2)
			t.Logf("hub restart took %s; device connected again %s after the hub was back",
				restarted.Sub(start).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
			r.waitEvent(t, "twin", 2) // re-read after reconnect

			if err := <-q; err != nil {
				t.Fatalf("patch queued around the restart: %v", err)
			}
			if got := fmt.Sprint(reported(t, srv, "d1")["aroundRestart"]); got != "1" {
				t.Errorf("aroundRestart = %v, want 1", got)
			}
			if res := rest.invoke(t, "d1", "echo", `"again"`, 10); res.Status != 200 || string(res.Payload) != `"again"` {
				t.Errorf("method after restart = %d %s (not re-subscribed?)", res.Status, res.Payload)
			}
			if r.count("disconnected") < 1 {
				t.Errorf("no disconnected event:\n%s", r.logs.String())
			}
		})
	}
}

func TestOfflineReportsKeptInOrder(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	if err := r.conn.Suspend(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitConnected(t.Context(), "d1", false); err != nil {
		t.Fatal(err)
	}
	var acks []<-chan error
	for n := 1; n <= 5; n++ {
		q, err := r.conn.Queue(fmt.Appendf(nil, `{"n":%d,"k%d":true}`, n, n))
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, q)
	}
	select {
	case err := <-acks[0]:
		t.Fatalf("patch acknowledged while offline: %v", err)
	default:
	}
	if err := r.conn.Resume(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, q := range acks {
		if err := <-q; err != nil {
			t.Fatalf("patch %d: %v", i+1, err)
		}
	}
	rep := reported(t, srv, "d1")
	if fmt.Sprint(rep["n"]) != "5" {
		t.Errorf("n = %v, want 5 (patches applied out of order)", rep["n"])
	}
	for n := 1; n <= 5; n++ {
		if fmt.Sprint(rep[fmt.Sprintf("k%d", n)]) != "true" {
			t.Errorf("patch %d lost: %v", n, rep)
		}
	}
}

func TestReportRejected(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	// Twin documents nest at most a few levels; a deep one is refused.
	deep := strings.Repeat(`{"a":`, 20) + "1" + strings.Repeat("}", 20)
	if err := r.conn.Report(t.Context(), []byte(deep)); err == nil {
		t.Fatal("a patch the hub refuses was reported as acknowledged")
	}
	// The queue moves on.
	if err := r.conn.Report(t.Context(), []byte(`{"ok":true}`)); err != nil {
		t.Fatalf("patch after a refused one: %v", err)
	}
}

func TestWebSockets(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{Transport: mqtt.TransportWebSockets}, device.Config{})
	if res := newREST(t, srv).invoke(t, "d1", "echo", `{"ws":true}`, 0); res.Status != 200 || string(res.Payload) != `{"ws":true}` {
		t.Errorf("echo over WebSockets = %d %s", res.Status, res.Payload)
	}
	if !strings.Contains(r.logs.String(), `"transport":"mqtt-ws"`) {
		t.Errorf("connected event does not name mqtt-ws:\n%s", r.logs.String())
	}
	if err := r.conn.Report(t.Context(), []byte(`{"ws":1}`)); err != nil {
		t.Errorf("report over WebSockets: %v", err)
	}
}

// connectProxy is an HTTP proxy that only tunnels (CONNECT), recording the
// targets it was asked for.
type connectProxy struct {
	mu      sync.Mutex
	targets []string
	wg      sync.WaitGroup
}

func (p *connectProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, r.Host)
	p.mu.Unlock()
	up, err := net.Dial("tcp", strings.Replace(r.Host, "localhost", "127.0.0.1", 1))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.WriteHeader(http.StatusOK)
	down, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		return
	}
	p.wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer p.wg.Done()
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	go pipe(up, down)
	go pipe(down, up)
}

func TestWebSocketsThroughProxy(t *testing.T) {
	srv := hubtest.NewServer(t)
	proxy := &connectProxy{}
	ps := httptest.NewServer(proxy)
	t.Cleanup(func() {
		ps.Close()
		proxy.wg.Wait()
	})
	proxyURL, _ := url.Parse(ps.URL)
	r := startDevice(t, srv, "d1", mqtt.Config{Transport: mqtt.TransportWebSockets, Proxy: http.ProxyURL(proxyURL)}, device.Config{})
	if res := newREST(t, srv).invoke(t, "d1", "echo", `{"proxied":true}`, 0); res.Status != 200 {
		t.Errorf("echo through the proxy = %d %s", res.Status, res.Payload)
	}
	proxy.mu.Lock()
	targets := proxy.targets
	proxy.mu.Unlock()
	if len(targets) != 1 || targets[0] != r.conn.Target() {
		t.Errorf("proxy tunnelled %q, want [%s]", targets, r.conn.Target())
	}
}

// longestRenewal is the longest time from a renewal disconnect to the
// token_renewed event, read from the JSON logs.
func longestRenewal(t *testing.T, logs string) time.Duration {
	var longest time.Duration
	var from time.Time
	for _, line := range strings.Split(logs, "\n") {
		var e struct {
			Event  string    `json:"event"`
			Reason string    `json:"reason"`
			Time   time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch {
		case e.Event == "disconnected" && e.Reason == "token renewal":
			from = e.Time
		case e.Event == "token_renewed" && !from.IsZero():
			longest = max(longest, e.Time.Sub(from))
		}
	}
	return longest
}

// runOnce runs a device that is expected to stop on its own.
func runOnce(t *testing.T, cfg mqtt.Config) error {
	t.Helper()
	cfg.Backoff = fastBackoff
	conn, err := mqtt.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return device.New(conn, device.Config{}).Run(t.Context())
}

func TestRefusedCredentials(t *testing.T) {
	srv := hubtest.NewServer(t)
	good, err := sas.ParseDevice(srv.CreateDevice(t, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := *good
	wrongKey.SharedAccessKey = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMDE="
	unknown := *good
	unknown.DeviceID = "nobody"
	for name, cs := range map[string]*sas.ConnectionString{"wrong key": &wrongKey, "unknown device": &unknown} {
		t.Run(name, func(t *testing.T) {
			err := runOnce(t, mqtt.Config{ConnectionString: cs, RootCAs: srv.CAPool()})
			if !errors.Is(err, device.ErrUnauthorized) {
				t.Fatalf("Run = %v, want ErrUnauthorized", err)
			}
			if strings.Contains(err.Error(), cs.SharedAccessKey) {
				t.Errorf("error shows the key: %v", err)
			}
		})
	}
	t.Run("untrusted hub", func(t *testing.T) {
		err := runOnce(t, mqtt.Config{ConnectionString: good, RootCAs: x509.NewCertPool()})
		if !errors.Is(err, device.ErrUntrusted) {
			t.Fatalf("Run = %v, want ErrUntrusted", err)
		}
	})
}

func TestShutdownDisconnects(t *testing.T) {
	srv := hubtest.NewServer(t)
	cs, err := sas.ParseDevice(srv.CreateDevice(t, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := mqtt.New(mqtt.Config{ConnectionString: cs, RootCAs: srv.CAPool()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- device.New(conn, device.Config{}).Run(ctx) }()
	<-conn.Ready()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if err := srv.WaitConnected(t.Context(), "d1", false); err != nil {
		t.Fatal(err)
	}
	if err := conn.Report(t.Context(), []byte(`{}`)); !errors.Is(err, mqtt.ErrClosed) {
		t.Errorf("Report after Run = %v, want ErrClosed", err)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
