package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/internal/browser"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestSmoke runs every measurement of the benchmark with tiny sizes, so the
// benchmark cannot rot. It asserts only that each measurement produced
// numbers and that the report renders, never how fast anything was.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts hubs, device fleets and Node processes")
	}
	cfg := config{
		NodeScale:   3,
		SoakDevices: 20,
		// FirmwareDevices is the campaign's fleet; 20 devices take about
		// three seconds (reboot delay 1 s, one poll interval).
		FirmwareDevices: 20,
		FirmwareWaves:   "10%,100%",
		// DashboardDevices: Chromium on the Devices page while 5 devices
		// reboot (a second or two).
		DashboardDevices: 5,
		// AnatomyDevices: 200 idle connections, each side measured alone
		// (fewer would drown in the runtime's own variation: stacks are
		// reserved in spans shared with goroutines that come and go).
		AnatomyDevices: 200,
		// The ceiling fleet: smoke() plans it with a tiny open-file limit
		// (6 devices), in one process and over 2.
		CeilingMax:  100000,
		Shards:      2,
		ConnectRate: 1000,
		AliasAddr:   "127.0.0.2:443",
		DataDir:     t.TempDir(),
		Command:     "go test ./bench -run TestSmoke",
		Smoke:       true,
	}
	cfg.smoke()
	if os.Geteuid() != 0 {
		cfg.AliasAddr = "" // port 443 needs root
	}
	cfg.Node, cfg.SkipNodeMsg = findNode()
	if cfg.Node == "" {
		t.Logf("Node peers skipped: %s", cfg.SkipNodeMsg)
	}
	// Its own deadline, well inside go test's 10 minutes: a hung peer fails
	// the test with what it was doing, not with a panic dump.
	const budget = 5 * time.Minute
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	defer cancel()
	res, err := run(ctx, &cfg)
	if ctx.Err() != nil {
		t.Fatalf("the smoke run did not finish within %v: %v", budget, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Notes {
		t.Log("note:", n)
	}

	want := []string{"a", "b", "b2", "b3"}
	if cfg.Node != "" {
		want = append(want, "c")
	}
	for _, k := range want {
		l, ok := res.latency(k)
		if !ok {
			t.Errorf("latency %s: no measurement (%+v)", k, res.Latency)
			continue
		}
		if l.N != cfg.Calls || l.P50 <= 0 || l.P99 < l.P50 || l.Mean <= 0 {
			t.Errorf("latency %s: implausible summary %+v", k, l.summary)
		}
	}
	if len(res.Throughput) != 2*len(cfg.Concurrency) {
		t.Errorf("throughput: %d rows, want %d", len(res.Throughput), 2*len(cfg.Concurrency))
	}
	for _, r := range res.Throughput {
		if r.Calls <= 0 || r.PerSec <= 0 {
			t.Errorf("throughput: no calls in %+v", r)
		}
	}
	impls := map[string]bool{}
	for _, s := range res.Scale {
		impls[strings.Fields(s.Impl)[0]] = true
		if s.Devices <= 0 || s.Connect <= 0 || s.RSS <= 0 || s.HubAfter <= 0 {
			t.Errorf("scale: missing figures in %+v", s)
		}
	}
	if !impls["dmctl"] || (cfg.Node != "" && !impls["official"]) {
		t.Errorf("scale: rows for %v", impls)
	}
	if res.Ceiling == nil || res.Ceiling.Devices != 6 {
		t.Errorf("ceiling: %+v, want 6 devices (the smoke run's open-file limit)", res.Ceiling)
	} else {
		var single, sharded bool
		for _, s := range res.Scale {
			single = single || (s.Ceiling && s.Processes == 1)
			sharded = sharded || (s.Ceiling && s.Processes == 2 && strings.Contains(s.Impl, "--processes 2"))
		}
		if !single || !sharded {
			t.Errorf("ceiling lines: one process %v, two processes %v, in %+v", single, sharded, res.Scale)
		}
	}
	if len(res.Anatomy) != 2 {
		t.Errorf("anatomy: %+v, want a hub row and a device row", res.Anatomy)
	}
	for _, a := range res.Anatomy {
		t.Logf("anatomy: %+v", a)
		// Every connection holds goroutines and stack on both sides.
		if a.Err != "" || a.Conns != cfg.AnatomyDevices || a.Goroutines < 1 || a.Stacks <= 0 || a.Heap <= 0 || a.Spans <= 0 {
			t.Errorf("anatomy: implausible %+v", a)
		}
	}
	if len(res.Shutdown) != 1 || res.Shutdown[0].Exit <= 0 || res.Shutdown[0].BackCount != 6 || res.Shutdown[0].Back < res.Shutdown[0].Exit {
		t.Errorf("shutdown: %+v, want the hub's exit timed and all 6 devices back on the new hub", res.Shutdown)
	}
	if len(res.Fleet) != 1 || res.Fleet[0].Confirmed != cfg.Fleet[0] || res.Fleet[0].Wall <= 0 {
		t.Errorf("fleet: %+v, want %d devices confirmed", res.Fleet, cfg.Fleet[0])
	}
	wantCLI := 1
	if cfg.Node != "" && cfg.AliasAddr != "" {
		wantCLI = 2
	}
	if len(res.CLI) != wantCLI {
		t.Errorf("cli: %d rows, want %d", len(res.CLI), wantCLI)
	}
	for _, c := range res.CLI {
		if c.Runs != cfg.CLIRuns || c.Median <= 0 {
			t.Errorf("cli: %+v", c)
		}
	}

	if s := res.Soak; s == nil {
		t.Error("soak: not run")
	} else if s.AckedWrites == 0 || s.LostAcked != 0 || s.Reconnected != s.Devices || s.Total.Calls == 0 {
		t.Errorf("soak: %d acknowledged writes, %d lost, %d/%d devices reconnected, %d calls; want some writes, none lost, all back, some calls",
			s.AckedWrites, s.LostAcked, s.Reconnected, s.Devices, s.Total.Calls)
	}

	if f := res.Firmware; f == nil {
		t.Error("firmware campaign: not run")
	} else if f.Devices != cfg.FirmwareDevices || f.Current != f.Devices || f.Failed+f.Pending != 0 || f.Planned != 2 ||
		f.Wall <= 0 || f.Stamped != f.Devices || f.Slowest <= 0 || f.Slowest > f.Wall || f.SlowUpd < fwRebootDelay || f.HubRSS <= 0 {
		t.Errorf("firmware campaign: want %d devices all current in 2 waves with their update times and the hub's RSS, got %+v", cfg.FirmwareDevices, *f)
	}

	if _, err := browser.Find(); err != nil {
		t.Logf("dashboard section not checked: %v", err)
	} else if d := res.Dashboard; d == nil {
		t.Error("dashboard section: not run")
	} else if d.Devices != cfg.DashboardDevices || d.Confirmed != d.Devices || d.HubEvents == 0 || !d.Caught || d.Received+d.Lost < int64(d.HubEvents) {
		t.Errorf("dashboard section: want %d devices confirmed and the page caught up with the hub's events, got %+v", cfg.DashboardDevices, *d)
	}

	md := res.Markdown(&cfg)
	for _, s := range []string{"# dmctl benchmarks", "## Goals", "## 1. Direct-method round trip", "## 2. Throughput",
		"## 3. Scale and memory", "## 4. Fleet reboot", "## 5. CLI", "## 6. Soak", "## 7. Firmware campaign",
		"## 8. Dashboard under a fleet reboot", "| (a) dmctl service", "10,000-device firmware campaign", res.Env.Go} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	if strings.Contains(md, "SharedAccessKey=") || strings.Contains(md, "sig=") {
		t.Error("report contains a secret")
	}
	// A report read back as a baseline gives the same goals (its figures
	// are rounded: the measured texts may differ in the last digit), shown
	// next to this run's.
	path := t.TempDir() + "/before.md"
	if err := os.WriteFile(path, []byte(md), 0o600); err != nil {
		t.Fatal(err)
	}
	base, err := readBaseline(path)
	if err != nil {
		t.Fatal(err)
	}
	now := append(res.goals(), res.scaleTargets()...)
	then := append(base.goals(), base.scaleTargets()...)
	for i := range now {
		if now[i].What != then[i].What || now[i].Met != then[i].Met || (now[i].Measured == "not measured") != (then[i].Measured == "not measured") {
			t.Errorf("goal read back from the report: %+v, want %+v", then[i], now[i])
		}
	}
	withBase := cfg
	withBase.Baseline, withBase.baseline = path, base
	md2 := res.Markdown(&withBase)
	if !strings.Contains(md2, "| goal | before | measured | met |") {
		t.Error("report with -baseline has no before column")
	}
	if strings.Contains(md2, "The floor (b) took") {
		t.Error("a baseline with the same floor: the report says the floor moved")
	}
	// A baseline whose floor was half as fast: the report says the machine moved.
	for i := range base.Latency {
		if base.Latency[i].Key == "b" {
			base.Latency[i].P50 *= 2
		}
	}
	if md3 := res.Markdown(&withBase); !strings.Contains(md3, "this machine ran faster than the baseline's") {
		t.Errorf("a baseline with twice the floor: the report does not say the floor moved:\n%s", md3[:min(len(md3), 3000)])
	}
	// -firmware-only renders section 7 and its goal alone.
	only := cfg
	only.FirmwareOnly = true
	md1 := res.Markdown(&only)
	if !strings.Contains(md1, "## 7. Firmware campaign") || !strings.Contains(md1, "10,000-device firmware campaign") ||
		strings.Contains(md1, "## 1. ") || strings.Contains(md1, "## 6. Soak") {
		t.Errorf("-firmware-only report: want section 7 and its goal only, got\n%s", md1)
	}
	// The report prints both times and the run's length from them.
	if res.Started.IsZero() || !res.Finished.After(res.Started) || res.Finished.After(time.Now()) {
		t.Errorf("report times: started %v, finished %v", res.Started, res.Finished)
	}
}

// TestConfigCheck: flag combinations the run cannot honour are refused with
// the flag named.
func TestConfigCheck(t *testing.T) {
	ok := config{FirmwareDevices: 10000, FirmwareWaves: "10%,100%"}
	if err := ok.check(); err != nil {
		t.Fatalf("valid flags refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*config)
		want string
	}{
		{"both only flags", func(c *config) { c.SoakOnly, c.FirmwareOnly = true, true }, "-soak-only and -firmware-only"},
		{"negative devices", func(c *config) { c.FirmwareDevices = -1 }, "-firmware-devices -1"},
		{"bad waves", func(c *config) { c.FirmwareWaves = "ten" }, "-firmware-waves \"ten\""},
		{"no waves", func(c *config) { c.FirmwareWaves = "" }, "-firmware-waves"},
		{"dashboard and soak only", func(c *config) { c.DashboardOnly, c.SoakOnly = true, true }, "-dashboard-only excludes"},
		{"negative dashboard devices", func(c *config) { c.DashboardDevices = -1 }, "-dashboard-devices -1"},
		{"negative ceiling", func(c *config) { c.CeilingMax = -1 }, "-ceiling-max -1"},
		{"one shard", func(c *config) { c.CeilingMax, c.Shards = 10, 1 }, "-shards 1"},
	} {
		c := ok
		tc.mod(&c)
		err := c.check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
}
