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
	"github.com/dmctl/dmctl/device/devicetest"
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

// patience bounds every wait in these tests: each fails on its own, saying
// what it waited for, long before the go test timeout.
const patience = 10 * time.Second

// within returns a context that ends after d (and with the test).
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// ack waits for a queued patch's outcome.
func ack(t *testing.T, q <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-q:
		return err
	case <-time.After(patience):
		t.Fatalf("%s: no acknowledgement within %v", what, patience)
		return nil
	}
}

// fastBackoff keeps reconnect tests quick.
var fastBackoff = retry.Constant(time.Millisecond)

// rig is one simulated device running against a test hub.
type rig struct {
	srv  *hubtest.Server
	id   string
	conn *mqtt.Conn
	dev  *device.Device
	ev   *devicetest.Recorder
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
	r := &rig{srv: srv, id: id, ev: devicetest.NewRecorder()}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	if cfg.RootCAs == nil {
		cfg.RootCAs = srv.CAPool()
	}
	if cfg.Backoff == nil {
		cfg.Backoff = fastBackoff
	}
	cfg.ClientType = "dmctl/test"
	cfg.Log = log
	dcfg.Log = log
	cfg.OnEvent = r.ev.Record
	dcfg.OnEvent = r.ev.Record
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
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device Run: %v", err)
			}
		case <-time.After(patience):
			t.Errorf("device Run did not return within %v of its cancel", patience)
		}
	})
	select {
	case <-conn.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("device stopped before connecting: %v", err)
	case <-time.After(patience):
		t.Fatalf("device %s not connected within %v", id, patience)
	}
	return r
}

// count returns how many events of kind the device and its connection emitted.
func (r *rig) count(kind device.EventKind) int { return r.ev.Count(kind) }

// waitEvent waits until the n-th event of kind.
func (r *rig) waitEvent(t *testing.T, kind device.EventKind, n int) device.Event {
	t.Helper()
	return r.ev.Wait(t, kind, n, patience)
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
	// Long enough for a method call's connect and response timeouts.
	req, err := http.NewRequestWithContext(within(t, 45*time.Second), method, h.base+path+"?api-version="+iothub.APIVersion, bytes.NewReader(b))
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
	deadline := time.After(patience)
	for {
		v, present := reported(t, srv, id)[key]
		if present && ok(v) {
			return v
		}
		select {
		case <-deadline:
			t.Fatalf("reported %s = %v, not as expected within %v", key, v, patience)
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
	status, body, err := srv.Hub().Devices().Invoke(within(t, patience), "d1", "echo", []byte("{oops"), time.Second, 10*time.Second)
	if err != nil || status != 400 || !strings.Contains(string(body), `"payload is not valid JSON"`) {
		t.Errorf("non-JSON payload = %d %s %v, want 400", status, body, err)
	}

	if _, ok := reported(t, srv, "d1")[device.RebootTimeProperty]; ok {
		t.Errorf("rebootTime reported on first start")
	}
	if r.count(device.EventConnected) != 1 || r.count(device.EventSubscribed) != 1 {
		t.Errorf("connected %d times, subscribed %d times, want 1 each", r.count(device.EventConnected), r.count(device.EventSubscribed))
	}
	var statuses []int
	for _, e := range r.ev.Matching(func(e device.Event) bool { return e.Kind == device.EventMethodAnswered }) {
		statuses = append(statuses, e.Status)
	}
	if fmt.Sprint(statuses) != "[200 200 404 400]" {
		t.Errorf("method events with statuses %v, want [200 200 404 400]", statuses)
	}
}

func TestDesiredPatchReachesDevice(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	twin := r.waitEvent(t, device.EventTwin, 1) // the twin read after connect
	status, body := newREST(t, srv).do(t, http.MethodPatch, "/twins/d1",
		map[string]any{"properties": map[string]any{"desired": map[string]any{"interval": 42}}})
	if status != http.StatusOK {
		t.Fatalf("patch desired: HTTP %d %s", status, body)
	}
	if d := r.waitEvent(t, device.EventDesired, 1); d.Version <= twin.Version || d.DeviceID != "d1" {
		t.Errorf("desired event %+v: want device d1 and a $version above the twin's %d", d, twin.Version)
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
	if err := srv.WaitConnected(within(t, patience), "d1", false); err != nil {
		t.Fatalf("device not offline within %v: %v", patience, err)
	}
	if err := srv.WaitConnected(within(t, patience), "d1", true); err != nil {
		t.Fatalf("device not back within %v: %v", patience, err)
	}
	v := waitReported(t, srv, "d1", device.RebootTimeProperty, func(any) bool { return true })
	rt, err := time.Parse(time.RFC3339Nano, v.(string))
	if err != nil || rt.Before(before) {
		t.Errorf("rebootTime %v: not RFC 3339 or before the request (%v)", v, err)
	}
	if e := r.waitEvent(t, device.EventRebooted, 1); e.RebootTime != v {
		t.Errorf("rebooted event says rebootTime %q, the twin %q", e.RebootTime, v)
	}
	if e := r.waitEvent(t, device.EventRebootStarted, 1); e.Delay != time.Second {
		t.Errorf("reboot_started delay %v, want 1s", e.Delay)
	}
	if r.count(device.EventSuspended) != 1 || r.count(device.EventResumed) != 1 || r.count(device.EventConnected) != 2 {
		t.Errorf("suspended %d, resumed %d, connected %d; want 1, 1, 2", r.count(device.EventSuspended), r.count(device.EventResumed), r.count(device.EventConnected))
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
	deadline := time.Now().Add(patience)
	for r.count(device.EventTokenRenewed) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d token renewals within %v, want 2 (SASTTL 3 s)", r.count(device.EventTokenRenewed), patience)
		}
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
	if err := ack(t, q, "report after renewal"); err != nil {
		t.Fatalf("report after renewal: %v", err)
	}
	if r.count(device.EventRetrying) != 0 || r.count(device.EventConnectFailed) != 0 {
		t.Errorf("renewal went through failed connects: %+v", r.ev.Matching(func(e device.Event) bool {
			return e.Kind == device.EventRetrying || e.Kind == device.EventConnectFailed
		}))
	}
	t.Logf("%d method calls answered across %d token renewals; longest switch %s",
		calls, r.count(device.EventTokenRenewed), longestRenewal(r.ev.Events()))
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
			r.waitEvent(t, device.EventTwin, 1)

			q, err := r.conn.Queue([]byte(`{"aroundRestart":1}`))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			srv.Restart(t)
			restarted := time.Now()
			r.waitEvent(t, device.EventConnected, 2)
			t.Logf("hub restart took %s; device connected again %s after the hub was back",
				restarted.Sub(start).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
			r.waitEvent(t, device.EventTwin, 2) // re-read after reconnect

			if err := ack(t, q, "patch queued around the restart"); err != nil {
				t.Fatalf("patch queued around the restart: %v", err)
			}
			if got := fmt.Sprint(reported(t, srv, "d1")["aroundRestart"]); got != "1" {
				t.Errorf("aroundRestart = %v, want 1", got)
			}
			if res := rest.invoke(t, "d1", "echo", `"again"`, 10); res.Status != 200 || string(res.Payload) != `"again"` {
				t.Errorf("method after restart = %d %s (not re-subscribed?)", res.Status, res.Payload)
			}
			if lost := r.ev.Matching(func(e device.Event) bool { return e.Kind == device.EventDisconnected && e.Err != nil }); len(lost) < 1 {
				t.Errorf("no disconnected event with the error that ended the link: %+v", r.ev.Events())
			}
		})
	}
}

func TestOfflineReportsKeptInOrder(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	if err := r.conn.Suspend(within(t, patience)); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if err := srv.WaitConnected(within(t, patience), "d1", false); err != nil {
		t.Fatalf("device not offline within %v after Suspend: %v", patience, err)
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
	if err := r.conn.Resume(within(t, patience)); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	for i, q := range acks {
		if err := ack(t, q, fmt.Sprintf("patch %d", i+1)); err != nil {
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
	if err := r.conn.Report(within(t, patience), []byte(deep)); err == nil {
		t.Fatal("a patch the hub refuses was reported as acknowledged")
	}
	if e := r.waitEvent(t, device.EventReportRejected, 1); e.Status != 400 || e.Err == nil {
		t.Errorf("report_rejected event %+v, want status 400 and the error", e)
	}
	// The queue moves on.
	if err := r.conn.Report(within(t, patience), []byte(`{"ok":true}`)); err != nil {
		t.Fatalf("patch after a refused one: %v", err)
	}
}

func TestWebSockets(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{Transport: mqtt.TransportWebSockets}, device.Config{})
	if res := newREST(t, srv).invoke(t, "d1", "echo", `{"ws":true}`, 0); res.Status != 200 || string(res.Payload) != `{"ws":true}` {
		t.Errorf("echo over WebSockets = %d %s", res.Status, res.Payload)
	}
	if e := r.waitEvent(t, device.EventConnected, 1); e.Transport != "mqtt-ws" || e.Target != r.conn.Target() {
		t.Errorf("connected event %+v, want transport mqtt-ws to %s", e, r.conn.Target())
	}
	if err := r.conn.Report(within(t, patience), []byte(`{"ws":1}`)); err != nil {
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
	// Read the client through the hijacked buffer: bytes it sent right
	// after the 200 (its TLS hello) may already be in it.
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		return
	}
	p.wg.Add(2)
	pipe := func(dst net.Conn, src io.Reader, srcConn net.Conn) {
		defer p.wg.Done()
		_, _ = io.Copy(dst, src)
		dst.Close()
		srcConn.Close()
	}
	go pipe(up, brw.Reader, down)
	go pipe(down, up, up)
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
// token_renewed event.
func longestRenewal(events []device.Event) time.Duration {
	var longest time.Duration
	var from time.Time
	for _, e := range events {
		switch {
		case e.Kind == device.EventDisconnected && e.Reason == "token renewal":
			from = e.Time
		case e.Kind == device.EventTokenRenewed && !from.IsZero():
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
	ctx := within(t, patience)
	err = device.New(conn, device.Config{}).Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run did not stop on its own within %v", patience)
	}
	return err
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
	rec := devicetest.NewRecorder()
	conn, err := mqtt.New(mqtt.Config{ConnectionString: cs, RootCAs: srv.CAPool(), OnEvent: rec.Record})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- device.New(conn, device.Config{}).Run(ctx) }()
	select {
	case <-conn.Ready():
	case err := <-done:
		t.Fatalf("Run stopped before connecting: %v", err)
	case <-time.After(patience):
		t.Fatalf("not connected within %v", patience)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(patience):
		t.Fatalf("Run did not return within %v of its cancel", patience)
	}
	n := len(rec.Events())
	if last := rec.Events()[n-1]; last.Kind != device.EventDisconnected || last.Reason != "shutdown" {
		t.Errorf("last event %+v, want disconnected (shutdown)", last)
	}
	if err := srv.WaitConnected(within(t, patience), "d1", false); err != nil {
		t.Fatalf("hub still sees the device %v after Run returned: %v", patience, err)
	}
	time.Sleep(10 * time.Millisecond)
	if len(rec.Events()) != n {
		t.Errorf("events after Run returned: %+v", rec.Events()[n:])
	}
	if err := conn.Report(within(t, patience), []byte(`{}`)); !errors.Is(err, mqtt.ErrClosed) {
		t.Errorf("Report after Run = %v, want ErrClosed", err)
	}
}
