package firmware

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service/rollout"
)

const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func opts(t *testing.T, waves string) Options {
	t.Helper()
	o := Options{
		Condition: "tags.site = 'lab'", Version: "2.0.0", PackageURI: "https://hub/packages/fw-2.0.0.bin",
		Checksum: strings.ToUpper(sum), PollInterval: time.Millisecond, Timeout: 10 * time.Second,
		IDPrefix: "fw-test", Priority: 10, AbortFailureRate: 0.05,
	}
	if waves != "" {
		var err error
		if o.Waves, err = rollout.ParseWaves(waves); err != nil {
			t.Fatal(err)
		}
	}
	return o
}

func TestAllCurrentTwoWaves(t *testing.T) {
	h := newFakeHub(20, "1.0.0")
	h.onCreate = func(cfg iothub.Configuration, twins map[string]map[string]any) {
		if cfg.ID != "fw-test-w2" {
			return
		}
		// wave 2 starts only once wave 1 is done: its 2 devices are current.
		for _, id := range []string{"sim-001", "sim-002"} {
			fw := twins[id]["properties"].(map[string]any)["reported"].(map[string]any)["firmware"].(map[string]any)
			if fw["currentFwVersion"] != "2.0.0" {
				t.Errorf("wave 2 created while %s reports %v", id, fw)
			}
		}
	}
	var stages []Stage
	o := opts(t, "10%,100%")
	o.Progress = func(p Progress) { stages = append(stages, p.Stage) }
	res, err := Run(context.Background(), h, o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.Counts.Current != 20 || res.Counts.Failed != 0 || res.Counts.Pending != 0 || len(res.Waves) != 2 {
		t.Fatalf("counts %+v, waves %d", res.Counts, len(res.Waves))
	}
	if res.Waves[0].Size != 2 || res.Waves[1].Size != 18 {
		t.Errorf("wave sizes %d, %d; want 2, 18", res.Waves[0].Size, res.Waves[1].Size)
	}
	cfgs := h.created()
	if len(cfgs) != 2 || cfgs[0].ID != "fw-test-w1" || cfgs[1].ID != "fw-test-w2" {
		t.Fatalf("configurations %v", cfgs)
	}
	c := cfgs[0]
	if c.TargetCondition != "deviceId IN ['sim-001', 'sim-002']" || c.Priority != 10 || c.Labels["campaign"] != "fw-test" {
		t.Errorf("configuration 1: %+v", c)
	}
	fw := c.Content.DeviceContent["properties.desired.firmware"].(map[string]any)
	if fw["fwVersion"] != "2.0.0" || fw["fwPackageURI"] != "https://hub/packages/fw-2.0.0.bin" || fw["fwPackageCheckValue"] != sum {
		t.Errorf("desired firmware %v", fw)
	}
	if q := c.Metrics.Queries["rolledback"]; !strings.Contains(q, "configurations.[[fw-test-w1]].status = 'Applied'") {
		t.Errorf("metric query %q", q)
	}
	if stages[0] != StageDevices || stages[len(stages)-1] != StageWaveDone {
		t.Errorf("stages %v", stages)
	}
}

func TestSomeFailedInLastWave(t *testing.T) {
	h := newFakeHub(10, "1.0.0")
	h.scripts["sim-010"] = []string{"downloading", "verifying", "error", "rolledback"}
	res, err := Run(context.Background(), h, opts(t, "50%,100%"))
	if !errors.Is(err, ErrSomeFailed) {
		t.Fatalf("Run: %v, want ErrSomeFailed", err)
	}
	if res.Counts.Current != 9 || res.Counts.Failed != 1 || res.Counts.ByStatus["rolledback"] != 1 {
		t.Errorf("counts %+v", res.Counts)
	}
	last := res.DeviceList[len(res.DeviceList)-1]
	if last.DeviceID != "sim-010" || last.Outcome != OutcomeFailed || last.Substatus != "checksum mismatch" || last.CurrentVersion != "1.0.0" {
		t.Errorf("failed device %+v", last)
	}
}

func TestAbortStopsLaterWaves(t *testing.T) {
	h := newFakeHub(10, "1.0.0")
	h.scripts["sim-002"] = []string{"downloading", "error"}
	res, err := Run(context.Background(), h, opts(t, "30%,100%"))
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("Run: %v, want ErrAborted", err)
	}
	if n := len(h.created()); n != 1 {
		t.Errorf("%d configurations created, want only wave 1's", n)
	}
	if !res.Aborted || res.NotStarted != 7 || res.Waves[0].Counts.Failed != 1 || !strings.Contains(res.StopReason, "33.3%") {
		t.Errorf("result %+v", res)
	}
	if !strings.Contains(err.Error(), "7 not started") {
		t.Errorf("error %q does not count the devices not started", err)
	}
}

func TestFailureUnderTheRateGoesOn(t *testing.T) {
	h := newFakeHub(10, "1.0.0")
	h.scripts["sim-001"] = []string{"rolledback"}
	o := opts(t, "50%,100%")
	o.AbortFailureRate = 0.5
	res, err := Run(context.Background(), h, o)
	if !errors.Is(err, ErrSomeFailed) || len(res.Waves) != 2 || res.Counts.Current != 9 {
		t.Fatalf("Run: %v, %+v", err, res)
	}
}

func TestTimeout(t *testing.T) {
	h := newFakeHub(4, "1.0.0")
	h.scripts["sim-003"] = []string{"downloading"} // stuck
	o := opts(t, "")
	o.Timeout = 300 * time.Millisecond
	start := time.Now()
	res, err := Run(context.Background(), h, o)
	if !errors.Is(err, ErrTimedOut) {
		t.Fatalf("Run: %v, want ErrTimedOut", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a 300ms timeout took %s", took)
	}
	if !res.TimedOut || res.Counts.Current != 3 || res.Counts.Pending != 1 || res.Counts.ByStatus["downloading"] != 1 {
		t.Errorf("result %+v", res.Counts)
	}
}

func TestOldFailureIsNotCounted(t *testing.T) {
	h := newFakeHub(2, "1.0.0")
	// sim-001 still reports a rollback from an earlier update and never
	// picks up the new one: it is pending, not failed.
	h.twins["sim-001"]["properties"].(map[string]any)["reported"].(map[string]any)["firmware"] =
		map[string]any{"currentFwVersion": "1.0.0", "fwUpdateStatus": "rolledback"}
	h.scripts["sim-001"] = nil
	o := opts(t, "")
	o.Timeout = 200 * time.Millisecond
	res, err := Run(context.Background(), h, o)
	if !errors.Is(err, ErrTimedOut) || res.Counts.Failed != 0 || res.Counts.ByStatus[StatusWaiting] != 1 {
		t.Fatalf("Run: %v, counts %+v", err, res.Counts)
	}
}

func TestAlreadyCurrentCountsAtOnce(t *testing.T) {
	h := newFakeHub(3, "2.0.0")
	res, err := Run(context.Background(), h, opts(t, ""))
	if err != nil || res.Counts.Current != 3 {
		t.Fatalf("Run: %v, %+v", err, res.Counts)
	}
}

func TestNoDevicesAndBadOptions(t *testing.T) {
	h := newFakeHub(3, "1.0.0")
	o := opts(t, "")
	o.Condition = "tags.site = 'elsewhere'"
	if _, err := Run(context.Background(), h, o); !errors.Is(err, ErrNoDevices) {
		t.Errorf("no devices: %v", err)
	}
	for name, mod := range map[string]func(*Options){
		"condition":   func(o *Options) { o.Condition = " " },
		"version":     func(o *Options) { o.Version = "" },
		"package URI": func(o *Options) { o.PackageURI = "" },
		"checksum":    func(o *Options) { o.Checksum = "abc" },
		"prefix":      func(o *Options) { o.IDPrefix = "Upper" },
	} {
		o := opts(t, "")
		mod(&o)
		if _, err := Run(context.Background(), h, o); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if n := len(h.created()); n != 0 {
		t.Errorf("%d configurations created by refused campaigns", n)
	}
}

func TestCreateErrorStops(t *testing.T) {
	h := newFakeHub(3, "1.0.0")
	h.failCreate = errors.New("409 configuration exists")
	res, err := Run(context.Background(), h, opts(t, ""))
	if err == nil || !strings.Contains(err.Error(), "create configuration fw-test-w1") || res == nil || res.Counts.Pending != 3 {
		t.Fatalf("Run: %v, %+v", err, res)
	}
}

func TestSplitIDs(t *testing.T) {
	var ids []string
	for i := range 2500 {
		ids = append(ids, fmt.Sprintf("device-%05d", i))
	}
	parts := splitIDs(ids, MaxConditionLength)
	total := 0
	for _, p := range parts {
		total += len(p)
		if len(p) > MaxIDsPerConfiguration {
			t.Errorf("part of %d ids", len(p))
		}
		if n := len("deviceId IN [" + strings.Join(p, ", ") + "]"); n > MaxConditionLength+2*len(p) {
			t.Errorf("condition of %d characters", n)
		}
	}
	if total != len(ids) || len(parts) < 3 {
		t.Errorf("%d parts holding %d ids", len(parts), total)
	}
	if got := len(splitIDs([]string{"a"}, MaxConditionLength)); got != 1 {
		t.Errorf("one id: %d parts", got)
	}
}

func TestValidIDPrefix(t *testing.T) {
	for _, ok := range []string{"fw", "fw-2+0_rc", DefaultIDPrefix(time.Date(2026, 12, 1, 13, 0, 0, 5e6, time.UTC))} {
		if err := ValidIDPrefix(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "FW", "fw.2", "fw 2", strings.Repeat("a", 120)} {
		if ValidIDPrefix(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestFailedBeforeTheBaselineOnThisVersion(t *testing.T) {
	h := newFakeHub(3, "1.0.0")
	// sim-002 got 2.0.0 with a bad package from a configuration of higher
	// priority, and rolled back, before the campaign began.
	h.overridden = map[string]bool{"sim-002": true}
	props := h.twins["sim-002"]["properties"].(map[string]any)
	props["desired"] = map[string]any{
		"firmware":  map[string]any{"fwVersion": "2.0.0", "fwPackageURI": "file:///bad", "fwPackageCheckValue": sum},
		"$metadata": map[string]any{"firmware": map[string]any{"$lastUpdated": "2026-12-01T10:00:00.5Z"}},
	}
	props["reported"].(map[string]any)["firmware"] = map[string]any{
		"currentFwVersion": "1.0.0", "fwUpdateStatus": "rolledback", "fwUpdateSubstatus": "checksum mismatch",
		"lastFwUpdateStartTime": "2026-12-01T10:00:01Z",
	}
	h.scripts["sim-002"] = nil
	res, err := Run(context.Background(), h, opts(t, ""))
	if !errors.Is(err, ErrSomeFailed) || res.Counts.Failed != 1 || res.Counts.Current != 2 {
		t.Fatalf("Run: %v, counts %+v", err, res.Counts)
	}
	// the same report, but an attempt older than the desired firmware: the
	// device has not answered it yet.
	props["reported"].(map[string]any)["firmware"].(map[string]any)["lastFwUpdateStartTime"] = "2026-12-01T09:59:00Z"
	o := opts(t, "")
	o.Timeout = 300 * time.Millisecond
	o.IDPrefix = "fw-again"
	res, err = Run(context.Background(), h, o)
	if !errors.Is(err, ErrTimedOut) || res.Counts.Failed != 0 || res.Counts.Pending != 1 {
		t.Fatalf("Run: %v, counts %+v", err, res.Counts)
	}
}

// TestOverriddenEndsTheWave: a device that a configuration of higher
// priority holds on other firmware is reported overridden at once, not left
// pending until the timeout.
func TestOverriddenEndsTheWave(t *testing.T) {
	h := newFakeHub(3, "1.0.0")
	h.overridden, h.overrider = map[string]bool{"sim-002": true}, "hold-1-5"
	props := h.twins["sim-002"]["properties"].(map[string]any)
	props["desired"] = map[string]any{"firmware": map[string]any{"fwVersion": "1.5.0", "fwPackageURI": "https://hub/packages/fw-1.5.0.bin", "fwPackageCheckValue": sum}}
	props["reported"].(map[string]any)["firmware"] = map[string]any{"currentFwVersion": "1.5.0", "fwUpdateStatus": "current"}
	h.scripts["sim-002"] = nil
	o := opts(t, "")
	o.Timeout = 5 * time.Second
	res, err := Run(context.Background(), h, o)
	if !errors.Is(err, ErrOverridden) || res.TimedOut {
		t.Fatalf("Run: %v (timed out %v), want ErrOverridden", err, res.TimedOut)
	}
	if c := res.Counts; c.Current != 2 || c.Overridden != 1 || c.Pending != 0 || c.Failed != 0 {
		t.Fatalf("counts %+v, want 2 current, 1 overridden", c)
	}
	if !strings.Contains(err.Error(), "2 of 3 devices current on 2.0.0, 0 failed, 1 overridden, 0 pending") {
		t.Errorf("error %q lacks the counts", err)
	}
	for _, d := range res.DeviceList {
		if d.DeviceID == "sim-002" && (d.Outcome != OutcomeOverridden || d.OverriddenBy != "hold-1-5" || d.DesiredVersion != "1.5.0") {
			t.Errorf("sim-002: %+v, want overridden by hold-1-5 with desired 1.5.0", d)
		}
	}
	// A device the other configuration's package fails is still overridden:
	// that failure is not the campaign's.
	// It goes downloading, then rolledback, after the wave's baseline.
	h.scripts["sim-002"], h.step["sim-002"] = []string{"downloading", "rolledback"}, 0
	o.IDPrefix = "fw-again"
	if res, err := Run(context.Background(), h, o); !errors.Is(err, ErrOverridden) || res.Counts.Overridden != 1 || res.Counts.Failed != 0 {
		t.Errorf("held device rolled back on the other version: %v, counts %+v, want 1 overridden, 0 failed", err, res.Counts)
	}
	// A failed device elsewhere in the campaign wins over the overridden one.
	h2 := newFakeHub(2, "1.0.0")
	h2.overridden, h2.overrider = map[string]bool{"sim-002": true}, "hold-1-5"
	h2.twins["sim-002"]["properties"].(map[string]any)["desired"] = map[string]any{"firmware": map[string]any{"fwVersion": "1.5.0"}}
	h2.scripts["sim-001"] = []string{"downloading", "rolledback"}
	o.IDPrefix = "fw-two"
	if _, err := Run(context.Background(), h2, o); !errors.Is(err, ErrSomeFailed) {
		t.Errorf("failed and overridden devices: %v, want ErrSomeFailed", err)
	}
}

func TestOverriddenBy(t *testing.T) {
	st := func(s string) iothub.TwinConfiguration { return iothub.TwinConfiguration{Status: s} }
	for _, c := range []struct {
		cfgs map[string]iothub.TwinConfiguration
		want string
	}{
		{nil, ""}, // the hub has not evaluated the configuration yet
		{map[string]iothub.TwinConfiguration{"w1": st(iothub.ConfigurationApplied)}, ""},
		{map[string]iothub.TwinConfiguration{"w1": st(iothub.ConfigurationApplied), "old": st(iothub.ConfigurationTargeted)}, ""},
		{map[string]iothub.TwinConfiguration{"w1": st(iothub.ConfigurationTargeted), "hold": st(iothub.ConfigurationApplied)}, "hold"},
		{map[string]iothub.TwinConfiguration{"w1": st(iothub.ConfigurationTargeted)}, ""}, // nothing applies: not decided
		{map[string]iothub.TwinConfiguration{"w1": st("targeted"), "hold": st("applied")}, "hold"},
	} {
		if got := overriddenBy(c.cfgs, "w1"); got != c.want {
			t.Errorf("overriddenBy(%v) = %q, want %q", c.cfgs, got, c.want)
		}
	}
}
