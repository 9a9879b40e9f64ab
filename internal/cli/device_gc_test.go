package cli

import (
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/hub/hubtest"
)

// waitGCPercent waits until the process's GC percent is want.
func waitGCPercent(t *testing.T, want int, what string) {
	t.Helper()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		metrics.Read(s)
		got := int(s[0].Value.Uint64())
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: GC percent %d after 20 s, want %d", what, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// device run lowers the GC percent while its fleet connects, restores it
// once every device is connected, and does both again when the devices
// reconnect after a hub restart.
func TestDeviceRunCollectsMoreOftenWhileItsFleetConnects(t *testing.T) {
	t.Setenv("GOGC", "")
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })
	hs := hubtest.NewServer(t)
	file, ids := fleetFile(t, hs, "gc", 6, nil)
	// 2 connects per second: 6 devices take over 2 s, longer than the
	// fleet's least gap between state lines.
	f := startFleet(t, "--connection-strings-file", file, "--connect-rate", "2/s", "--ca-file", hs.CAFile())
	waitGCPercent(t, fleet.ConnectingGCPercent, "while the fleet connects")
	if info := f.ready(t); len(info.DeviceIDs) != len(ids) {
		t.Fatalf("ready with %d devices, want %d", len(info.DeviceIDs), len(ids))
	}
	waitGCPercent(t, 100, "once every device is connected")
	hs.Restart(t)
	waitGCPercent(t, fleet.ConnectingGCPercent, "while the devices reconnect after a hub restart")
	waitGCPercent(t, 100, "once every device is back")
}
