package rollout

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Step is one step of a staged-rollout plan: the cumulative share of the
// devices rebooted once its wave is done, as a percentage of the device set
// (Percent > 0) or as an absolute device count (Count > 0).
type Step struct {
	Percent float64 // 0 < Percent <= 100
	Count   int
}

func (w Step) String() string {
	if w.Percent > 0 {
		return strconv.FormatFloat(w.Percent, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(w.Count)
}

// ParseWaves reads a staged-rollout plan: comma-separated cumulative steps,
// each a percentage of the device set ("1%,10%,100%") or an absolute device
// count ("1,10,100"); the two may be mixed ("1,10%,100%"). Steps of the same
// kind must increase. See WaveSizes for how they apply to a device set.
func ParseWaves(s string) ([]Step, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("no waves given")
	}
	var out []Step
	var lastPct float64
	var lastCount int
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("wave %d is empty", i+1)
		}
		if p, ok := strings.CutSuffix(f, "%"); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
			if err != nil || math.IsNaN(v) || v <= 0 || v > 100 {
				return nil, fmt.Errorf("wave %d (%q): a percentage must be a number above 0 and at most 100", i+1, f)
			}
			if v <= lastPct {
				return nil, fmt.Errorf("wave %d (%q): waves are cumulative, so each percentage must be larger than the one before", i+1, f)
			}
			lastPct = v
			out = append(out, Step{Percent: v})
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("wave %d (%q): use a device count above 0 or a percentage such as 10%%", i+1, f)
		}
		if n <= lastCount {
			return nil, fmt.Errorf("wave %d (%q): waves are cumulative, so each count must be larger than the one before", i+1, f)
		}
		lastCount = n
		out = append(out, Step{Count: n})
	}
	return out, nil
}

// WaveSizes applies a plan to n devices and returns the size of each wave
// (not cumulative), summing to n. A percentage step covers
// ceil(Percent × n / 100) devices (at least 1), a count step min(Count, n);
// steps that cover no more devices than the steps before them are dropped,
// and when the last step covers fewer than n devices a final wave takes the
// rest. No plan means one wave of all n devices.
func WaveSizes(plan []Step, n int) []int {
	if n <= 0 {
		return nil
	}
	var sizes []int
	done := 0
	for _, w := range plan {
		var upto int
		if w.Percent > 0 {
			upto = int(math.Ceil(w.Percent*float64(n)/100 - 1e-9))
		} else {
			upto = w.Count
		}
		upto = min(max(upto, 1), n)
		if upto <= done {
			continue
		}
		sizes = append(sizes, upto-done)
		done = upto
	}
	if done < n {
		sizes = append(sizes, n-done)
	}
	return sizes
}

// ParseRate reads a failure-rate threshold written as a percentage ("5%",
// "0.5%", "0%") and returns it as a fraction (0.05).
func ParseRate(s string) (float64, error) {
	p, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, fmt.Errorf("%q is not a percentage (write it as e.g. 5%%)", s)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
	if err != nil || math.IsNaN(v) || v < 0 || v > 100 {
		return 0, fmt.Errorf("%q is not a percentage from 0%% to 100%%", s)
	}
	return v / 100, nil
}
