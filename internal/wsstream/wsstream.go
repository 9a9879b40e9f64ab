// Package wsstream presents a WebSocket as the byte stream that MQTT over
// WebSockets needs: binary messages are concatenated on read, and every
// write is one binary message. The hub (server side), the device transport
// and tests (client side) share it.
package wsstream

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrTextFrame is returned by Read when the peer sends a text message:
// MQTT over WebSockets uses binary frames only.
var ErrTextFrame = errors.New("MQTT over WebSockets needs binary frames")

// Conn is a net.Conn over a WebSocket. It is safe for one reader and any
// number of writers at a time.
type Conn struct {
	ws           *websocket.Conn
	writeTimeout time.Duration

	rmu sync.Mutex
	r   io.Reader // the message being read, if any

	wmu sync.Mutex // gorilla allows one writer at a time
}

var _ net.Conn = (*Conn)(nil)

// New wraps ws. A writeTimeout above zero bounds every Write on its own
// (and overrides SetWriteDeadline); zero leaves writes to the deadlines set.
func New(ws *websocket.Conn, writeTimeout time.Duration) *Conn {
	return &Conn{ws: ws, writeTimeout: writeTimeout}
}

// WebSocket returns the wrapped connection.
func (c *Conn) WebSocket() *websocket.Conn { return c.ws }

func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			mt, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if mt != websocket.BinaryMessage {
				return 0, ErrTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeTimeout > 0 {
		_ = c.ws.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close frame (best effort, for at most a second) and closes
// the connection.
func (c *Conn) Close() error {
	_ = c.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	return c.ws.Close()
}

func (c *Conn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *Conn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.SetWriteDeadline(t)
}
