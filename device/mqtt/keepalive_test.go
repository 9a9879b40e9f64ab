package mqtt_test

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/sas"
)

// freezer is a TCP relay to the hub whose existing connections can be
// frozen: bytes stop flowing both ways but nothing is closed, as when a
// network path silently dies. New connections still flow.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen map[net.Conn]chan struct{} // closed: stop relaying
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target, frozen: map[net.Conn]chan struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *freezer) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		stop := make(chan struct{})
		f.mu.Lock()
		f.frozen[c] = stop
		f.mu.Unlock()
		relay := func(dst, src net.Conn) {
			defer f.wg.Done()
			buf := make([]byte, 4096)
			for {
				n, err := src.Read(buf)
				select {
				case <-stop:
					// Frozen: swallow everything until closed.
					if err != nil {
						return
					}
					continue
				default:
				}
				if n > 0 {
					if _, werr := dst.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					dst.Close()
					return
				}
			}
		}
		f.wg.Add(2)
		go relay(up, c)
		go relay(c, up)
		f.mu.Lock()
		f.frozen[up] = nil // closed with the pair
		f.mu.Unlock()
	}
}

// freeze stops every connection open now.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, stop := range f.frozen {
		if stop != nil {
			close(stop)
			f.frozen[c] = nil
		}
	}
}

func (f *freezer) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.frozen {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// A link that silently stops carrying bytes is noticed by the keep-alive
// (no PINGRESP) and replaced by a new connection.
func TestKeepAliveDetectsDeadLink(t *testing.T) {
	srv := hubtest.NewServer(t)
	fz := newFreezer(t, srv.Addr())
	raw := srv.CreateDevice(t, "ka")
	cs, err := sas.ParseDevice(raw)
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = "localhost:" + strconv.Itoa(fz.port())
	r := startDevice(t, srv, "ka", mqtt.Config{ConnectionString: cs, KeepAlive: time.Second}, device.Config{})
	r.waitEvent(t, device.EventTwin, 1)
	fz.freeze()
	// KeepAlive 1 s: a ping at 0.9 s, its answer missed by 1.8 s.
	r.ev.WaitFor(t, "disconnected event for a missing PINGRESP", 1, 5*time.Second, func(e device.Event) bool {
		return e.Kind == device.EventDisconnected && strings.HasPrefix(e.Reason, "pingresp not received")
	})
	r.waitEvent(t, device.EventConnected, 2)
	if res := newREST(t, srv).invoke(t, "ka", "echo", `"alive"`, 10); res.Status != 200 {
		t.Fatalf("method after the new connection = %d %s", res.Status, res.Payload)
	}
}
