package main

import (
	"fmt"
	"strings"
	"time"
)

// scaleTargets are issue 18's goals: the method path near the wire's floor,
// throughput at concurrency 64, memory per connection on both sides, and
// the hub's exit on SIGTERM with the ceiling fleet connected.
func (r *results) scaleTargets() []goal {
	var g []goal
	a, okA := r.latency("a")
	b, okB := r.latency("b")
	if okA && okB {
		ratio := float64(a.P50) / float64(b.P50)
		g = append(g, goal{"(a) p50 ≤ 1.5× the floor (b)", fmt.Sprintf("%s / %s = %.2f×", ms(a.P50), ms(b.P50), ratio), yesNo(ratio <= 1.5)})
	} else {
		g = append(g, goal{"(a) p50 ≤ 1.5× the floor (b)", "not measured", "-"})
	}
	if okA {
		g = append(g, goal{"(a) p99 under 1 ms", ms(a.P99), yesNo(a.P99 < time.Millisecond)})
	}
	var def float64
	found := false
	for _, t := range r.Throughput {
		if t.Concurrency == 64 && strings.Contains(t.Client, "default") {
			def, found = t.PerSec, true
		}
	}
	if found {
		g = append(g, goal{"≥ 25,000 invocations/s at concurrency 64 (default client)", fmt.Sprintf("%.0f/s", def), yesNo(def >= 25000)})
	} else {
		g = append(g, goal{"≥ 25,000 invocations/s at concurrency 64 (default client)", "not measured at concurrency 64", "-"})
	}
	// Memory per connection: the largest single-process dmctl line (idle
	// connections, one second after the last connect).
	var big *scaleRow
	for i, s := range r.Scale {
		if strings.HasPrefix(s.Impl, "dmctl") && s.Processes <= 1 && (big == nil || s.Devices > big.Devices) {
			big = &r.Scale[i]
		}
	}
	if big != nil {
		g = append(g, goal{"hub ≤ 32 KiB per idle device connection", fmt.Sprintf("%s at %d connections", kib(big.hubPerConn()), big.Devices), yesNo(big.hubPerConn() <= 32*1024)})
		g = append(g, goal{"simulated device ≤ 20 KiB", fmt.Sprintf("%s at %d devices in one process", kib(big.perDevice()), big.Devices), yesNo(big.perDevice() <= 20*1024)})
	} else {
		g = append(g, goal{"hub ≤ 32 KiB per idle device connection", "not measured", "-"}, goal{"simulated device ≤ 20 KiB", "not measured", "-"})
	}
	if len(r.Shutdown) > 0 {
		s := r.Shutdown[len(r.Shutdown)-1]
		measured := fmt.Sprintf("%s with %d connections", ms(s.Exit), s.Connections)
		if s.Exit == 0 {
			measured = s.Detail
		}
		g = append(g, goal{"hub exits within 2 s of SIGTERM at the ceiling", measured, yesNo(s.Exit > 0 && s.Exit <= 2*time.Second)})
	} else {
		g = append(g, goal{"hub exits within 2 s of SIGTERM at the ceiling", "not measured", "-"})
	}
	return g
}

// scaleMarkdown adds to section 3 the ceiling found and the hub's
// shutdown with the ceiling fleet connected.
func (r *results) scaleMarkdown(w func(string, ...any)) {
	if r.Ceiling != nil {
		w("\n**Ceiling: %d devices**, set by %s. The lines marked ceiling run that fleet from one process and from several (`--processes`); RSS is then the sum of the supervising process and its children.\n", r.Ceiling.Devices, r.Ceiling.Why)
	}
	if len(r.Shutdown) == 0 {
		return
	}
	w("\n### Hub shutdown with the fleet connected\n\n")
	w("SIGTERM to `dmctl hub serve` holding the connections of the single-process ceiling line; then a new hub on the same port and data folder, and the time from SIGTERM until the hub's registry shows every device connected again (the devices reconnect with their backoff and the fleet's connect rate).\n\n")
	w("| connections | SIGTERM to exit | every device back on a new hub | |\n| ---: | ---: | ---: | --- |\n")
	for _, s := range r.Shutdown {
		back := "-"
		if s.Back > 0 {
			back = secs(s.Back)
		}
		exit := "-"
		if s.Exit > 0 {
			exit = ms(s.Exit)
		}
		w("| %d | %s | %s (%d back) | %s |\n", s.Connections, exit, back, s.BackCount, s.Detail)
	}
}
