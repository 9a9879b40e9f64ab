package faults_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/sas"
)

// attempts records, from the moment it is armed, the end of every connect
// attempt (connected or connect_failed) and which devices are back.
type attempts struct {
	want int

	mu          sync.Mutex
	armed       time.Time
	ends        []time.Time
	back        map[string]bool
	disconnects int
	all         chan struct{} // closed when want devices are back
}

func (a *attempts) arm(at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.armed, a.back, a.all = at, map[string]bool{}, make(chan struct{})
}

func (a *attempts) record(e device.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.armed.IsZero() || e.Time.Before(a.armed) {
		return
	}
	switch e.Kind {
	case device.EventDisconnected:
		a.disconnects++
	case device.EventConnectFailed:
		a.ends = append(a.ends, e.Time)
	case device.EventConnected:
		a.ends = append(a.ends, e.Time)
		if !a.back[e.DeviceID] {
			a.back[e.DeviceID] = true
			if len(a.back) == a.want {
				close(a.all)
			}
		}
	}
}

// A fleet of 1,000 devices behind the proxy loses every connection at once
// and comes back without a reconnect storm: the fleet's limiter (ConnectRate
// per second, burst 1) spaces the attempts, so the proxy cannot see the k-th
// connection after the reset open before (k-1)/rate after it.
func TestFleetSurvivesResetOfEveryConnection(t *testing.T) {
	const (
		n = 1000
		// --connect-rate: below what this machine connects (some 130 to
		// 330 a second under the race detector with no limit at all), so
		// that a storm would show.
		rate = 100.0
	)
	// The hub logs warnings only: a line per connect and disconnect of a
	// thousand devices would bury what the test says when it fails.
	r := newRig(t, hubtest.WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)))
	css := make([]*sas.ConnectionString, n)
	for i := range css {
		css[i] = r.deviceCS(t, fmt.Sprintf("fleet-%04d", i))
	}
	// Counted from before the first connect: a counter added to a proxy
	// with connections open stamps each of them from a goroutine of its
	// own, and on a loaded machine some of those stamps would land after
	// the reset and read as opens ahead of the limiter.
	opens, err := r.dev.CountOpens("opens")
	if err != nil {
		t.Fatal(err)
	}
	a := &attempts{want: n}
	f, err := fleet.New(fleet.Config{
		Devices:     css,
		Conn:        mqtt.Config{RootCAs: r.hub.CAPool(), MaxBackoff: 5 * time.Second},
		Device:      device.Config{RebootDelay: device.NoRebootDelay},
		ConnectRate: rate,
		OnEvent:     a.record,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := time.Now()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fleet Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the fleet did not stop within 30 s of its cancel")
		}
	}()
	select {
	case <-f.Ready():
		t.Logf("%d devices connected through the proxy in %v", n, f.ReadyAt().Sub(started).Round(time.Millisecond))
	case <-time.After(60 * time.Second):
		t.Fatalf("the fleet was not connected within 60 s: %+v", f.Stats())
	}

	// A device that lost its connection before the reset (a keep-alive
	// missed on a loaded machine) may already hold a connect slot: its
	// open can land just after the reset. The bound below allows for them,
	// and for a few more (slack: devices that drop between this count and
	// the reset, scheduling on a loaded machine); a storm would be hundreds
	// of opens early.
	early := n - f.Stats().Connected
	const slack = n / 40
	reset := time.Now()
	a.arm(reset)
	if err := r.dev.ResetAll(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.all:
	case <-time.After(60 * time.Second):
		t.Fatalf("not every device was back within 60 s of the reset: %+v", f.Stats())
	}

	a.mu.Lock()
	ends := slices.Clone(a.ends)
	disconnects := a.disconnects
	a.mu.Unlock()
	slices.SortFunc(ends, func(x, y time.Time) int { return x.Compare(y) })
	// Every connection that was up at the reset ends: the devices already
	// down then (early) have no connection for the reset to end.
	if disconnects < n-early {
		t.Errorf("%d disconnected events after the reset, want at least %d (every connection up at the reset; %d were down)", disconnects, n-early, early)
	}
	// The limiter's promise: attempt k (from 1) starts no earlier than
	// (k-1)/rate after the reset (its burst is 1: one slot may be saved from
	// before). The proxy sees a connection open after the attempt started.
	opened := opens.Since(reset)
	if len(opened) < n {
		t.Fatalf("the proxy saw %d connections open after the reset, want at least %d", len(opened), n)
	}
	// How far the opens ran ahead of that schedule at the worst moment: a
	// reconnect storm is hundreds ahead; a few ahead are a loaded machine's
	// scheduling (the proxy stamps opens in its own goroutines).
	interval := time.Duration(float64(time.Second) / rate)
	peak, lo, ahead := 0, 0, 0
	for k, at := range opened {
		allowed := int(at.Sub(reset)/interval) + 1 + early
		ahead = max(ahead, k+1-allowed)
		for at.Sub(opened[lo]) >= time.Second {
			lo++
		}
		peak = max(peak, k-lo+1)
	}
	if ahead > slack {
		t.Fatalf("the connections after the reset ran %d ahead of what the limiter allows (%g/s, burst 1; %d devices were not connected at the reset; tolerated %d): a reconnect storm",
			ahead, rate, early, slack)
	}
	last := ends[len(ends)-1].Sub(reset)
	t.Logf("after the reset: %d disconnects, %d connections opened (%d attempts ended), all %d devices back in %v; busiest second: %d opens (limit %g/s); mean %.0f opens/s; at most %d ahead of the limiter",
		disconnects, len(opened), len(ends), n, last.Round(time.Millisecond), peak, rate,
		float64(len(opened))/opened[len(opened)-1].Sub(reset).Seconds(), ahead)
}
