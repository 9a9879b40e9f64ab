package rollout_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/internal/servicetest"
	"github.com/dmctl/dmctl/service/rollout"
)

// fleetDevice describes one simulated device of a fleet test.
type fleetDevice struct {
	id    string
	delay time.Duration // reboot delay; 0 means none
	// reboot, when set, replaces the device's rebootDevice handler.
	reboot device.MethodFunc
}

// runFleet registers and runs the devices in-process (one MQTT connection
// each) until the test ends, and waits until each listens for methods.
func runFleet(t testing.TB, h *hubtest.Server, devs []fleetDevice) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, len(devs)) // one value per device, once it has stopped
	t.Cleanup(func() {
		cancel()
		deadline := time.After(servicetest.WaitTimeout)
		for range devs {
			select {
			case err := <-stopped:
				if err != nil {
					t.Error(err)
				}
			case <-deadline:
				t.Errorf("devices still running %v after their context ended", servicetest.WaitTimeout)
				return
			}
		}
	})
	tlsConf := &tls.Config{RootCAs: h.CAPool(), ClientSessionCache: tls.NewLRUClientSessionCache(len(devs))}
	for _, fd := range devs {
		cs, err := sas.ParseDevice(h.CreateDevice(t, fd.id))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := mqtt.New(mqtt.Config{
			ConnectionString: cs,
			TLSConfig:        tlsConf,
			Backoff:          func(int) time.Duration { return 10 * time.Millisecond },
		})
		if err != nil {
			t.Fatal(err)
		}
		delay := fd.delay
		if delay <= 0 {
			delay = device.NoRebootDelay
		}
		dev := device.New(conn, device.Config{RebootDelay: delay})
		if fd.reboot != nil {
			dev.Handle(device.RebootMethod, fd.reboot)
		}
		go func() {
			if err := dev.Run(ctx); err != nil {
				stopped <- fmt.Errorf("device %s: %w", fd.id, err)
				return
			}
			stopped <- nil
		}()
	}
	waitAll(t, h, ids(devs))
}

func ids(devs []fleetDevice) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.id
	}
	return out
}

// tagAll sets tags.site on every device.
func tagAll(t *testing.T, c *service.Client, site string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := c.UpdateTwin(servicetest.Context(t), id, service.TwinPatch{Tags: json.RawMessage(`{"site":"` + site + `"}`)}, ""); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHubFleetReboot100(t *testing.T) {
	h, c := servicetest.HubClient(t)
	const n = 100
	devs := make([]fleetDevice, n)
	ids := make([]string, n)
	for i := range devs {
		ids[i] = fmt.Sprintf("fleet-%03d", i)
		devs[i] = fleetDevice{id: ids[i], delay: time.Duration(rand.IntN(200)) * time.Millisecond}
	}
	runFleet(t, h, devs)
	tagAll(t, c, "lab", ids...)
	h.CreateDevice(t, "elsewhere") // not tagged: not in the query

	var mu sync.Mutex
	var stages []rollout.Stage
	start := time.Now()
	res, err := rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition:    "tags.site = 'lab'",
		PollInterval: 100 * time.Millisecond,
		WaitTimeout:  10 * time.Second,
		Progress: func(p rollout.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if len(stages) == 0 || stages[len(stages)-1] != p.Stage {
				stages = append(stages, p.Stage)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebooted and confirmed %d devices in %v", n, time.Since(start))
	if res.Counts != (rollout.Counts{Total: n, Succeeded: n}) {
		t.Fatalf("counts %+v", res.Counts)
	}
	if len(res.Waves) != 1 || res.Waves[0].JobStatus != iothub.JobCompleted || res.Stopped {
		t.Errorf("waves %+v stopped %v", res.Waves, res.Stopped)
	}
	got := make([]string, 0, n)
	for _, d := range res.Devices {
		got = append(got, d.DeviceID)
		if d.Outcome != rollout.OutcomeSucceeded || d.Status != 200 || !d.HasRebootTime || d.HasPreviousTime {
			t.Errorf("device %+v", d)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Errorf("devices %v", got)
	}
	mu.Lock()
	if stages[0] != rollout.StageBaseline || stages[len(stages)-1] != rollout.StageWaveDone {
		t.Errorf("stages %v", stages)
	}
	mu.Unlock()

	// The job and its rows are readable through the jobs API.
	job, err := c.Job(servicetest.Context(t), res.Waves[0].JobIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if st := job.Stats(); st.DeviceCount != n || st.SucceededCount != n || job.CloudToDeviceMethod == nil || job.CloudToDeviceMethod.MethodName != service.RebootMethod {
		t.Errorf("job %+v stats %+v", job, st)
	}
	rows := 0
	err = c.DeviceJobs(servicetest.Context(t), job.JobID, func(r iothub.DeviceJob) error {
		rows++
		if r.Status != iothub.RowCompleted || r.MethodResponse() == nil || r.MethodResponse().Status != 200 {
			t.Errorf("row %+v", r)
		}
		return nil
	})
	if err != nil || rows != n {
		t.Errorf("rows %d, %v", rows, err)
	}

	// A second fleet reboot has the first one's times as baselines.
	waitAll(t, h, ids)
	res2, err := rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition: "tags.site = 'lab'", PollInterval: 100 * time.Millisecond, WaitTimeout: 10 * time.Second,
		Waves: []rollout.Step{{Count: 10}, {Percent: 100}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Counts.Succeeded != n || len(res2.Waves) != 2 || res2.Waves[0].Size != 10 || res2.Waves[1].Size != 90 {
		t.Fatalf("second: counts %+v waves %+v", res2.Counts, res2.Waves)
	}
	first := map[string]string{}
	for _, d := range res.Devices {
		first[d.DeviceID] = d.RebootTime
	}
	for _, d := range res2.Devices {
		if !d.HasPreviousTime || d.PreviousRebootTime != first[d.DeviceID] || d.RebootTime == d.PreviousRebootTime {
			t.Errorf("second reboot of %s: %+v (first %q)", d.DeviceID, d, first[d.DeviceID])
		}
	}
}

func waitAll(t testing.TB, h *hubtest.Server, ids []string) {
	t.Helper()
	for _, id := range ids {
		servicetest.WaitMethods(t, h, id)
	}
}

// refuse is a rebootDevice handler that answers 500.
func refuse(context.Context, json.RawMessage) (int, any) {
	return http.StatusInternalServerError, map[string]string{"error": "flash write failed"}
}

func TestHubFleetStagedRolloutAborts(t *testing.T) {
	h, c := servicetest.HubClient(t)
	// 20 devices; in query (deviceId) order the first wave of 2 holds one
	// device that refuses the reboot.
	var devs []fleetDevice
	var ids []string
	for i := range 20 {
		fd := fleetDevice{id: fmt.Sprintf("st-%02d", i), delay: time.Duration(rand.IntN(200)) * time.Millisecond}
		if i == 1 || i == 7 {
			fd.reboot = refuse
		}
		devs = append(devs, fd)
		ids = append(ids, fd.id)
	}
	runFleet(t, h, devs)
	h.CreateDevice(t, "st-99") // registered, never connected: offline
	ids = append(ids, "st-99")
	tagAll(t, c, "staged", ids...)

	res, err := rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition:        "tags.site = 'staged'",
		Waves:            []rollout.Step{{Count: 2}, {Percent: 50}, {Percent: 100}},
		AbortFailureRate: 0.05,
		JobIDPrefix:      "staged",
		PollInterval:     50 * time.Millisecond,
		WaitTimeout:      5 * time.Second,
	})
	var dse *service.DeviceStatusError
	if !errors.As(err, &dse) || dse.Status != 500 {
		t.Fatalf("err = %v, want a DeviceStatusError 500", err)
	}
	if !res.Stopped || !strings.Contains(res.StopReason, "wave 1 of 3") || len(res.Waves) != 1 {
		t.Fatalf("stopped %v (%s), waves %+v", res.Stopped, res.StopReason, res.Waves)
	}
	w := res.Waves[0]
	if !slices.Equal(w.JobIDs, []string{"staged-w1"}) || w.Size != 2 || w.Counts.Succeeded != 1 || w.Counts.Failed != 1 || w.FailureRate != 0.5 {
		t.Errorf("wave %+v", w)
	}
	if res.Counts != (rollout.Counts{Total: 21, Succeeded: 1, Failed: 1, Skipped: 19}) {
		t.Errorf("counts %+v", res.Counts)
	}
	d := res.Devices[1]
	if d.DeviceID != "st-01" || d.Outcome != rollout.OutcomeFailed || d.Failure != rollout.FailureDeviceStatus ||
		d.Status != 500 || !strings.Contains(d.Reason, "flash write failed") {
		t.Errorf("refusing device %+v", d)
	}
	for _, d := range res.Devices[2:] {
		if d.Outcome != rollout.OutcomeSkipped || d.JobID != "" {
			t.Errorf("device after the stop %+v", d)
		}
	}
	if _, err := c.Job(servicetest.Context(t), "staged-w2"); !errors.Is(err, service.ErrJobNotFound) {
		t.Errorf("second wave job: %v, want ErrJobNotFound", err)
	}

	// Without an abort threshold every wave runs; the worst outcome is the
	// device status error, and the offline device is reported as such.
	waitAll(t, h, ids[:20])
	res, err = rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition:        "tags.site = 'staged'",
		Waves:            []rollout.Step{{Count: 2}, {Percent: 50}, {Percent: 100}},
		AbortFailureRate: -1,
		PollInterval:     50 * time.Millisecond,
		WaitTimeout:      5 * time.Second,
	})
	if !errors.As(err, &dse) {
		t.Fatalf("err = %v, want a DeviceStatusError", err)
	}
	if len(res.Waves) != 3 || res.Stopped || res.Counts != (rollout.Counts{Total: 21, Succeeded: 18, Failed: 2, Offline: 1}) {
		t.Errorf("waves %d stopped %v counts %+v", len(res.Waves), res.Stopped, res.Counts)
	}
	off := res.Devices[20]
	if off.DeviceID != "st-99" || off.Outcome != rollout.OutcomeOffline || off.ErrorCode != iothub.CodeDeviceNotOnline {
		t.Errorf("offline device %+v", off)
	}
}

func TestHubFleetOfflineAndUnconfirmed(t *testing.T) {
	h, c := servicetest.HubClient(t)
	runFleet(t, h, []fleetDevice{
		{id: "u-ok"},
		{id: "u-slow", delay: time.Hour}, // accepts, never comes back in time
		{id: "u-slow2", delay: time.Hour},
	})
	h.CreateDevice(t, "u-off")
	res, err := rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition: "deviceId IN ['u-ok', 'u-slow', 'u-off']", PollInterval: 20 * time.Millisecond, WaitTimeout: 300 * time.Millisecond,
	})
	// Offline outranks not confirmed.
	if !errors.Is(err, service.ErrDeviceNotOnline) || errors.Is(err, service.ErrRebootNotConfirmed) {
		t.Fatalf("err = %v, want ErrDeviceNotOnline", err)
	}
	if res.Counts != (rollout.Counts{Total: 3, Succeeded: 1, Offline: 1, Unconfirmed: 1}) {
		t.Errorf("counts %+v", res.Counts)
	}
	byID := map[string]rollout.Device{}
	for _, d := range res.Devices {
		byID[d.DeviceID] = d
	}
	if d := byID["u-slow"]; d.Outcome != rollout.OutcomeUnconfirmed || d.Status != 200 || !strings.Contains(d.Reason, "no rebootTime") {
		t.Errorf("slow device %+v", d)
	}

	// Only a slow device: not confirmed is the worst outcome.
	res, err = rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition: "deviceId = 'u-slow2'", PollInterval: 20 * time.Millisecond, WaitTimeout: 200 * time.Millisecond,
	})
	if !errors.Is(err, service.ErrRebootNotConfirmed) || res.Counts.Unconfirmed != 1 {
		t.Errorf("slow device alone: %v, %+v", err, res.Counts)
	}
	_, err = rollout.Run(servicetest.Context(t), c, rollout.Options{Condition: "deviceId = 'nobody'"})
	if !errors.Is(err, rollout.ErrNoDevices) {
		t.Errorf("no match: %v", err)
	}
}

// TestHubFleetSplitWave: a wave whose id list does not fit one job
// condition runs as several jobs.
func TestHubFleetSplitWave(t *testing.T) {
	h, c := servicetest.HubClient(t)
	var ids []string
	for i := range 90 {
		id := fmt.Sprintf("%s-%03d", strings.Repeat("long", 25), i) // 104 characters
		h.CreateDevice(t, id)
		ids = append(ids, id)
	}
	res, err := rollout.Run(servicetest.Context(t), c, rollout.Options{
		Condition: "status = 'enabled'", JobIDPrefix: "split", PollInterval: 20 * time.Millisecond, WaitTimeout: time.Second,
	})
	if !errors.Is(err, service.ErrDeviceNotOnline) {
		t.Fatalf("err = %v", err)
	}
	if len(res.Waves) != 1 || !slices.Equal(res.Waves[0].JobIDs, []string{"split-w1-1", "split-w1-2"}) {
		t.Fatalf("waves %+v", res.Waves)
	}
	if res.Counts != (rollout.Counts{Total: 90, Offline: 90}) {
		t.Errorf("counts %+v", res.Counts)
	}
	perJob := map[string]int{}
	for _, d := range res.Devices {
		perJob[d.JobID]++
		if d.ErrorCode != iothub.CodeDeviceNotOnline {
			t.Errorf("device %+v", d)
		}
	}
	for _, id := range res.Waves[0].JobIDs {
		j, err := c.Job(servicetest.Context(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if len(j.QueryCondition) > rollout.MaxConditionLength || j.Stats().DeviceCount != perJob[id] || j.Stats().FailedCount != perJob[id] {
			t.Errorf("job %s: condition of %d characters, stats %+v, devices %d", id, len(j.QueryCondition), j.Stats(), perJob[id])
		}
	}
}

// BenchmarkHubFleetReboot reboots a fleet of in-process devices, each with
// a one second reboot delay, through the local hub, and fails unless every
// device is confirmed. DMCTL_FLEET_SCALE sets the device count (default
// 100), e.g. DMCTL_FLEET_SCALE=1000 go test -run '^$' -bench HubFleetReboot
// -benchtime 1x ./service/rollout/.
func BenchmarkHubFleetReboot(b *testing.B) {
	n := 100
	if v, err := strconv.Atoi(os.Getenv("DMCTL_FLEET_SCALE")); err == nil && v > 0 {
		n = v
	}
	h := hubtest.NewServer(b, hubtest.WithLogger(zerolog.Nop())) // a benchmark prints every log line
	cs, err := sas.ParseService(h.ServiceConnectionString())
	if err != nil {
		b.Fatal(err)
	}
	c, err := service.New(cs, service.WithRootCAs(h.CAPool()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	devs := make([]fleetDevice, n)
	for i := range devs {
		devs[i] = fleetDevice{id: fmt.Sprintf("scale-%05d", i), delay: time.Second}
	}
	runFleet(b, h, devs)
	jobs := 0
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		waitAll(b, h, ids(devs)) // back from the last iteration's reboot
		ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
		b.StartTimer()
		res, err := rollout.Run(ctx, c, rollout.Options{
			Condition: "status = 'enabled'", PollInterval: 250 * time.Millisecond, WaitTimeout: time.Minute,
		})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		if res.Counts != (rollout.Counts{Total: n, Succeeded: n}) {
			b.Fatalf("not every device confirmed: counts %+v", res.Counts)
		}
		jobs = len(res.Waves[0].JobIDs)
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "devices/s")
	b.ReportMetric(float64(jobs), "jobs")
}
