package fleet

import (
	"os"
	"runtime/debug"
	"sync"
)

// ConnectingGCPercent is the GC percent a ConnectGC sets while some of a
// fleet's devices are not connected.
const ConnectingGCPercent = 25

// ConnectGC runs the garbage collector more often while a fleet connects.
// What a device allocates while it connects (its TLS state, its link, its
// session) stays for the fleet's life, and the handshakes' garbage is
// allocated among it: a heap span holding one live object cannot be given
// back, so with the default GC percent, where the heap grows to twice its
// live size between collections, an idle fleet kept about 1.7 times its
// live heap in spans. Measured with `dmctl device run` and 10,000 devices,
// runs interleaved, GC percent 100 / 50 / 25 while connecting: 23.5-24.1 /
// 21.5-21.6 / 19.5-20.1 KiB of RSS per device once connected, for 8.4-10.3
// / 10.5-11.8 / 10.6-12.6 s of CPU to connect them (25: a fifth more CPU
// while connecting, for a sixth less memory for as long as the fleet runs;
// with 19,936 devices after a hub restart, 19-21 KiB where 31-36 stayed). So
// while some device is not connected (starting, a hub restart, a fleet
// reboot) the GC percent is ConnectingGCPercent, and once every device is
// connected it goes back and the free pages are returned to the system. A
// GOGC the user set is left alone. The GC percent is the process's: a Fleet
// does not change it, the program that runs one may (dmctl device run
// does, and go run ./bench where it measures a fleet's memory).
type ConnectGC struct {
	mu      sync.Mutex
	managed bool // GOGC is not set: the GC percent is this type's to change
	lowered bool // the GC percent is ConnectingGCPercent
	normal  int  // the GC percent before it was lowered
	settled bool // every device has been connected once
}

// NewConnectGC returns a ConnectGC for this process.
func NewConnectGC() *ConnectGC {
	return &ConnectGC{managed: os.Getenv("GOGC") == ""}
}

// Connecting lowers the GC percent: some devices are about to connect.
func (g *ConnectGC) Connecting() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.managed && !g.lowered {
		g.normal = debug.SetGCPercent(ConnectingGCPercent)
		g.lowered = true
	}
}

// Connected restores the GC percent and returns the free pages, the first
// time every device is connected and after each time the GC percent was
// lowered since.
func (g *ConnectGC) Connected() {
	g.mu.Lock()
	free := g.lowered || !g.settled
	if g.lowered {
		debug.SetGCPercent(g.normal)
	}
	g.lowered, g.settled = false, true
	g.mu.Unlock()
	if free {
		debug.FreeOSMemory()
	}
}

// Observe follows the fleet's state lines. Until the fleet is first ready
// Connecting (called before it starts) and Connected (called when it is
// ready) decide alone; Config.OnStats may be Observe.
func (g *ConnectGC) Observe(st Stats) {
	g.mu.Lock()
	settled, lowered := g.settled, g.lowered
	g.mu.Unlock()
	switch {
	case !settled:
	case st.Connected < st.Devices:
		g.Connecting()
	case lowered:
		g.Connected()
	}
}
