// Package devicetest helps tests observe devices and connections through
// their typed events (device.Event) instead of their logs.
package devicetest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
)

// Recorder keeps every event handed to Record. Its waits have deadlines of
// their own and fail the test naming what they waited for. The zero value
// is not usable; create one with NewRecorder.
type Recorder struct {
	mu      sync.Mutex
	events  []device.Event
	changed chan struct{} // closed and replaced on every Record
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{changed: make(chan struct{})} }

// Record stores e; pass it as an OnEvent callback. It never blocks for long.
func (r *Recorder) Record(e device.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Events returns a copy of the events recorded so far, in order.
func (r *Recorder) Events() []device.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]device.Event(nil), r.events...)
}

// Count is how many events of kind were recorded so far.
func (r *Recorder) Count(kind device.EventKind) int {
	return len(r.Matching(func(e device.Event) bool { return e.Kind == kind }))
}

// Matching returns the recorded events for which ok is true, in order.
func (r *Recorder) Matching(ok func(device.Event) bool) []device.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []device.Event
	for _, e := range r.events {
		if ok(e) {
			out = append(out, e)
		}
	}
	return out
}

// Wait waits at most timeout for the n-th event of kind (n >= 1) and
// returns it; the test fails if it does not come.
func (r *Recorder) Wait(t testing.TB, kind device.EventKind, n int, timeout time.Duration) device.Event {
	t.Helper()
	return r.WaitFor(t, fmt.Sprintf("%s event #%d", kind, n), n, timeout, func(e device.Event) bool { return e.Kind == kind })
}

// WaitFor waits at most timeout until n recorded events satisfy ok and
// returns the n-th; the test fails, naming what (a description of the
// event), if they do not come.
func (r *Recorder) WaitFor(t testing.TB, what string, n int, timeout time.Duration, ok func(device.Event) bool) device.Event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		seen := 0
		for _, e := range r.events {
			if ok(e) {
				seen++
				if seen == n {
					r.mu.Unlock()
					return e
				}
			}
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s within %v; events so far: %s", what, timeout, r.summary())
			return device.Event{}
		}
	}
}

// summary lists the kinds recorded, for failure messages.
func (r *Recorder) summary() string {
	evs := r.Events()
	if len(evs) == 0 {
		return "none"
	}
	kinds := make([]string, len(evs))
	for i, e := range evs {
		kinds[i] = string(e.Kind)
		if e.Reason != "" {
			kinds[i] += "(" + e.Reason + ")"
		}
	}
	return strings.Join(kinds, ", ")
}
