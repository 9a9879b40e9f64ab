package soak

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// stats collects the per-interval counts and the hub's RSS samples.
type stats struct {
	cfg *Config

	mu    sync.Mutex
	t0    time.Time // start of the load; zero before
	ivs   []Interval
	pids  []int               // hub processes that served load, in order
	byPid map[int][]rssSample // their samples
}

func newStats(cfg *Config) *stats {
	return &stats{cfg: cfg, byPid: map[int][]rssSample{}}
}

// start begins the load at t0.
func (s *stats) start(t0 time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.t0 = t0
	for at := time.Duration(0); at < s.cfg.Duration; at += s.cfg.Interval {
		s.ivs = append(s.ivs, Interval{Start: at, End: min(at+s.cfg.Interval, s.cfg.Duration)})
	}
}

// index is the interval holding t, clamped to the load; -1 before it.
func (s *stats) indexLocked(t time.Time) int {
	if s.t0.IsZero() || t.Before(s.t0) {
		return -1
	}
	return min(int(t.Sub(s.t0)/s.cfg.Interval), len(s.ivs)-1)
}

func (s *stats) index(t time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.indexLocked(t)
}

// at applies f to interval i (nothing when i < 0).
func (s *stats) at(i int, f func(*Interval)) {
	if i < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.ivs[i])
}

// now applies f to the interval holding the present moment.
func (s *stats) now(f func(*Interval)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := s.indexLocked(time.Now()); i >= 0 {
		f(&s.ivs[i])
	}
}

// killed marks the interval of the kill.
func (s *stats) killed(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := s.indexLocked(t); i >= 0 {
		s.ivs[i].HubKilled = true
	}
}

// sample reads the running hub's VmRSS every SampleEvery until ctx ends;
// the channel is closed when it has stopped.
func (s *stats) sample(ctx context.Context, cur *atomic.Pointer[hubProc]) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(s.cfg.SampleEvery)
		defer tick.Stop()
		for {
			s.sampleOnce(cur)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return done
}

func (s *stats) sampleOnce(cur *atomic.Pointer[hubProc]) {
	p := cur.Load()
	if p == nil {
		return // down
	}
	pid := p.pid()
	n, err := RSS(pid)
	if err != nil {
		return // the process ended between the load and the read
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byPid[pid]; !ok {
		s.pids = append(s.pids, pid)
	}
	s.byPid[pid] = append(s.byPid[pid], rssSample{at: now.Sub(s.t0), rss: n})
	if i := s.indexLocked(now); i >= 0 {
		s.ivs[i].HubRSSMax = max(s.ivs[i].HubRSSMax, n)
	}
}

// finish fills the report's intervals, totals and RSS check.
func (s *stats) finish(rep *Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rep.Intervals = append([]Interval(nil), s.ivs...)
	rep.Total = Interval{Start: 0, End: s.cfg.Duration}
	for i := range rep.Intervals {
		rep.Total.add(&rep.Intervals[i])
	}
	rep.LostAcked = rep.Total.LostAcked
	var procs [][]rssSample
	for _, pid := range s.pids {
		procs = append(procs, s.byPid[pid])
	}
	rep.RSS = checkRSS(procs)
}
