package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/dmctl/dmctl/internal/soak"
)

// soakSection runs section 6: a bounded soak against a `dmctl hub serve`
// process that is SIGKILLed and restarted half-way (see internal/soak).
func soakSection(ctx context.Context, cfg *config, res *results, bin string) {
	if cfg.SoakDevices == 0 || cfg.SoakTime <= 0 {
		res.note("soak skipped (-soak-devices 0 or -soak-time 0)")
		return
	}
	dir, err := dataDir(cfg, "soak")
	if err != nil {
		res.note("soak skipped: %v", err)
		return
	}
	sc := soakConfig(cfg, bin, dir)
	cfg.progress("soak: %d devices for %s, hub SIGKILL at %s", sc.Devices, sc.Duration, sc.Duration/2)
	rep, err := soak.Run(ctx, sc)
	if err != nil {
		res.note("soak failed: %v", err)
		return
	}
	res.Soak = rep
}

// soakConfig is the soak the bench runs: per-minute intervals (or a
// quarter of a shorter run), the package's default rates.
func soakConfig(cfg *config, bin, dir string) soak.Config {
	iv, every := time.Minute, time.Second
	if cfg.SoakTime < 2*time.Minute {
		iv, every = cfg.SoakTime/4, cfg.SoakTime/40
	}
	return soak.Config{
		Bin:         bin,
		WorkDir:     filepath.Join(dir, "work"),
		Devices:     cfg.SoakDevices,
		Duration:    cfg.SoakTime,
		Interval:    iv,
		SampleEvery: every,
		ConnectRate: float64(cfg.ConnectRate),
		Log:         cfg.Log,
		Progress:    cfg.progress,
	}
}

func (r *results) soakGoal() goal {
	const what = "soak: 0 lost acknowledged writes, every device back after a hub SIGKILL, hub RSS levels off"
	if r.Soak == nil {
		return goal{what, "not measured", "-"}
	}
	s := r.Soak
	judged := 0
	for _, p := range s.RSS.Processes {
		if p.Judged {
			judged++
		}
	}
	verdict := "levels off"
	switch {
	case !s.RSS.OK:
		verdict = "grows"
	case judged == 0:
		verdict = "not judged (too few samples)"
	}
	ok := s.LostAcked == 0 && s.Unexpected == 0 && s.Reconnected == s.Devices && s.RSS.OK && judged > 0
	return goal{what, fmt.Sprintf("%d devices, %s: %d of %d acknowledged writes lost, %d/%d reconnected, RSS %s",
		s.Devices, s.Duration, s.LostAcked, s.AckedWrites, s.Reconnected, s.Devices, verdict), yesNo(ok)}
}

func (r *results) soakMarkdown(w func(string, ...any)) {
	w("\n## 6. Soak\n\n")
	if r.Soak == nil {
		w("Not run (see the notes).\n")
		return
	}
	c := r.Soak.Config
	w("`dmctl hub serve` as a separate process; %d dmctl devices (device/mqtt, one process: the bench) and one service client. "+
		"For %s: direct-method calls at %g/s to random devices (each answers with the payload it got), desired-property patches by the service at %g/s "+
		"(one at a time per device) and reported-property patches by the devices at %g/s (at most one waiting per device), "+
		"each writing key `soak{seq mod %d}` = a rising sequence number. Half-way the hub is SIGKILLed and restarted at once on the same data folder and port; "+
		"the devices reconnect on their own (backoff capped at %s, connects at %g/s). After the load the hub is SIGKILLed and restarted once more and every twin is read back: "+
		"an acknowledged write (200 to the desired PATCH, 204 twin response to the reported patch) is lost when its key holds an older number or nothing.\n\n",
		r.Soak.Devices, c.Duration, c.MethodRate, c.DesiredRate, c.ReportedRate, soak.Keys, c.MaxBackoff, c.ConnectRate)
	w("%s", r.Soak.Markdown())
	w("\nHub RSS is VmRSS from /proc/<pid>/status every %s. Level-off rule, for each hub process (before the kill, after the restart): the highest sample of the last third of its life is at most the highest of its middle third × %.1f + %d MiB; the first third (connects, the twin reads after a restart) is not judged.\n",
		c.SampleEvery, soak.RSSGrowthFactor, soak.RSSGrowthSlack>>20)
}
