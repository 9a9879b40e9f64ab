package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeDevices is the device side: InvokeFunc decides each answer; every
// call and notification is counted.
type fakeDevices struct {
	InvokeFunc func(ctx context.Context, id, method string, payload []byte) (int, []byte, error)

	mu       sync.Mutex
	calls    map[string]int
	payloads map[string]string
	notified map[string][]int64
	started  chan string // receives the device id of every call, if not nil
}

func newFake(fn func(ctx context.Context, id, method string, payload []byte) (int, []byte, error)) *fakeDevices {
	return &fakeDevices{InvokeFunc: fn, calls: map[string]int{}, payloads: map[string]string{}, notified: map[string][]int64{}}
}

func (f *fakeDevices) Invoke(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
	f.mu.Lock()
	f.calls[id]++
	f.payloads[id] = string(payload)
	fn := f.InvokeFunc
	f.mu.Unlock()
	if f.started != nil {
		f.started <- id
	}
	return fn(ctx, id, method, payload)
}

func (f *fakeDevices) Revoke(string) {}

func (f *fakeDevices) NotifyDesired(id string, version int64, patch []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notified[id] = append(f.notified[id], version)
}

func (f *fakeDevices) notifications(id string) []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.notified[id]...)
}

func (f *fakeDevices) payload(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.payloads[id]
}

func (f *fakeDevices) callCount() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.calls {
		out[k] = v
	}
	return out
}

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newStore(t *testing.T) *store.Store {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), "hub.db"))
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// addDevices registers n devices d000.. and tags every one with
// tags.site = site(i) when site is not nil.
func addDevices(t *testing.T, st *store.Store, n int, site func(i int) string) []string {
	t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("d%03d", i)
		if _, err := st.CreateDevice(iothub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
		if site != nil {
			if _, _, err := st.PatchTwin(id, iothub.Twin{Tags: map[string]any{"site": site(i)}}, "*"); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, id)
	}
	return ids
}

type engine struct {
	*Engine
	stop func() // cancels Run and waits for it to return
}

func startEngine(t *testing.T, cfg Config, prep ...func(*Engine)) *engine {
	t.Helper()
	cfg.Log = zerolog.New(zerolog.NewTestWriter(t))
	if dev, ok := cfg.Devices.(*fakeDevices); ok {
		cfg.Store.OnDesired(dev.NotifyDesired) // as the hub registers its broker
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range prep {
		f(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := testwait.Recv(t, done, "the engine to stop"); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &engine{Engine: e, stop: stop}
}

// waitJob polls the job until cond holds.
func waitJob(t *testing.T, e *Engine, id string, what string, cond func(iothub.JobResponse) bool) iothub.JobResponse {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j, err := e.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: gave up waiting for %s; last state: %+v", id, what, j)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func finished(j iothub.JobResponse) bool {
	return iothub.JobTerminal(j.Status) && j.DeviceJobStatistics.RunningCount == 0
}

func checkStats(t *testing.T, j iothub.JobResponse) {
	t.Helper()
	s := j.DeviceJobStatistics
	if s.DeviceCount != s.FailedCount+s.SucceededCount+s.RunningCount+s.PendingCount {
		t.Errorf("statistics do not add up: %+v", s)
	}
}

func methodJob(id, cond string) iothub.JobResponse {
	return iothub.JobResponse{JobID: id, Type: iothub.JobTypeDeviceMethod, QueryCondition: cond,
		CloudToDeviceMethod: &iothub.JobMethod{MethodName: "rebootDevice", Payload: json.RawMessage(`{"delay":1}`)}}
}

func TestMethodJobOverManyDevices(t *testing.T) {
	st := newStore(t)
	// 130 devices; 120 at the lab site are picked by the job.
	ids := addDevices(t, st, 130, func(i int) string {
		if i < 120 {
			return "lab"
		}
		return "home"
	})
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		var n int
		fmt.Sscanf(id, "d%d", &n)
		switch n % 3 {
		case 0:
			return 0, nil, fmt.Errorf("invoke: %w", hubapi.ErrDeviceNotOnline)
		case 1:
			return 500, []byte(`{"error":"disk full"}`), nil
		}
		return 200, []byte(`{"rebooting":true}`), nil
	})
	e := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 8})
	created, err := e.Create(t.Context(), methodJob("reboot-lab", "tags.site = 'lab'"))
	if err != nil {
		t.Fatal(err)
	}
	if created.Status != iothub.JobQueued || created.MaxExecutionTimeInSeconds != DefaultMaxExecutionTime ||
		created.CloudToDeviceMethod.ResponseTimeoutInSeconds != 30 || created.StartTime.IsZero() {
		t.Errorf("created job = %+v", created)
	}
	j := waitJob(t, e.Engine, "reboot-lab", "completion", finished)
	if j.Status != iothub.JobCompleted || j.EndTime.IsZero() {
		t.Fatalf("job = %+v", j)
	}
	checkStats(t, j)
	want := iothub.JobStatistics{DeviceCount: 120, FailedCount: 40, SucceededCount: 80}
	if j.DeviceJobStatistics != want {
		t.Errorf("statistics = %+v, want %+v", j.DeviceJobStatistics, want)
	}
	calls := dev.callCount()
	for i, id := range ids {
		want := 1
		if i >= 120 {
			want = 0
		}
		if calls[id] != want {
			t.Errorf("device %s called %d times, want %d", id, calls[id], want)
		}
	}
	if p := dev.payload("d002"); p != `{"delay":1}` {
		t.Errorf("payload = %s", p)
	}
	rows, err := st.JobRows("reboot-lab")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 120 {
		t.Fatalf("%d rows", len(rows))
	}
	for i, r := range rows {
		if r.DeviceID != ids[i] || r.JobType != iothub.JobTypeDeviceMethod || r.StartTimeUtc.IsZero() || r.EndTimeUtc.IsZero() {
			t.Errorf("row %d = %+v", i, r)
		}
		switch i % 3 {
		case 0:
			if r.Status != iothub.RowFailed || r.Error == nil || r.Error.Code != "404103" || r.Outcome != nil {
				t.Errorf("offline row = %+v", r)
			}
		case 1:
			if r.Status != iothub.RowCompleted || r.Outcome == nil || r.Outcome.DeviceMethodResponse.Status != 500 ||
				string(r.Outcome.DeviceMethodResponse.Payload) != `{"error":"disk full"}` {
				t.Errorf("500 row = %+v", r)
			}
		case 2:
			if r.Status != iothub.RowCompleted || r.Outcome.DeviceMethodResponse.Status != 200 || r.Error != nil {
				t.Errorf("200 row = %+v", r)
			}
		}
	}
}

func TestMethodJobTimeoutAndDeletedDevice(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 3, nil)
	release := make(chan struct{})
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		if id == "d001" {
			return 0, nil, hubapi.ErrTimeout
		}
		select {
		case <-release:
			return 200, nil, nil
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	})
	dev.started = make(chan string, 3)
	e := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 1})
	if _, err := e.Create(t.Context(), methodJob("j", "deviceId IN ['d000', 'd001', 'd002']")); err != nil {
		t.Fatal(err)
	}
	testwait.Recv(t, dev.started, "the call to d000") // d000 is in flight; delete d002 before its turn
	if err := st.DeleteDevice("d002", "*"); err != nil {
		t.Fatal(err)
	}
	close(release)
	j := waitJob(t, e.Engine, "j", "completion", finished)
	if j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 3, SucceededCount: 1, FailedCount: 2}) {
		t.Errorf("statistics = %+v", j.DeviceJobStatistics)
	}
	rows, _ := st.JobRows("j")
	if r := rows[0]; r.Outcome == nil || string(r.Outcome.DeviceMethodResponse.Payload) != "null" {
		t.Errorf("empty answer row = %+v", r)
	}
	if r := rows[1]; r.Error == nil || r.Error.Code != "504101" {
		t.Errorf("timeout row = %+v", r)
	}
	if r := rows[2]; r.Error == nil || r.Error.Code != "404001" {
		t.Errorf("deleted device row = %+v", r)
	}
}

func TestTwinUpdateJob(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 12, func(i int) string { return []string{"a", "b"}[i%2] })
	dev := newFake(nil)
	e := startEngine(t, Config{Store: st, Devices: dev})
	job := iothub.JobResponse{JobID: "set-interval", Type: iothub.JobTypeUpdateTwin, QueryCondition: "tags.site = 'a'",
		UpdateTwin: &iothub.JobTwin{
			Tags:       map[string]any{"fw": "2.0"},
			Properties: iothub.JobTwinProperties{Desired: map[string]any{"interval": json.Number("30"), "mode": map[string]any{"eco": true}}},
		}}
	if _, err := e.Create(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, e.Engine, "set-interval", "completion", finished)
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 6, SucceededCount: 6}) {
		t.Fatalf("job = %+v", j)
	}
	for i := range 12 {
		id := fmt.Sprintf("d%03d", i)
		tw, err := st.Twin(id)
		if err != nil {
			t.Fatal(err)
		}
		_, has := tw.Properties.Desired["interval"]
		if i%2 == 0 {
			if tw.Tags["fw"] != "2.0" || !has || tw.Tags["site"] != "a" {
				t.Errorf("twin %s = tags %v desired %v", id, tw.Tags, tw.Properties.Desired)
			}
			if v := dev.notifications(id); len(v) != 1 || v[0] != 2 {
				t.Errorf("notifications of %s = %v", id, v)
			}
		} else if has || tw.Tags["fw"] != nil || len(dev.notifications(id)) != 0 {
			t.Errorf("twin %s changed: %v %v", id, tw.Tags, tw.Properties.Desired)
		}
	}
	rows, _ := st.JobRows("set-interval")
	for _, r := range rows {
		if r.Status != iothub.RowCompleted || r.Outcome != nil || r.JobType != iothub.JobTypeUpdateTwin {
			t.Errorf("row = %+v", r)
		}
	}
}

func TestCancelScheduledJob(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 2, nil)
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		return 200, nil, nil
	})
	e := startEngine(t, Config{Store: st, Devices: dev})
	job := methodJob("later", "deviceId = 'd000'")
	job.StartTime = time.Now().Add(time.Hour)
	created, err := e.Create(t.Context(), job)
	if err != nil {
		t.Fatal(err)
	}
	if created.Status != iothub.JobScheduled {
		t.Fatalf("status = %s", created.Status)
	}
	got, err := e.Cancel(t.Context(), "later")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != iothub.JobCancelled || got.EndTime.IsZero() || got.DeviceJobStatistics.DeviceCount != 0 {
		t.Errorf("cancelled job = %+v", got)
	}
	// Cancelling again returns the job unchanged.
	again, err := e.Cancel(t.Context(), "later")
	if err != nil || !again.EndTime.Equal(got.EndTime) || again.Status != iothub.JobCancelled {
		t.Errorf("second cancel = %+v, %v; first %+v", again, err, got)
	}
	if _, err := e.Cancel(t.Context(), "nope"); !errors.Is(err, store.ErrJobNotFound) {
		t.Errorf("cancel unknown job: %v", err)
	}
	if n := len(dev.callCount()); n != 0 {
		t.Errorf("%d devices called", n)
	}
}

func TestCancelRunningJob(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 10, nil)
	release := make(chan struct{})
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		select {
		case <-release:
			return 200, nil, nil
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	})
	dev.started = make(chan string, 10)
	e := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 2})
	if _, err := e.Create(t.Context(), methodJob("c", "IS_DEFINED(deviceId)")); err != nil {
		t.Fatal(err)
	}
	testwait.Recv(t, dev.started, "the first direct-method call")
	testwait.Recv(t, dev.started, "the second direct-method call")
	got, err := e.Cancel(t.Context(), "c")
	if err != nil {
		t.Fatal(err)
	}
	want := iothub.JobStatistics{DeviceCount: 10, RunningCount: 2, FailedCount: 8}
	if got.Status != iothub.JobCancelled || got.DeviceJobStatistics != want {
		t.Errorf("cancelled job = %+v, want statistics %+v", got, want)
	}
	close(release)
	j := waitJob(t, e.Engine, "c", "in-flight calls to finish", finished)
	if j.Status != iothub.JobCancelled || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 10, SucceededCount: 2, FailedCount: 8}) {
		t.Errorf("job = %+v", j)
	}
	calls := dev.callCount()
	if len(calls) != 2 || calls["d000"] != 1 || calls["d001"] != 1 {
		t.Errorf("calls = %v", calls)
	}
	rows, _ := st.JobRows("c")
	for _, r := range rows[2:] {
		if r.Status != iothub.RowCanceled || !r.StartTimeUtc.IsZero() {
			t.Errorf("row = %+v", r)
		}
	}
}

func TestMaxExecutionTime(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 5, nil)
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		<-ctx.Done() // never answers
		return 0, nil, ctx.Err()
	})
	dev.started = make(chan string, 5)
	// The deadline timer fires when the test says so.
	fire := make(chan time.Time)
	var asked sync.Map
	e := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 2}, func(e *Engine) {
		e.timer = func(d time.Duration) (<-chan time.Time, func()) {
			asked.Store(d.Round(time.Second), true)
			return fire, func() {}
		}
	})
	job := methodJob("slow", "deviceId != 'x'")
	job.MaxExecutionTimeInSeconds = 90
	if _, err := e.Create(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	testwait.Recv(t, dev.started, "the first direct-method call")
	testwait.Recv(t, dev.started, "the second direct-method call")
	if _, ok := asked.Load(90 * time.Second); !ok {
		t.Error("no deadline timer of 90 s was started")
	}
	fire <- time.Now()
	j := waitJob(t, e.Engine, "slow", "expiry", finished)
	if j.Status != iothub.JobFailed || !strings.Contains(j.FailureReason, "maxExecutionTimeInSeconds") {
		t.Errorf("job = %+v", j)
	}
	if j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 5, FailedCount: 5}) {
		t.Errorf("statistics = %+v", j.DeviceJobStatistics)
	}
	rows, _ := st.JobRows("slow")
	var inFlight, canceled int
	for _, r := range rows {
		switch {
		case r.Status == iothub.RowFailed && r.Error != nil && r.Error.Code == "504101":
			inFlight++
		case r.Status == iothub.RowCanceled:
			canceled++
		default:
			t.Errorf("row = %+v", r)
		}
	}
	if inFlight != 2 || canceled != 3 {
		t.Errorf("%d in-flight failures, %d canceled rows", inFlight, canceled)
	}
}

// TestRestartDuringJob kills the hub (store closed under the engine, then
// the engine stopped) while four calls are in flight, reopens and resumes.
func TestRestartDuringJob(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	st := openStore(t, path)
	ids := addDevices(t, st, 20, nil)
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		<-ctx.Done() // the first four calls hang until the "crash"
		return 0, nil, ctx.Err()
	})
	dev.started = make(chan string, 20)
	e1 := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 4})
	if _, err := e1.Create(t.Context(), methodJob("r", "IS_DEFINED(deviceId)")); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		testwait.Recv(t, dev.started, "a direct-method call")
	}
	if err := st.Close(); err != nil { // the crash: nothing more reaches the disk
		t.Fatal(err)
	}
	e1.stop()

	st2 := openStore(t, path)
	defer st2.Close()
	rows, err := st2.JobRows("r")
	if err != nil {
		t.Fatal(err)
	}
	var runningRows, pendingRows int
	for _, r := range rows {
		switch r.Status {
		case iothub.RowRunning:
			runningRows++
		case iothub.RowPending:
			pendingRows++
		}
	}
	if runningRows != 4 || pendingRows != 16 {
		t.Fatalf("on disk after the crash: %d running, %d pending rows", runningRows, pendingRows)
	}

	dev.mu.Lock()
	dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		return 200, []byte(`{}`), nil
	}
	dev.mu.Unlock()
	e2 := startEngine(t, Config{Store: st2, Devices: dev, Concurrency: 4})
	j := waitJob(t, e2.Engine, "r", "completion after restart", finished)
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 20, SucceededCount: 16, FailedCount: 4}) {
		t.Errorf("job = %+v", j)
	}
	for id, n := range dev.callCount() {
		if n != 1 {
			t.Errorf("device %s called %d times", id, n)
		}
	}
	if n := len(dev.callCount()); n != len(ids) {
		t.Errorf("%d devices called, want %d", n, len(ids))
	}
	rows, _ = st2.JobRows("r")
	for _, r := range rows[:4] {
		if r.Status != iothub.RowFailed || r.Error == nil || r.Error.Code != "503001" ||
			!strings.Contains(r.Error.Description, "hub restarted while the call was in flight") {
			t.Errorf("in-flight row after restart = %+v", r)
		}
	}
	e2.stop()
}

// TestGracefulStopResumes stops the engine mid-job: abandoned calls are
// failed, pending rows run after the next start.
func TestGracefulStopResumes(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 6, nil)
	var mu sync.Mutex
	hang := true
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		mu.Lock()
		h := hang
		mu.Unlock()
		if h {
			<-ctx.Done()
			return 0, nil, ctx.Err()
		}
		return 200, nil, nil
	})
	dev.started = make(chan string, 6)
	e1 := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 2})
	if _, err := e1.Create(t.Context(), methodJob("g", "IS_DEFINED(deviceId)")); err != nil {
		t.Fatal(err)
	}
	testwait.Recv(t, dev.started, "the first direct-method call")
	testwait.Recv(t, dev.started, "the second direct-method call")
	e1.stop()
	j, err := st.Job("g")
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != iothub.JobRunning || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 6, FailedCount: 2, PendingCount: 4}) {
		t.Fatalf("after stop: %+v", j)
	}
	mu.Lock()
	hang = false
	mu.Unlock()
	e2 := startEngine(t, Config{Store: st, Devices: dev, Concurrency: 2})
	j = waitJob(t, e2.Engine, "g", "completion", finished)
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 6, SucceededCount: 4, FailedCount: 2}) {
		t.Errorf("job = %+v", j)
	}
	rows, _ := st.JobRows("g")
	if r := rows[0]; r.Error == nil || !strings.Contains(r.Error.Description, "hub stopped") {
		t.Errorf("abandoned row = %+v", r)
	}
	for id, n := range dev.callCount() {
		if n != 1 {
			t.Errorf("device %s called %d times", id, n)
		}
	}
}

func TestJobsWithoutRun(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 3, nil)
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		return 200, nil, nil
	})
	e, err := New(Config{Store: st, Devices: dev})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Create(t.Context(), methodJob("a", "deviceId = 'd000'")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Create(t.Context(), methodJob("b", "deviceId = 'd001'")); err != nil {
		t.Fatal(err)
	}
	// Cancelled while no engine runs: never starts.
	if j, err := e.Cancel(t.Context(), "b"); err != nil || j.Status != iothub.JobCancelled {
		t.Fatalf("cancel = %+v, %v", j, err)
	}
	if j, _ := e.Get(t.Context(), "a"); j.Status != iothub.JobQueued {
		t.Fatalf("status before Run = %s", j.Status)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	j := waitJob(t, e, "a", "completion", finished)
	cancel()
	if err := testwait.Recv(t, done, "Run to return"); err != nil {
		t.Fatal(err)
	}
	if err := e.Run(t.Context()); err == nil {
		t.Error("second Run succeeded")
	}
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics.SucceededCount != 1 {
		t.Errorf("job = %+v", j)
	}
	if c := dev.callCount(); len(c) != 1 || c["d000"] != 1 {
		t.Errorf("calls = %v", c)
	}
	list, err := e.List(t.Context(), iothub.JobTypeDeviceMethod, iothub.JobCancelled)
	if err != nil || len(list) != 1 || list[0].JobID != "b" {
		t.Errorf("list = %+v, %v", list, err)
	}
	all, _ := e.List(t.Context(), "", "")
	if len(all) != 2 || all[0].JobID != "a" {
		t.Errorf("all jobs = %+v", all)
	}
}

func TestEmptyJobCompletes(t *testing.T) {
	st := newStore(t)
	e := startEngine(t, Config{Store: st, Devices: newFake(nil)})
	if _, err := e.Create(t.Context(), methodJob("none", "deviceId = 'ghost'")); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, e.Engine, "none", "completion", finished)
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics != (iothub.JobStatistics{}) {
		t.Errorf("job = %+v", j)
	}
}

func TestCreateValidation(t *testing.T) {
	st := newStore(t)
	e, err := New(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ok := methodJob("ok", "deviceId = 'd1'")
	with := func(f func(j *iothub.JobResponse)) iothub.JobResponse {
		j := ok
		m := *ok.CloudToDeviceMethod
		j.CloudToDeviceMethod = &m
		f(&j)
		return j
	}
	cases := map[string]iothub.JobResponse{
		"empty id":        with(func(j *iothub.JobResponse) { j.JobID = "" }),
		"long id":         with(func(j *iothub.JobResponse) { j.JobID = strings.Repeat("a", 65) }),
		"bad id char":     with(func(j *iothub.JobResponse) { j.JobID = "a_b" }),
		"no type":         with(func(j *iothub.JobResponse) { j.Type = "" }),
		"old type":        with(func(j *iothub.JobResponse) { j.Type = "scheduleDirectRequest" }),
		"no method":       with(func(j *iothub.JobResponse) { j.CloudToDeviceMethod = nil }),
		"no method name":  with(func(j *iothub.JobResponse) { j.CloudToDeviceMethod.MethodName = "" }),
		"bad method name": with(func(j *iothub.JobResponse) { j.CloudToDeviceMethod.MethodName = "a/b" }),
		"short timeout":   with(func(j *iothub.JobResponse) { j.CloudToDeviceMethod.ResponseTimeoutInSeconds = 2 }),
		"long connect":    with(func(j *iothub.JobResponse) { j.CloudToDeviceMethod.ConnectTimeoutInSeconds = 301 }),
		"bad payload":     with(func(j *iothub.JobResponse) { j.CloudToDeviceMethod.Payload = json.RawMessage("{") }),
		"no condition":    with(func(j *iothub.JobResponse) { j.QueryCondition = " " }),
		"bad condition":   with(func(j *iothub.JobResponse) { j.QueryCondition = "deviceId = " }),
		"full query":      with(func(j *iothub.JobResponse) { j.QueryCondition = "SELECT * FROM devices" }),
		"negative max":    with(func(j *iothub.JobResponse) { j.MaxExecutionTimeInSeconds = -1 }),
		"twin no patch":   {JobID: "t", Type: iothub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'"},
		"twin bad key": {JobID: "t", Type: iothub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'a'",
			UpdateTwin: &iothub.JobTwin{Tags: map[string]any{"a.b": 1}}},
	}
	for name, j := range cases {
		_, err := e.Create(t.Context(), j)
		var ve *store.ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("%s: err = %v, want a ValidationError", name, err)
		}
	}
	if _, err := e.Create(t.Context(), ok); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Create(t.Context(), ok); !errors.Is(err, store.ErrJobExists) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := e.Get(t.Context(), "missing"); !errors.Is(err, store.ErrJobNotFound) {
		t.Errorf("get missing: %v", err)
	}
	_, err = ParseCondition("deviceId = 'a' AND")
	if err == nil || !strings.Contains(err.Error(), "position") {
		t.Errorf("syntax error = %v", err)
	}
}

// BenchmarkMethodJob measures a direct-method job over 1000 devices that
// answer at once: the cost is the row writes.
func BenchmarkMethodJob(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), "hub.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for i := range 1000 {
		if _, err := st.CreateDevice(iothub.Device{DeviceID: fmt.Sprintf("d%04d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		return 200, nil, nil
	})
	e, err := New(Config{Store: st, Devices: dev})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		testwait.Recv(b, done, "the engine to stop")
	}()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("bench-%d", i)
		if _, err := e.Create(ctx, methodJob(id, "IS_DEFINED(deviceId)")); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(testwait.Timeout)
		for {
			j, err := e.Get(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			if j.Status == iothub.JobCompleted {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("job %s not completed after %v: %+v", id, testwait.Timeout, j)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// TestRecoveryOfStoredStates starts an engine on jobs left by a previous
// run: a cancelled job with a call in flight, and a running job whose
// deadline passed while the hub was down.
func TestRecoveryOfStoredStates(t *testing.T) {
	st := newStore(t)
	addDevices(t, st, 2, nil)
	past := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Microsecond)
	cancelled := methodJob("cancelled", "IS_DEFINED(deviceId)")
	cancelled.CreatedTime, cancelled.StartTime, cancelled.EndTime = past, past, past
	cancelled.Status, cancelled.MaxExecutionTimeInSeconds = iothub.JobCancelled, 3600
	cancelled.DeviceJobStatistics = iothub.JobStatistics{DeviceCount: 2, RunningCount: 1, FailedCount: 1}
	expired := methodJob("expired", "IS_DEFINED(deviceId)")
	expired.CreatedTime, expired.StartTime = past, past
	expired.Status, expired.MaxExecutionTimeInSeconds = iothub.JobRunning, 60
	expired.DeviceJobStatistics = iothub.JobStatistics{DeviceCount: 2, SucceededCount: 1, PendingCount: 1}
	for _, j := range []iothub.JobResponse{cancelled, expired} {
		if err := st.CreateJob(j); err != nil {
			t.Fatal(err)
		}
	}
	row := func(job, dev, status string) iothub.DeviceJob {
		return iothub.DeviceJob{JobID: job, DeviceID: dev, JobType: iothub.JobTypeDeviceMethod, Status: status}
	}
	if err := st.WriteJob(nil, []iothub.DeviceJob{
		row("cancelled", "d000", iothub.RowRunning), row("cancelled", "d001", iothub.RowCanceled),
		row("expired", "d000", iothub.RowCompleted), row("expired", "d001", iothub.RowPending),
	}); err != nil {
		t.Fatal(err)
	}
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		return 200, nil, nil
	})
	e := startEngine(t, Config{Store: st, Devices: dev})
	j := waitJob(t, e.Engine, "expired", "expiry", finished)
	if j.Status != iothub.JobFailed || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 2, SucceededCount: 1, FailedCount: 1}) {
		t.Errorf("expired job = %+v", j)
	}
	j, err := e.Get(t.Context(), "cancelled")
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != iothub.JobCancelled || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 2, FailedCount: 2}) {
		t.Errorf("cancelled job = %+v", j)
	}
	rows, _ := st.JobRows("cancelled")
	if r := rows[0]; r.Status != iothub.RowFailed || r.Error == nil || r.Error.Code != "503001" {
		t.Errorf("in-flight row = %+v", r)
	}
	rows, _ = st.JobRows("expired")
	if r := rows[1]; r.Status != iothub.RowCanceled {
		t.Errorf("pending row of the expired job = %+v", r)
	}
	if n := len(dev.callCount()); n != 0 {
		t.Errorf("%d devices called", n)
	}
}
