package soak

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// binEnv names a prebuilt dmctl binary to run as the hub instead of
// building one.
const binEnv = "DMCTL_SOAK_BIN"

func buildDmctl(ctx context.Context, t *testing.T) string {
	t.Helper()
	if p := os.Getenv(binEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", binEnv, err)
		}
		return p
	}
	bin := filepath.Join(t.TempDir(), "dmctl")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/dmctl/dmctl").CombinedOutput()
	if err != nil {
		t.Fatalf("go build github.com/dmctl/dmctl: %v\n%s", err, out)
	}
	return bin
}

// TestShortSoak is the benchmark's soak in small: 150 devices under
// sustained method calls and twin patches for 16 s, the hub SIGKILLed and
// restarted after 7 s. Every acknowledged write must be read back, every
// device must reconnect, the load must be served again after the restart,
// and the hub's RSS must level off by the package's rule.
func TestShortSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a hub process and 150 devices for about 20 s")
	}
	// Its own deadline, well inside go test's: a hung hub or device fails
	// the test with what it was doing.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	bin := buildDmctl(ctx, t)

	cfg := Config{
		Bin:              bin,
		WorkDir:          t.TempDir(),
		Devices:          150,
		Duration:         16 * time.Second,
		KillAt:           7 * time.Second,
		Interval:         4 * time.Second,
		MethodRate:       60,
		DesiredRate:      30,
		ReportedRate:     60,
		Workers:          8,
		MaxBackoff:       2 * time.Second,
		SampleEvery:      200 * time.Millisecond,
		ReconnectTimeout: 20 * time.Second,
		Log:              zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel),
		Progress:         t.Logf,
	}
	start := time.Now()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("soak took %s:\n%s", time.Since(start).Round(time.Millisecond), rep.Markdown())

	if rep.LostAcked != 0 {
		t.Errorf("%d of %d acknowledged writes are not in the twins read back", rep.LostAcked, rep.AckedWrites)
	}
	if rep.Unexpected != 0 {
		t.Errorf("%d twin values were never sent by any patch", rep.Unexpected)
	}
	if rep.Reconnected != cfg.Devices {
		t.Errorf("%d of %d devices reconnected after the restart", rep.Reconnected, cfg.Devices)
	}
	if !rep.RSS.OK {
		t.Errorf("hub RSS does not level off: %+v", rep.RSS.Processes)
	}
	if len(rep.RSS.Processes) != 2 {
		t.Errorf("RSS sampled for %d hub processes, want 2 (before the kill and after the restart)", len(rep.RSS.Processes))
	}

	// The load was carried out on both sides of the kill: the first
	// interval (before it) and the last (after the restart, once the devices
	// are back) each have acknowledged writes of both kinds and answered
	// method calls.
	if len(rep.Intervals) != 4 {
		t.Fatalf("%d intervals, want 4", len(rep.Intervals))
	}
	for _, i := range []int{0, len(rep.Intervals) - 1} {
		iv := rep.Intervals[i]
		if iv.DesiredAcked == 0 || iv.ReportedAcked == 0 || iv.Calls-iv.CallsFailed == 0 {
			t.Errorf("interval %s–%s: %d desired and %d reported patches acknowledged, %d of %d method calls answered; want some of each",
				iv.Start, iv.End, iv.DesiredAcked, iv.ReportedAcked, iv.Calls-iv.CallsFailed, iv.Calls)
		}
		if iv.HubRSSMax == 0 {
			t.Errorf("interval %s–%s: no RSS sample", iv.Start, iv.End)
		}
	}
	// Before the kill nothing fails.
	if iv := rep.Intervals[0]; iv.CallsFailed != 0 || iv.DesiredFailed != 0 {
		t.Errorf("first interval, before the kill: %d method calls and %d desired patches failed: %s", iv.CallsFailed, iv.DesiredFailed, failures(iv.Failures))
	}
	if !rep.Intervals[1].HubKilled {
		t.Errorf("the kill at %s is not marked in interval 2", rep.KilledAt)
	}
	if rep.Total.Reconnects < cfg.Devices {
		t.Errorf("%d reconnects counted, want at least %d (every device once)", rep.Total.Reconnects, cfg.Devices)
	}
	md := rep.Markdown()
	for _, s := range []string{"| interval |", "**total**", "hub SIGKILLed and restarted", "levels off"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	if strings.Contains(md, "SharedAccessKey") || strings.Contains(md, "sig=") {
		t.Error("report contains a secret")
	}
}
