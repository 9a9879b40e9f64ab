package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/syncbuf"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/devicetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// patience bounds every wait in these tests.
const patience = 5 * time.Second

// fakeConn records what the device asks of its connection. Run hands the
// handler to the test and blocks until ctx ends.
type fakeConn struct {
	handler chan device.Handler
	calls   chan string // "suspend", "resume", "report {json}"

	ReportFunc func(patch []byte) error
}

func newFakeConn() *fakeConn {
	return &fakeConn{handler: make(chan device.Handler, 1), calls: make(chan string, 16)}
}

func (f *fakeConn) Run(ctx context.Context, h device.Handler) error {
	f.handler <- h
	<-ctx.Done()
	return nil
}

func (f *fakeConn) Report(_ context.Context, patch []byte) error {
	f.calls <- "report " + string(patch)
	if f.ReportFunc != nil {
		return f.ReportFunc(patch)
	}
	return nil
}

func (f *fakeConn) DeviceID() string { return "fake" }

func (f *fakeConn) Suspend(context.Context) error { f.calls <- "suspend"; return nil }
func (f *fakeConn) Resume(context.Context) error  { f.calls <- "resume"; return nil }

func (f *fakeConn) next(t *testing.T) string {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(patience):
		t.Fatalf("no connection call (suspend, resume, report) within %v", patience)
	}
	return ""
}

// start runs a device on a fake connection and returns the handler the
// connection got and the device's events; the device stops at the end of
// the test.
func start(t *testing.T, cfg device.Config) (*fakeConn, device.Handler, *devicetest.Recorder) {
	t.Helper()
	fc := newFakeConn()
	rec := devicetest.NewRecorder()
	cfg.OnEvent = rec.Record
	d := device.New(fc, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(patience):
			t.Errorf("Run did not return within %v of its cancel", patience)
		}
	})
	select {
	case h := <-fc.handler:
		return fc, h, rec
	case <-time.After(patience):
		t.Fatalf("Run did not start the connection within %v", patience)
		return nil, nil, nil
	}
}

// reboot calls rebootDevice until it is accepted (a reboot that is still
// finishing answers 409) and fails the test if it is not within patience.
func reboot(t *testing.T, h device.Handler) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod})
		switch {
		case status == 200:
			return
		case status != 409:
			t.Fatalf("rebootDevice: status %d body %s", status, body)
		case time.Now().After(deadline):
			t.Fatalf("rebootDevice still 409 (a reboot in progress) after %v", patience)
		}
		time.Sleep(time.Millisecond)
	}
}

func decode(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", body, err)
	}
	return m
}

func TestMux(t *testing.T) {
	var mux device.Mux
	var got json.RawMessage
	mux.Handle("echo", func(_ context.Context, p json.RawMessage) (int, any) {
		got = p
		return 201, p
	})
	mux.Handle("panics", func(context.Context, json.RawMessage) (int, any) { panic("boom") })
	mux.Handle("unmarshalable", func(context.Context, json.RawMessage) (int, any) { return 200, make(chan int) })
	mux.Handle("nilresult", func(context.Context, json.RawMessage) (int, any) { return 200, nil })

	tests := []struct {
		name, method, payload string
		wantStatus            int
		wantBody              string // exact, when set
		wantError             string // body "error", when set
		wantArg               string // payload the handler saw, when set
	}{
		{name: "unknown method", method: "x", payload: `{}`, wantStatus: 404, wantBody: `{"error":"method not found","method":"x"}`},
		{name: "case-sensitive name", method: "Echo", payload: `{}`, wantStatus: 404, wantError: "method not found"},
		{name: "payload not JSON", method: "echo", payload: `{not json`, wantStatus: 400, wantError: "payload is not valid JSON"},
		{name: "unknown beats bad payload", method: "nope", payload: `{not json`, wantStatus: 404, wantError: "method not found"},
		{name: "object payload", method: "echo", payload: `{"a":1}`, wantStatus: 201, wantBody: `{"a":1}`, wantArg: `{"a":1}`},
		{name: "empty payload is null", method: "echo", payload: ``, wantStatus: 201, wantBody: `null`, wantArg: `null`},
		{name: "blank payload is null", method: "echo", payload: " ", wantStatus: 201, wantBody: `null`, wantArg: `null`},
		{name: "scalar payload", method: "echo", payload: `42`, wantStatus: 201, wantBody: `42`, wantArg: `42`},
		{name: "handler panics", method: "panics", payload: `null`, wantStatus: 500, wantError: "method handler failed"},
		{name: "result not JSON", method: "unmarshalable", payload: `null`, wantStatus: 500, wantError: "method result is not representable as JSON"},
		{name: "nil result", method: "nilresult", payload: `null`, wantStatus: 200, wantBody: `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got = nil
			status, body := mux.Dispatch(t.Context(), tt.method, []byte(tt.payload))
			if status != tt.wantStatus {
				t.Errorf("status = %d, want %d (body %s)", status, tt.wantStatus, body)
			}
			if !json.Valid(body) {
				t.Errorf("body %q is not JSON", body)
			}
			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("body = %s, want %s", body, tt.wantBody)
			}
			if tt.wantError != "" {
				if e := decode(t, body)["error"]; e != tt.wantError {
					t.Errorf("error = %v, want %q", e, tt.wantError)
				}
			}
			if tt.wantArg != "" && string(got) != tt.wantArg {
				t.Errorf("handler saw %q, want %q", got, tt.wantArg)
			}
		})
	}
}

func TestRebootCycle(t *testing.T) {
	at := time.Date(2026, 11, 25, 20, 1, 2, 345678900, time.FixedZone("CET", 3600))
	fc, h, rec := start(t, device.Config{RebootDelay: device.NoRebootDelay, Now: func() time.Time { return at }})

	status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod})
	if status != 200 {
		t.Fatalf("status = %d, want 200 (body %s)", status, body)
	}
	resp := decode(t, body)
	if resp["delaySeconds"] != 0.0 || !strings.HasPrefix(resp["message"].(string), "rebooting") {
		t.Errorf("response = %s, want a rebooting message with delaySeconds 0", body)
	}
	for _, want := range []string{"suspend", "resume", `report {"rebootTime":"2026-11-25T19:01:02.3456789Z"}`} {
		if got := fc.next(t); got != want {
			t.Fatalf("connection call = %q, want %q", got, want)
		}
	}
	if e := rec.Wait(t, device.EventRebooted, 1, patience); e.RebootTime != "2026-11-25T19:01:02.3456789Z" || e.DeviceID != "fake" {
		t.Errorf("rebooted event %+v, want device fake and the reported rebootTime", e)
	}
	var kinds []device.EventKind
	for _, e := range rec.Events() {
		kinds = append(kinds, e.Kind)
	}
	// With no reboot delay the reboot may finish before the answer's
	// event is emitted (the answer itself goes out first: Suspend answers
	// calls in progress), so only the reboot's own order is fixed.
	started, rebooted, answered := slices.Index(kinds, device.EventRebootStarted), slices.Index(kinds, device.EventRebooted), slices.Index(kinds, device.EventMethodAnswered)
	if len(kinds) != 4 || kinds[0] != device.EventMethodReceived || started < 0 || rebooted < started || answered < 0 {
		t.Errorf("events %v, want method_received, then method and reboot_started before rebooted", kinds)
	}
}

// TestRebootPayloadAsJSONText: the Python tutorial's service sends its
// payload as a JSON string holding an object; the device reads the object.
func TestRebootPayloadAsJSONText(t *testing.T) {
	for _, tt := range []struct {
		payload   string
		wantDelay float64
	}{
		{`"{\"method_number\":\"42\"}"`, 7},
		{`"{\"delaySeconds\": 5}"`, 5},
		{`""`, 7},
	} {
		_, h, _ := start(t, device.Config{RebootDelay: 7 * time.Second})
		status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod, Payload: []byte(tt.payload)})
		if status != 200 || decode(t, body)["delaySeconds"] != tt.wantDelay {
			t.Errorf("payload %s: status %d body %s, want 200 with delaySeconds %v", tt.payload, status, body, tt.wantDelay)
		}
	}
}

func TestRebootDelayFromConfigAndPayload(t *testing.T) {
	_, h, _ := start(t, device.Config{RebootDelay: 7 * time.Second})
	// Rejected payloads start no reboot; the last case starts one that is
	// still waiting out its delay when the test ends.
	tests := []struct {
		payload    string
		wantStatus int
		wantDelay  float64
	}{
		{`{"delaySeconds": "x"}`, 400, 0},
		{`{"delaySeconds": -1}`, 400, 0},
		{`{"delaySeconds": 3601}`, 400, 0},
		{`{"delaySeconds": 1.5}`, 400, 0},
		{`[1]`, 400, 0},
		{`"soon"`, 400, 0},
		{`"[1]"`, 400, 0},
		{`"null"`, 400, 0},
		{`"{\"delaySeconds\": -1}"`, 400, 0},
		{`{"delaySeconds": 3600}`, 200, 3600},
	}
	for _, tt := range tests {
		status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod, Payload: []byte(tt.payload)})
		if status != tt.wantStatus {
			t.Errorf("payload %s: status = %d, want %d (body %s)", tt.payload, status, tt.wantStatus, body)
			continue
		}
		if status == 200 && decode(t, body)["delaySeconds"] != tt.wantDelay {
			t.Errorf("payload %s: body %s, want delaySeconds %v", tt.payload, body, tt.wantDelay)
		}
		if status == 400 {
			m := decode(t, body)
			want := "delaySeconds must be an integer from 0 to 3600"
			if !strings.Contains(tt.payload, "delaySeconds") {
				want = `payload must be a JSON object such as {"delaySeconds": 20}, or a JSON string holding one`
			}
			if m["method"] != device.RebootMethod || m["error"] != want {
				t.Errorf("payload %s: 400 body %s, want error %q naming the method", tt.payload, body, want)
			}
		}
	}
}

func TestRebootDefaultDelay(t *testing.T) {
	for _, tt := range []struct {
		config  time.Duration
		payload string
		want    float64
	}{
		{0, "", 20},
		{0, "null", 20},
		{0, "{}", 20},
		{0, `{"other":1}`, 20},
		{7 * time.Second, "null", 7},
		{7 * time.Second, `{"delaySeconds":0}`, 0},
	} {
		t.Run(tt.config.String()+" "+tt.payload, func(t *testing.T) {
			_, h, _ := start(t, device.Config{RebootDelay: tt.config})
			status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod, Payload: []byte(tt.payload)})
			if status != 200 || decode(t, body)["delaySeconds"] != tt.want {
				t.Errorf("status %d body %s, want 200 with delaySeconds %v", status, body, tt.want)
			}
		})
	}
}

func TestRebootWhileRebooting(t *testing.T) {
	fc, h, _ := start(t, device.Config{RebootDelay: device.NoRebootDelay})
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the device is stopped, should the test fail early
	fc.ReportFunc = func([]byte) error { <-release; return nil }

	if status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod}); status != 200 {
		t.Fatalf("first reboot: status %d body %s", status, body)
	}
	fc.next(t) // suspend
	fc.next(t) // resume
	fc.next(t) // report, now blocked: the reboot is still under way
	status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod})
	if status != 409 || decode(t, body)["error"] != "reboot already in progress" {
		t.Fatalf("second reboot: status %d body %s, want 409 reboot already in progress", status, body)
	}
	unblock()

	// Once the first reboot is complete a new one is accepted.
	reboot(t, h)
	if got := fc.next(t); got != "suspend" {
		t.Fatalf("call = %q, want a second suspend", got)
	}
	fc.next(t)
	fc.next(t)
	select {
	case extra := <-fc.calls:
		t.Errorf("unexpected extra call %q: the rejected request was queued", extra)
	default:
	}
}

func TestTwoRebootsReportDifferentTimes(t *testing.T) {
	fc, h, _ := start(t, device.Config{RebootDelay: device.NoRebootDelay})
	var times []string
	for range 2 {
		reboot(t, h)
		fc.next(t)
		fc.next(t)
		var patch map[string]string
		if err := json.Unmarshal([]byte(strings.TrimPrefix(fc.next(t), "report ")), &patch); err != nil {
			t.Fatal(err)
		}
		ts, err := time.Parse(time.RFC3339Nano, patch["rebootTime"])
		if err != nil || ts.Location() != time.UTC {
			t.Fatalf("rebootTime %q is not RFC 3339 UTC: %v", patch["rebootTime"], err)
		}
		times = append(times, patch["rebootTime"])
	}
	if times[0] == times[1] {
		t.Errorf("two reboots reported the same rebootTime %s", times[0])
	}
}

func TestRebootReportFailureIsReportedAndClears(t *testing.T) {
	fc, h, rec := start(t, device.Config{RebootDelay: device.NoRebootDelay})
	refused := errors.New("hub refused reported properties: status 400")
	fc.ReportFunc = func([]byte) error { return refused }
	h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod})
	fc.next(t)
	fc.next(t)
	fc.next(t)
	if e := rec.Wait(t, device.EventRebootFailed, 1, patience); !errors.Is(e.Err, refused) {
		t.Errorf("reboot_failed event %+v, want the report's error", e)
	}
	if rec.Count(device.EventRebooted) != 0 {
		t.Errorf("rebooted event after a failed report")
	}
	// The failure clears: the next reboot is accepted.
	fc.ReportFunc = nil
	reboot(t, h)
}

func TestDesiredPatches(t *testing.T) {
	var logs syncbuf.Buffer
	_, h, rec := start(t, device.Config{Log: zerolog.New(&logs).Level(zerolog.DebugLevel)})
	h.HandleTwin([]byte(`{"desired":{"interval":5,"$version":4},"reported":{"rebootTime":"2026-01-01T00:00:00Z","$version":9}}`))
	h.HandleDesired(3, []byte(`{"interval":3,"$version":3}`))
	h.HandleDesired(5, []byte(`{"interval":7,"$version":5}`))
	h.HandleDesired(5, []byte(`{"interval":7,"$version":5}`))

	// Patches the twin already contains, and repeats, are not applied. (The
	// device also reports its firmware after the twin read, concurrently:
	// only the twin and desired events are in question here.)
	var events []string
	for _, e := range rec.Events() {
		if e.Kind == device.EventTwin || e.Kind == device.EventDesired {
			events = append(events, fmt.Sprintf("%s %d", e.Kind, e.Version))
		}
	}
	want := []string{"twin 4", "desired 5"}
	if strings.Join(events, ",") != strings.Join(want, ",") {
		t.Errorf("events = %q, want %q", events, want)
	}
	// People see the patch itself in the log.
	if !strings.Contains(logs.String(), `"patch":{"interval":7,"$version":5}`) {
		t.Errorf("desired patch not logged:\n%s", logs.String())
	}
}
