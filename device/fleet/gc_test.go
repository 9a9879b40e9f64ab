package fleet

import (
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

// gcPercent reads the process's GC percent without changing it.
func gcPercent(t *testing.T) int {
	t.Helper()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatal("the runtime does not report /gc/gogc:percent")
	}
	return int(s[0].Value.Uint64())
}

// keepGCPercent sets the GC percent for a test and puts the old one back.
func keepGCPercent(t *testing.T, p int) {
	old := debug.SetGCPercent(p)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}

func TestFleetCollectsMoreOftenWhileConnecting(t *testing.T) {
	t.Setenv("GOGC", "")
	keepGCPercent(t, 100)
	g := NewConnectGC()
	want := func(step string, p int) {
		t.Helper()
		if got := gcPercent(t); got != p {
			t.Fatalf("%s: GC percent %d, want %d", step, got, p)
		}
	}
	g.Connecting()
	want("while the fleet starts", ConnectingGCPercent)
	g.Observe(Stats{Devices: 10, Connected: 10})
	want("a state line before the fleet is ready", ConnectingGCPercent)
	g.Connected()
	want("once every device is connected", 100)
	g.Observe(Stats{Devices: 10, Connected: 10})
	want("every device still connected", 100)
	g.Observe(Stats{Devices: 10, Connected: 4, Retrying: 6})
	want("devices reconnecting after a hub restart", ConnectingGCPercent)
	g.Observe(Stats{Devices: 10, Connected: 7, Connecting: 3})
	want("still reconnecting", ConnectingGCPercent)
	g.Observe(Stats{Devices: 10, Connected: 10})
	want("every device back", 100)
}

func TestFleetLeavesTheUsersGOGCAlone(t *testing.T) {
	t.Setenv("GOGC", "200")
	keepGCPercent(t, 200)
	g := NewConnectGC()
	g.Connecting()
	if got := gcPercent(t); got != 200 {
		t.Fatalf("GOGC=200 set by the user: GC percent %d while connecting", got)
	}
	g.Connected()
	g.Observe(Stats{Devices: 10, Connected: 2})
	if got := gcPercent(t); got != 200 {
		t.Fatalf("GOGC=200 set by the user: GC percent %d while reconnecting", got)
	}
}
