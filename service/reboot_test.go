package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// fakeRebootHub serves GET /twins/{id} from a scripted sequence of twin
// answers and POST /twins/{id}/methods with a fixed answer.
type fakeRebootHub struct {
	mu      sync.Mutex
	twins   []func(w http.ResponseWriter) // answers in order; the last repeats
	gets    int
	invokes int
	method  func(w http.ResponseWriter, body []byte)
	invoked chan struct{} // closed at the first invoke
}

func twinWith(rebootTime any) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		reported := map[string]any{"$version": 3}
		if rebootTime != nil {
			reported["rebootTime"] = rebootTime
		}
		writeJSON(w, 200, map[string]any{
			"deviceId": "d1", "etag": "AAAAAAAAAAE=", "version": 2,
			"properties": map[string]any{"desired": map[string]any{"$version": 1}, "reported": reported},
		})
	}
}

func twinStatus(status, code int) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		writeJSON(w, status, iothub.RegistryErrorBody(code, "scripted", time.Now()))
	}
}

func (f *fakeRebootHub) handle(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == "GET" && r.URL.Path == "/twins/d1":
		i := min(f.gets, len(f.twins)-1)
		f.gets++
		f.twins[i](w)
	case r.Method == "POST" && r.URL.Path == "/twins/d1/methods":
		f.invokes++
		var body [1 << 16]byte
		n, _ := r.Body.Read(body[:])
		f.method(w, body[:n])
	default:
		writeJSON(w, 404, iothub.RegistryErrorBody(iothub.CodeDeviceNotFound, r.URL.Path, time.Now()))
	}
}

func (f *fakeRebootHub) counts() (gets, invokes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets, f.invokes
}

func answer(status int, payload string) func(w http.ResponseWriter, body []byte) {
	return func(w http.ResponseWriter, _ []byte) {
		writeJSON(w, 200, fmt.Sprintf(`{"status":%d,"payload":%s}`, status, payload))
	}
}

func newRebootClient(t *testing.T, f *fakeRebootHub, opts ...Option) (*Client, *sleepRecorder, *recorder) {
	c, _, rec := newTestClient(t, f.handle, opts...)
	sr := &sleepRecorder{}
	c.sleep = sr.sleep
	return c, sr, rec
}

func TestRebootBaselineAbsentConfirmedOnFirstPoll(t *testing.T) {
	// The seed's device answers only after rebooting: the first poll
	// already sees the new time.
	f := &fakeRebootHub{
		twins:  []func(http.ResponseWriter){twinWith(nil), twinWith("2026-11-25T10:00:00.0000000Z")},
		method: answer(200, `{"result":"rebooted"}`),
	}
	c, sr, rec := newRebootClient(t, f)
	var stages []RebootStage
	res, err := c.Reboot(testContext(t), "d1", RebootOptions{Progress: func(p RebootProgress) { stages = append(stages, p.Stage) }})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Confirmed || res.HasPreviousTime || res.RebootTime != "2026-11-25T10:00:00.0000000Z" || res.Polls != 1 {
		t.Errorf("result %+v", res)
	}
	if res.Status != 200 || string(res.Payload) != `{"result":"rebooted"}` {
		t.Errorf("answer %d %s", res.Status, res.Payload)
	}
	if len(sr.get()) != 0 {
		t.Errorf("slept %v before the first poll", sr.get())
	}
	if fmt.Sprint(stages) != "[baseline invoked confirmed]" {
		t.Errorf("stages %v", stages)
	}
	// The method request: rebootDevice, payload {}, 30 s, connect 0.
	var body map[string]any
	for _, r := range rec.all() {
		if r.Method == "POST" {
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if body["methodName"] != "rebootDevice" || fmt.Sprint(body["payload"]) != "map[]" ||
		body["responseTimeoutInSeconds"] != 30.0 || body["connectTimeoutInSeconds"] != 0.0 {
		t.Errorf("method body %v", body)
	}
	if gets, invokes := f.counts(); gets != 2 || invokes != 1 {
		t.Errorf("%d twin reads, %d invokes", gets, invokes)
	}
}

func TestRebootBaselinePresentPollsUntilChange(t *testing.T) {
	old, now := "2026-11-25T09:00:00.0000000Z", "2026-11-25T10:00:00.0000000Z"
	f := &fakeRebootHub{
		twins:  []func(http.ResponseWriter){twinWith(old), twinWith(old), twinWith(old), twinWith(now)},
		method: answer(200, `null`),
	}
	c, sr, _ := newRebootClient(t, f)
	var polls []int
	res, err := c.Reboot(testContext(t), "d1", RebootOptions{
		Payload: json.RawMessage(`{"delay":2}`), PollInterval: 250 * time.Millisecond,
		ResponseTimeout: 1500 * time.Millisecond, ConnectTimeout: 5 * time.Second,
		Progress: func(p RebootProgress) {
			if p.Stage == StagePolled {
				polls = append(polls, p.Poll)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Confirmed || res.PreviousRebootTime != old || !res.HasPreviousTime || res.RebootTime != now || res.Polls != 3 {
		t.Errorf("result %+v", res)
	}
	if got := sr.get(); fmt.Sprint(got) != "[250ms 250ms]" {
		t.Errorf("sleeps %v", got)
	}
	if fmt.Sprint(polls) != "[1 2]" {
		t.Errorf("unconfirmed polls reported %v", polls)
	}
}

func TestRebootRequestTimeouts(t *testing.T) {
	f := &fakeRebootHub{twins: []func(http.ResponseWriter){twinWith(nil)}, method: answer(200, `{}`)}
	c, _, rec := newRebootClient(t, f)
	_, err := c.Reboot(testContext(t), "d1", RebootOptions{
		Payload: json.RawMessage(`{"delay":2}`), ResponseTimeout: 1500 * time.Millisecond,
		ConnectTimeout: 5 * time.Second, NoWait: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rec.all() {
		if r.Method == "POST" {
			want := `{"methodName":"rebootDevice","payload":{"delay":2},"responseTimeoutInSeconds":2,"connectTimeoutInSeconds":5}`
			if string(r.Body) != want {
				t.Errorf("body %s, want %s", r.Body, want)
			}
		}
	}
	if gets, _ := f.counts(); gets != 1 {
		t.Errorf("NoWait polled: %d twin reads", gets)
	}
}

func TestRebootDeviceErrorStatus(t *testing.T) {
	f := &fakeRebootHub{
		twins:  []func(http.ResponseWriter){twinWith("t0")},
		method: answer(500, `{"error":"disk on fire"}`),
	}
	c, _, _ := newRebootClient(t, f)
	res, err := c.Reboot(testContext(t), "d1", RebootOptions{})
	var dse *DeviceStatusError
	if !errors.As(err, &dse) || dse.Status != 500 || string(dse.Payload) != `{"error":"disk on fire"}` {
		t.Fatalf("err = %v, want DeviceStatusError 500", err)
	}
	if res == nil || res.Status != 500 || res.Confirmed || res.PreviousRebootTime != "t0" {
		t.Errorf("result %+v", res)
	}
	if gets, _ := f.counts(); gets != 1 {
		t.Errorf("polled after an error status: %d twin reads", gets)
	}
}

// blockingSleep waits for the context only: the wait deadline ends it. A
// context that has not ended within testTimeout fails the sleep.
func blockingSleep(ctx context.Context, _ time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(testTimeout):
		return fmt.Errorf("blockingSleep: the context did not end within %v", testTimeout)
	}
}

func TestRebootNotConfirmed(t *testing.T) {
	f := &fakeRebootHub{twins: []func(http.ResponseWriter){twinWith("t0")}, method: answer(200, `{}`)}
	c, _, _ := newRebootClient(t, f)
	c.sleep = blockingSleep
	res, err := c.Reboot(testContext(t), "d1", RebootOptions{WaitTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrRebootNotConfirmed) {
		t.Fatalf("err = %v, want ErrRebootNotConfirmed", err)
	}
	if !strings.Contains(err.Error(), `rebootTime still "t0"`) {
		t.Errorf("error %q does not say what was seen", err)
	}
	if res == nil || res.Confirmed || res.RebootTime != "t0" || res.Polls != 1 || res.Status != 200 {
		t.Errorf("result %+v", res)
	}
}

func TestRebootNotConfirmedNothingReported(t *testing.T) {
	f := &fakeRebootHub{twins: []func(http.ResponseWriter){twinWith(nil)}, method: answer(200, `{}`)}
	c, _, _ := newRebootClient(t, f)
	c.sleep = blockingSleep
	_, err := c.Reboot(testContext(t), "d1", RebootOptions{WaitTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrRebootNotConfirmed) || !strings.Contains(err.Error(), "no rebootTime reported") {
		t.Fatalf("err = %v", err)
	}
}

func TestRebootThrottledPollBacksOff(t *testing.T) {
	f := &fakeRebootHub{
		twins: []func(http.ResponseWriter){
			twinWith("t0"),
			twinStatus(429, iothub.CodeThrottled), twinStatus(429, iothub.CodeThrottled), twinStatus(429, iothub.CodeThrottled),
			twinWith("t0"),
			twinWith("t1"),
		},
		method: answer(200, `{}`),
	}
	c, sr, _ := newRebootClient(t, f, WithRetry(1, nil))
	var errs []error
	res, err := c.Reboot(testContext(t), "d1", RebootOptions{Progress: func(p RebootProgress) {
		if p.Stage == StagePolled {
			errs = append(errs, p.Err)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Confirmed || res.RebootTime != "t1" || res.Polls != 5 {
		t.Errorf("result %+v", res)
	}
	// 1 s base: doubled after each throttled poll, back to 1 s after a good one.
	if got := sr.get(); fmt.Sprint(got) != "[2s 4s 8s 1s]" {
		t.Errorf("sleeps %v, want [2s 4s 8s 1s]", got)
	}
	if len(errs) != 4 || !errors.Is(errs[0], ErrThrottled) || errs[3] != nil {
		t.Errorf("poll errors %v", errs)
	}
}

func TestRebootTransientPollErrorKeepsWaiting(t *testing.T) {
	f := &fakeRebootHub{
		twins:  []func(http.ResponseWriter){twinWith("t0"), twinStatus(500, iothub.CodeServerError), twinWith("t1")},
		method: answer(200, `{}`),
	}
	c, _, _ := newRebootClient(t, f, WithRetry(1, nil))
	res, err := c.Reboot(testContext(t), "d1", RebootOptions{})
	if err != nil || !res.Confirmed || res.Polls != 2 {
		t.Fatalf("res %+v, err %v", res, err)
	}
}

func TestRebootInvokeErrors(t *testing.T) {
	for _, tc := range []struct {
		status, code int
		want         error
	}{
		{404, iothub.CodeDeviceNotOnline, ErrDeviceNotOnline},
		{504, iothub.CodeGatewayTimeout, ErrMethodTimeout},
		{401, iothub.CodeUnauthorized, ErrUnauthorized},
		{500, iothub.CodeServerError, nil},
	} {
		f := &fakeRebootHub{
			twins: []func(http.ResponseWriter){twinWith("t0")},
			method: func(w http.ResponseWriter, _ []byte) {
				writeJSON(w, tc.status, iothub.MethodErrorBody(tc.code, "scripted", time.Now()))
			},
		}
		c, _, _ := newRebootClient(t, f)
		res, err := c.Reboot(testContext(t), "d1", RebootOptions{})
		if err == nil || res != nil {
			t.Errorf("%d: res %+v err %v", tc.code, res, err)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%d: err %v, want %v", tc.code, err, tc.want)
		}
		if _, invokes := f.counts(); invokes != 1 {
			t.Errorf("%d: invoked %d times", tc.code, invokes)
		}
	}
}

func TestRebootUnknownDevice(t *testing.T) {
	f := &fakeRebootHub{twins: []func(http.ResponseWriter){twinStatus(404, iothub.CodeDeviceNotFound)}, method: answer(200, `{}`)}
	c, _, _ := newRebootClient(t, f)
	_, err := c.Reboot(testContext(t), "d1", RebootOptions{})
	if !errors.Is(err, ErrDeviceNotFound) {
		t.Fatalf("err = %v", err)
	}
	if _, invokes := f.counts(); invokes != 0 {
		t.Error("invoked a device whose twin does not exist")
	}
}

func TestRebootCancelWhileWaiting(t *testing.T) {
	f := &fakeRebootHub{twins: []func(http.ResponseWriter){twinWith("t0")}, method: answer(200, `{}`)}
	c, _, _ := newRebootClient(t, f)
	ctx, cancel := context.WithCancel(testContext(t))
	c.sleep = func(ctx context.Context, d time.Duration) error { cancel(); return blockingSleep(ctx, d) }
	_, err := c.Reboot(ctx, "d1", RebootOptions{})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrRebootNotConfirmed) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestRebootTimeOfNonString(t *testing.T) {
	tw := &iothub.Twin{Properties: iothub.TwinProperties{Reported: map[string]any{"rebootTime": 12.5}}}
	if v, ok := reportedTime(tw, RebootTimeProperty); !ok || v != "12.5" {
		t.Errorf("got %q %v", v, ok)
	}
	tw.Properties.Reported["rebootTime"] = nil
	if _, ok := reportedTime(tw, RebootTimeProperty); ok {
		t.Error("null rebootTime counted as present")
	}
}
