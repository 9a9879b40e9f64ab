package main

import (
	"slices"
	"time"
)

// summary is the distribution of a set of round trips.
type summary struct {
	N                   int
	P50, P90, P99, Mean time.Duration
}

func summarize(d []time.Duration) summary {
	if len(d) == 0 {
		return summary{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	return summary{
		N:    len(s),
		P50:  quantile(s, 0.50),
		P90:  quantile(s, 0.90),
		P99:  quantile(s, 0.99),
		Mean: sum / time.Duration(len(s)),
	}
}

// quantile is the nearest-rank quantile of sorted samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// sample runs f warmup times, then n times, and returns the duration of
// each of the n calls. It stops at the first error.
func sample(warmup, n int, f func() error) ([]time.Duration, error) {
	for range warmup {
		if err := f(); err != nil {
			return nil, err
		}
	}
	out := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if err := f(); err != nil {
			return out, err
		}
		out = append(out, time.Since(t))
	}
	return out, nil
}
