package hub

import (
	"log/slog"
	"net"
	"sync"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// mochiListener is the broker's only listener: the hub accepts, handshakes
// and sniffs connections itself and feeds MQTT ones through ch.
type mochiListener struct {
	id     string
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	served chan struct{}
	once   sync.Once
	b      *broker
}

func (l *mochiListener) Init(*slog.Logger) error { return nil }
func (l *mochiListener) ID() string              { return l.id }
func (l *mochiListener) Address() string         { return l.addr.String() }
func (l *mochiListener) Protocol() string        { return "tls" }

// Serve hands every connection to mochi's establish function in its own
// goroutine, until Close.
func (l *mochiListener) Serve(establish listeners.EstablishFn) {
	defer close(l.served)
	for {
		select {
		case c := <-l.ch:
			go func() {
				defer l.b.connEnded(c)
				if err := establish(l.id, c); err != nil {
					l.b.log.Debug().Err(err).Str("remote", c.RemoteAddr().String()).Msg("MQTT connection ended")
				}
			}()
		case <-l.done:
			return
		}
	}
}

// Close stops Serve and closes every connection the broker holds; each
// client's read loop then ends on its own.
func (l *mochiListener) Close(listeners.CloseFn) {
	l.once.Do(func() { close(l.done) })
	l.b.mu.Lock()
	conns := make([]net.Conn, 0, len(l.b.conns))
	for c := range l.b.conns {
		conns = append(conns, c)
	}
	l.b.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
