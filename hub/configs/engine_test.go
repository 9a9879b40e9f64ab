package configs

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	t  *testing.T
	st *store.Store
	e  *Engine

	mu      sync.Mutex
	patches map[string][]string // device -> desired patches pushed
}

func newFixture(t *testing.T, devices ...string) *fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "hub.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f := &fixture{t: t, st: st, e: New(Config{Store: st}), patches: map[string][]string{}}
	st.OnDesired(func(id string, _ int64, patch []byte) {
		f.mu.Lock()
		f.patches[id] = append(f.patches[id], string(patch))
		f.mu.Unlock()
	})
	for _, d := range devices {
		if _, err := st.CreateDevice(iothub.Device{DeviceID: d}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) tag(id, group string) {
	f.t.Helper()
	if _, _, err := f.st.PatchTwin(id, iothub.Twin{Tags: map[string]any{"group": group}}, ""); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) create(id string, prio int, cond, version string, metrics map[string]string) {
	f.t.Helper()
	c := iothub.Configuration{ID: id, Priority: prio, TargetCondition: cond,
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{
			"properties.desired.firmware": map[string]any{"fwVersion": version},
		}}}
	if metrics != nil {
		c.Metrics = &iothub.ConfigurationMetrics{Queries: metrics}
	}
	if err := Check(c); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.st.CreateConfiguration(c); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) tick() TickStats {
	f.t.Helper()
	st, err := f.e.Tick(context.Background())
	if err != nil {
		f.t.Fatalf("tick: %v", err)
	}
	return st
}

func (f *fixture) twin(id string) iothub.Twin {
	f.t.Helper()
	tw, err := f.st.Twin(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return tw
}

func fwVersion(tw iothub.Twin) any {
	fw, _ := tw.Properties.Desired["firmware"].(map[string]any)
	return fw["fwVersion"]
}

func (f *fixture) pushed(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.patches[id]...)
}

func TestPriorityAndTieRule(t *testing.T) {
	f := newFixture(t, "a1", "a2", "b1")
	f.tag("a1", "a")
	f.tag("a2", "a")
	f.tag("b1", "b")
	f.create("base", 1, "*", "1.0", nil)
	f.create("group-a", 5, "tags.group = 'a'", "2.0", nil)
	f.create("group-a-later", 5, "tags.group = 'a'", "3.0", nil)
	f.tick()
	for id, want := range map[string]string{"a1": "3.0", "a2": "3.0", "b1": "1.0"} {
		tw := f.twin(id)
		if fwVersion(tw) != want {
			t.Errorf("%s: desired fwVersion %v, want %s", id, fwVersion(tw), want)
		}
	}
	a1 := f.twin("a1").Configurations
	want := map[string]iothub.TwinConfiguration{
		"base":          {Status: iothub.ConfigurationTargeted},
		"group-a":       {Status: iothub.ConfigurationTargeted},
		"group-a-later": {Status: iothub.ConfigurationApplied},
	}
	if fmt.Sprint(a1) != fmt.Sprint(want) {
		t.Errorf("a1 configurations %v, want %v", a1, want)
	}
	for id, wantTA := range map[string][2]int64{"base": {3, 1}, "group-a": {2, 0}, "group-a-later": {2, 2}} {
		c, err := f.st.Configuration(id)
		if err != nil {
			t.Fatal(err)
		}
		r := c.SystemMetrics.Results
		if r[iothub.MetricTargetedCount] != wantTA[0] || r[iothub.MetricAppliedCount] != wantTA[1] {
			t.Errorf("%s: system metrics %v, want targeted %d applied %d", id, r, wantTA[0], wantTA[1])
		}
	}
	// One desired patch per device, and none on the next pass.
	if p := f.pushed("a1"); len(p) != 1 || p[0] != `{"$version":2,"firmware":{"fwVersion":"3.0"}}` {
		t.Errorf("a1 received %q", p)
	}
	if st := f.tick(); st.Updated != 0 {
		t.Errorf("second pass updated %d twins, want 0", st.Updated)
	}
	if p := f.pushed("a1"); len(p) != 1 {
		t.Errorf("a1 re-patched: %q", p)
	}
}

func TestMetricsAndQueryableStatus(t *testing.T) {
	f := newFixture(t, "d1", "d2", "d3")
	if _, err := f.st.PatchReported("d2", []byte(`{"firmware":{"fwUpdateStatus":"current"}}`)); err != nil {
		t.Fatal(err)
	}
	f.create("fw", 1, "deviceId != 'd3'", "2.0", map[string]string{
		"current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus = 'current'",
		"applied": "SELECT deviceId FROM devices WHERE configurations.[[fw]].status = 'Applied'",
	})
	f.tick()
	c, _ := f.st.Configuration("fw")
	if c.Metrics.Results["current"] != 1 || c.Metrics.Results["applied"] != 2 {
		t.Errorf("custom metrics %v, want current 1 applied 2", c.Metrics.Results)
	}
	// The system metrics' queries count what their results say.
	for name, text := range c.SystemMetrics.Queries {
		q, err := MetricQuery(text)
		if err != nil {
			t.Fatalf("system query %s: %v", name, err)
		}
		n := int64(0)
		_ = f.st.ForEachTwinDoc(func(doc map[string]any) bool {
			if q.Match(doc) {
				n++
			}
			return true
		})
		if n != c.SystemMetrics.Results[name] || n != 2 {
			t.Errorf("system query %s (%s) counts %d, result %d, want 2", name, text, n, c.SystemMetrics.Results[name])
		}
	}
	q, err := query.Parse("SELECT deviceId FROM devices WHERE configurations.[[fw]].status = 'Applied'")
	if err != nil {
		t.Fatal(err)
	}
	var got []any
	_ = f.st.ForEachTwinDoc(func(doc map[string]any) bool {
		if q.Match(doc) {
			got = append(got, doc["deviceId"])
		}
		return true
	})
	if fmt.Sprint(got) != "[d1 d2]" {
		t.Errorf("query on the status found %v, want [d1 d2]", got)
	}
}

func TestDeleteAndLeavingTargetKeepDesired(t *testing.T) {
	f := newFixture(t, "d1", "d2")
	f.tag("d1", "a")
	f.tag("d2", "a")
	f.create("fw", 1, "tags.group = 'a'", "2.0", nil)
	f.tick()
	f.tag("d2", "b")
	f.tick()
	d2 := f.twin("d2")
	if d2.Configurations != nil || fwVersion(d2) != "2.0" {
		t.Errorf("d2 left the target: configurations %v, desired %v (want no status, desired kept)", d2.Configurations, fwVersion(d2))
	}
	c, _ := f.st.Configuration("fw")
	if err := f.st.DeleteConfiguration("fw", c.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.CreateDevice(iothub.Device{DeviceID: "d3"}); err != nil {
		t.Fatal(err)
	}
	f.tag("d3", "a")
	f.tick()
	d1 := f.twin("d1")
	if d1.Configurations != nil || fwVersion(d1) != "2.0" {
		t.Errorf("after delete d1 has configurations %v, desired %v (want none, desired kept)", d1.Configurations, fwVersion(d1))
	}
	if d3 := f.twin("d3"); fwVersion(d3) != nil || d3.Configurations != nil {
		t.Errorf("a deleted configuration was applied to a new device: %+v", d3)
	}
}

// TestIdleSideEvaluatesOnlyConfiguredTwins: with nothing targeting a kind
// of twin, a pass touches only the twins still carrying statuses (to clear
// them) and leaves the rest unread.
func TestIdleSideEvaluatesOnlyConfiguredTwins(t *testing.T) {
	f := newFixture(t, "d1", "d2", "d3")
	if _, err := f.st.CreateModule(iothub.Module{DeviceID: "d1", ModuleID: "m1"}); err != nil {
		t.Fatal(err)
	}
	if st := f.tick(); st.Twins != 0 || st.Updated != 0 {
		t.Fatalf("a pass with no configurations evaluated %d twins, updated %d (want 0, 0)", st.Twins, st.Updated)
	}
	f.tag("d1", "a")
	f.create("fw", 1, "tags.group = 'a'", "2.0", nil)
	mods := iothub.Configuration{ID: "mods", TargetCondition: "moduleId = 'm1'",
		Content: iothub.ConfigurationContent{ModuleContent: map[string]any{"properties.desired.level": 3}}}
	if _, err := f.st.CreateConfiguration(mods); err != nil {
		t.Fatal(err)
	}
	if st := f.tick(); st.Twins != 4 || st.Updated != 2 {
		t.Fatalf("with both configurations a pass evaluated %d twins, updated %d (want 4, 2)", st.Twins, st.Updated)
	}
	for _, id := range []string{"fw", "mods"} {
		c, _ := f.st.Configuration(id)
		if err := f.st.DeleteConfiguration(id, c.ETag); err != nil {
			t.Fatal(err)
		}
	}
	if st := f.tick(); st.Twins != 2 || st.Updated != 2 {
		t.Fatalf("after the deletes a pass evaluated %d twins, updated %d (want the 2 with statuses)", st.Twins, st.Updated)
	}
	if d1 := f.twin("d1"); d1.Configurations != nil || fwVersion(d1) != "2.0" {
		t.Errorf("d1 after delete: configurations %v, desired %v (want none, desired kept)", d1.Configurations, fwVersion(d1))
	}
	if tw, err := f.st.Twin(store.ModuleKey("d1", "m1")); err != nil || tw.Configurations != nil {
		t.Errorf("module twin after delete: configurations %v, err %v (want none)", tw.Configurations, err)
	}
	if st := f.tick(); st.Twins != 0 || st.Updated != 0 {
		t.Errorf("a pass after the statuses were cleared evaluated %d twins, updated %d (want 0, 0)", st.Twins, st.Updated)
	}
}

func TestModuleConfiguration(t *testing.T) {
	f := newFixture(t, "d1")
	if _, err := f.st.CreateModule(iothub.Module{DeviceID: "d1", ModuleID: "m1"}); err != nil {
		t.Fatal(err)
	}
	c := iothub.Configuration{ID: "mods", TargetCondition: "moduleId = 'm1'",
		Content: iothub.ConfigurationContent{ModuleContent: map[string]any{"properties.desired.level": 3}}}
	if _, err := f.st.CreateConfiguration(c); err != nil {
		t.Fatal(err)
	}
	f.tick()
	tw, err := f.st.Twin(store.ModuleKey("d1", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(tw.Properties.Desired["level"]) != "3" || tw.Configurations["mods"].Status != iothub.ConfigurationApplied {
		t.Errorf("module twin: desired %v, configurations %v", tw.Properties.Desired, tw.Configurations)
	}
	if d := f.twin("d1"); d.Configurations != nil {
		t.Errorf("a module configuration marked the device twin: %v", d.Configurations)
	}
}

// TestModuleTargetAsDocumented: IoT Hub's docs and the Azure CLI write a
// module configuration's target as "from devices.modules where COND" (the
// Python SDK's referee test sends it so).
func TestModuleTargetAsDocumented(t *testing.T) {
	for _, cond := range []string{"from devices.modules where moduleId = 'm1'", "FROM devices.modules WHERE moduleId = 'm1'"} {
		q, err := TargetQuery(cond, true)
		if err != nil || q == nil {
			t.Errorf("TargetQuery(%q, modules) = %v", cond, err)
		}
	}
	// The prefix is a module-target form only.
	if _, err := TargetQuery("from devices.modules where moduleId = 'm1'", false); err == nil {
		t.Error("a device target accepted the module prefix")
	}
}

func TestRunAppliesWithinAnInterval(t *testing.T) {
	f := newFixture(t, "d1")
	e := New(Config{Store: f.st, Interval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	f.create("fw", 1, "*", "2.0", nil)
	deadline := time.Now().Add(5 * time.Second)
	for fwVersion(f.twin("d1")) != "2.0" {
		if time.Now().After(deadline) {
			t.Fatal("waited 5 s for the running engine to apply the configuration to d1")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTestQueries(t *testing.T) {
	r := TestQueries(iothub.ConfigurationQueriesTestInput{
		TargetCondition:     "tags.x = = 1",
		CustomMetricQueries: map[string]string{"ok": "SELECT deviceId FROM devices", "bad": "SELEC deviceId", "jobs": "SELECT * FROM devices.jobs"},
	})
	if r.TargetConditionError == "" || r.CustomMetricQueryErrors["bad"] == "" || r.CustomMetricQueryErrors["jobs"] == "" {
		t.Errorf("errors not reported: %+v", r)
	}
	if _, ok := r.CustomMetricQueryErrors["ok"]; ok {
		t.Errorf("a valid metric reported: %+v", r)
	}
	if r := TestQueries(iothub.ConfigurationQueriesTestInput{TargetCondition: "*"}); r.TargetConditionError != "" {
		t.Errorf("* refused: %+v", r)
	}
}

// TestTickAt10000Twins measures one pass over 10,000 device twins: the
// first applies the content to every twin, the next finds nothing to do.
func TestTickAt10000Twins(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 twins")
	}
	f := newFixture(t)
	const n = 10000
	ops := make([]iothub.ExportImportDevice, n)
	for i := range ops {
		ops[i] = iothub.ExportImportDevice{ID: fmt.Sprintf("dev-%05d", i), ImportMode: iothub.ImportCreate}
	}
	if _, err := f.st.Import(ops); err != nil {
		t.Fatal(err)
	}
	f.create("fw", 1, "*", "2.0", map[string]string{
		"applied": "SELECT deviceId FROM devices WHERE configurations.[[fw]].status = 'Applied'",
	})
	first := f.tick()
	second := f.tick()
	third := f.tick()
	t.Logf("10,000 twins: first pass (applies) %v, second %v, third %v", first.Took, second.Took, third.Took)
	c, _ := f.st.Configuration("fw")
	if c.SystemMetrics.Results[iothub.MetricAppliedCount] != n || c.Metrics.Results["applied"] != n || first.Updated != n || third.Updated != 0 {
		t.Fatalf("metrics %v %v, updated %d then %d", c.SystemMetrics.Results, c.Metrics.Results, first.Updated, third.Updated)
	}
}

// TestContentOverTheTwinLimitIsNotApplied: a twin whose desired properties
// would pass 32 KB keeps its state and is not counted as applied.
func TestContentOverTheTwinLimitIsNotApplied(t *testing.T) {
	f := newFixture(t, "d1", "d2")
	big := map[string]any{}
	for i := range 8 {
		big[fmt.Sprintf("blob%d", i)] = strings.Repeat("x", 4000)
	}
	if _, _, err := f.st.PatchTwin("d1", iothub.Twin{Properties: iothub.TwinProperties{Desired: big}}, ""); err != nil {
		t.Fatal(err)
	}
	c := iothub.Configuration{ID: "big", TargetCondition: "*",
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.more": strings.Repeat("y", 4000)}}}
	if _, err := f.st.CreateConfiguration(c); err != nil {
		t.Fatal(err)
	}
	if st := f.tick(); st.Updated != 1 {
		t.Errorf("updated %d twins, want 1 (d2 only)", st.Updated)
	}
	if d1 := f.twin("d1"); d1.Configurations != nil || d1.Properties.Desired["more"] != nil {
		t.Errorf("d1 changed: %v", d1.Configurations)
	}
	got, _ := f.st.Configuration("big")
	if r := got.SystemMetrics.Results; r[iothub.MetricTargetedCount] != 2 || r[iothub.MetricAppliedCount] != 1 {
		t.Errorf("system metrics %v, want targeted 2 applied 1", r)
	}
}
