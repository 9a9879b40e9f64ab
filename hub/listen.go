package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// mqttConnectByte is the first byte of an MQTT CONNECT packet; anything else
// after the TLS handshake is taken for HTTP.
const mqttConnectByte = 0x10

// acceptLoop accepts TCP connections until the listener is closed.
func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			// Temporary failures such as running out of descriptors: back
			// off instead of spinning.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			if !s.fd.acceptFailed(err) { // out of descriptors: said once per run
				s.log.Warn().Err(err).Dur("retry_in", delay).Msg("accept failed")
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		s.fd.accepted()
		if !s.track(c) {
			_ = c.Close()
			return
		}
		s.wg.Add(1)
		go s.handshake(c)
	}
}

// track registers a connection that is still in its handshake, so Close can
// cut it short; false once the server is closing.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.inflight[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.inflight, c)
	s.mu.Unlock()
}

// handshake runs TLS on a fresh connection, reads the first byte and hands
// the connection to the broker (MQTT CONNECT) or to the HTTP server.
func (s *Server) handshake(raw net.Conn) {
	defer s.wg.Done()
	defer s.untrack(raw)
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	tc := tls.Server(raw, s.tlsCfg)
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.log.Debug().Err(err).Str("remote", raw.RemoteAddr().String()).Msg("TLS handshake failed")
		_ = raw.Close()
		return
	}
	var first [1]byte
	if _, err := tc.Read(first[:]); err != nil {
		_ = tc.Close()
		return
	}
	st := tc.ConnectionState()
	c := &hubConn{Conn: tc, first: first[0], hasFirst: true, serverName: st.ServerName, peerCerts: st.PeerCertificates}
	if first[0] == mqttConnectByte {
		_ = tc.SetDeadline(time.Now().Add(connectTimeout))
		s.broker.handoff(c)
		return
	}
	_ = tc.SetDeadline(time.Time{})
	if !s.httpQ.push(c) {
		_ = c.Close()
	}
}

// hubConn is an accepted connection after TLS: it replays the byte read to
// tell MQTT from HTTP, remembers the TLS server name the client asked for
// and the client certificate chain it presented, and bounds every write so
// a stalled peer cannot block the hub.
type hubConn struct {
	net.Conn
	first      byte
	hasFirst   bool
	serverName string
	peerCerts  []*x509.Certificate
}

func (c *hubConn) Read(p []byte) (int, error) {
	if c.hasFirst && len(p) > 0 {
		c.hasFirst = false
		p[0] = c.first
		return 1, nil
	}
	return c.Conn.Read(p)
}

// ServerName is the TLS server name (SNI) the client asked for.
func (c *hubConn) ServerName() string { return c.serverName }

// PeerCertificates is the certificate chain the client presented in the
// TLS handshake, leaf first; nil if it presented none.
func (c *hubConn) PeerCertificates() []*x509.Certificate { return c.peerCerts }

func (c *hubConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return c.Conn.Write(p)
}

// connQueue is a net.Listener fed with connections that already passed the
// TLS handshake and were recognised as HTTP.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// push hands c to the HTTP server; false once the queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

// newStdLogger routes net/http's internal messages to the hub's logger at
// debug level.
func newStdLogger(l zerolog.Logger) *log.Logger {
	return log.New(stdWriter{l}, "", 0)
}

type stdWriter struct{ l zerolog.Logger }

func (w stdWriter) Write(p []byte) (int, error) {
	w.l.Debug().Str("component", "http").Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
