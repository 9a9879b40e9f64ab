package soak

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Interval is what happened during one reporting interval of the load.
type Interval struct {
	Start, End time.Duration // offsets from the start of the load

	Calls       int // direct-method calls made
	CallsFailed int // of which failed (no answer, or a wrong one)

	Desired       int // desired-property patches sent by the service
	DesiredAcked  int // of which answered 200
	DesiredFailed int // of which failed

	Reported      int // reported-property patches queued by the devices
	ReportedAcked int // patches the hub acknowledged in this interval

	// LostAcked counts the writes acknowledged in this interval that the
	// twins read back at the end do not hold. It must be 0.
	LostAcked int

	Reconnects int // device connects after a device's first one

	// Failures counts failed calls and patches by reason.
	Failures map[string]int

	HubRSSMax int64 // highest hub VmRSS sampled in the interval, bytes (0: no sample)
	HubKilled bool  // the hub was killed and restarted in this interval
}

func (iv *Interval) fail(reason string) {
	if iv.Failures == nil {
		iv.Failures = map[string]int{}
	}
	iv.Failures[reason]++
}

func (iv *Interval) add(o *Interval) {
	iv.Calls += o.Calls
	iv.CallsFailed += o.CallsFailed
	iv.Desired += o.Desired
	iv.DesiredAcked += o.DesiredAcked
	iv.DesiredFailed += o.DesiredFailed
	iv.Reported += o.Reported
	iv.ReportedAcked += o.ReportedAcked
	iv.LostAcked += o.LostAcked
	iv.Reconnects += o.Reconnects
	for r, n := range o.Failures {
		if iv.Failures == nil {
			iv.Failures = map[string]int{}
		}
		iv.Failures[r] += n
	}
	iv.HubRSSMax = max(iv.HubRSSMax, o.HubRSSMax)
	iv.HubKilled = iv.HubKilled || o.HubKilled
}

// Report is the outcome of a soak.
type Report struct {
	Config    Config // as run, defaults filled in
	Devices   int
	Duration  time.Duration // of the load
	Intervals []Interval
	Total     Interval

	ConnectAll time.Duration // registering done to every device connected

	KilledAt time.Duration // offset of the SIGKILL from the start of the load
	HubDown  time.Duration // SIGKILL to the restarted hub listening
	// Reconnected is how many devices connected again after the kill;
	// ReconnectAll is the restart to the last of them.
	Reconnected  int
	ReconnectAll time.Duration

	// AckedWrites is every acknowledged desired and reported patch;
	// LostAcked those the twins read back at the end (from a hub killed
	// and restarted once more after the load) do not hold.
	AckedWrites int
	LostAcked   int
	// Unexpected counts twin values that no patch ever sent: must be 0.
	Unexpected int
	// Unacked counts reported patches still waiting for the hub's answer
	// when the load ended and the drain gave up (they may or may not be
	// stored).
	Unacked int

	RSS RSSCheck
}

// RSS rule: for each hub process that served load (the first one and the
// one restarted after the kill), its VmRSS samples are split into thirds
// by time; the process levels off when the highest sample of the last
// third is at most the highest of the middle third × RSSGrowthFactor +
// RSSGrowthSlack. The first third (connects, twin reads after a restart)
// is not judged.
const (
	RSSGrowthFactor = 1.2
	RSSGrowthSlack  = 16 << 20
)

// RSSCheck is the level-off rule applied to each hub process.
type RSSCheck struct {
	Processes []RSSProcess
	OK        bool // every judged process levelled off
}

// RSSProcess is the rule applied to one hub process.
type RSSProcess struct {
	Samples   int
	MiddleMax int64
	LastMax   int64
	Limit     int64 // MiddleMax × RSSGrowthFactor + RSSGrowthSlack
	Judged    bool  // enough samples (at least 3)
	OK        bool
}

type rssSample struct {
	at  time.Duration
	rss int64
}

func checkRSS(procs [][]rssSample) RSSCheck {
	c := RSSCheck{OK: true}
	for _, s := range procs {
		p := RSSProcess{Samples: len(s)}
		if len(s) >= 3 {
			p.Judged = true
			from, to := s[0].at, s[len(s)-1].at
			third := (to - from) / 3
			for _, x := range s {
				switch {
				case x.at >= from+2*third:
					p.LastMax = max(p.LastMax, x.rss)
				case x.at >= from+third:
					p.MiddleMax = max(p.MiddleMax, x.rss)
				}
			}
			p.Limit = int64(float64(p.MiddleMax)*RSSGrowthFactor) + RSSGrowthSlack
			p.OK = p.MiddleMax > 0 && p.LastMax <= p.Limit
			c.OK = c.OK && p.OK
		}
		c.Processes = append(c.Processes, p)
	}
	return c
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// failures renders failure counts as "reason n, reason n", most first.
func failures(m map[string]int) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, "; ")
}

// Markdown renders the per-interval table and the checks.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("| interval | method calls | failed | desired patches | acked | failed | reported patches | acked | lost acked writes | reconnects | hub RSS (max) | |\n")
	w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	row := func(name string, iv Interval) {
		note := ""
		if iv.HubKilled {
			note = "hub SIGKILLed and restarted"
		}
		rssText := "-"
		if iv.HubRSSMax > 0 {
			rssText = mib(iv.HubRSSMax)
		}
		w("| %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %s | %s |\n", name, iv.Calls, iv.CallsFailed,
			iv.Desired, iv.DesiredAcked, iv.DesiredFailed, iv.Reported, iv.ReportedAcked, iv.LostAcked,
			iv.Reconnects, rssText, note)
	}
	for _, iv := range r.Intervals {
		row(fmt.Sprintf("%s–%s", short(iv.Start), short(iv.End)), iv)
	}
	row("**total**", r.Total)
	w("\n")
	if len(r.Total.Failures) > 0 {
		w("Failures by reason: %s.\n\n", failures(r.Total.Failures))
	} else {
		w("Failures by reason: none.\n\n")
	}
	w("- %d devices connected in %s before the load started.\n", r.Devices, short(r.ConnectAll))
	w("- Hub SIGKILLed at %s and restarted on the same data folder and port after %s; %d of %d devices reconnected, the last %s after the restart.\n",
		short(r.KilledAt), short(r.HubDown), r.Reconnected, r.Devices, short(r.ReconnectAll))
	w("- Acknowledged writes (desired patches answered 200, reported patches answered 204): %d; lost (not in the twins read back after one more SIGKILL and restart): **%d**; twin values no patch sent: %d; reported patches still unanswered when the drain gave up: %d.\n",
		r.AckedWrites, r.LostAcked, r.Unexpected, r.Unacked)
	for i, p := range r.RSS.Processes {
		name := "before the kill"
		if i > 0 {
			name = "after the restart"
		}
		if !p.Judged {
			w("- Hub RSS %s: %d samples, too few to judge.\n", name, p.Samples)
			continue
		}
		verdict := "levels off"
		if !p.OK {
			verdict = "**grows**"
		}
		w("- Hub RSS %s (%d samples): last third max %s, middle third max %s, limit %s: %s.\n",
			name, p.Samples, mib(p.LastMax), mib(p.MiddleMax), mib(p.Limit), verdict)
	}
	return b.String()
}

// short renders a duration to a tenth of a second.
func short(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}
