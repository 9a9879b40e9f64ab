package hub

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// WebSocketPath is where MQTT over WebSockets is served.
const WebSocketPath = "/$iothub/websocket"

// httpHandler serves MQTT over WebSockets at WebSocketPath and the REST API
// everywhere else.
func (s *Server) httpHandler(rest http.Handler) http.Handler {
	up := &websocket.Upgrader{
		HandshakeTimeout: handshakeTimeout,
		// mqtt.js and paho ask for "mqtt", the C SDK for "MQTT".
		Subprotocols:    []string{"mqtt", "MQTT"},
		WriteBufferPool: &sync.Pool{},
		// Devices authenticate inside MQTT with a SAS token, never with
		// ambient browser credentials, so the origin does not matter.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != WebSocketPath {
			rest.ServeHTTP(w, r)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			s.log.Debug().Err(err).Str("remote", r.RemoteAddr).Msg("websocket upgrade failed")
			return // Upgrade has answered the client
		}
		ws.SetReadLimit(maxPacketSize + 1024)
		c := &wsConn{ws: ws}
		if hc, ok := ws.NetConn().(*hubConn); ok {
			c.serverName = hc.serverName
		}
		_ = c.SetDeadline(time.Now().Add(connectTimeout))
		s.broker.handoff(c)
	})
}

// wsConn presents a WebSocket carrying MQTT as a byte stream: binary
// messages are concatenated on read, every write is one binary message.
type wsConn struct {
	ws         *websocket.Conn
	serverName string

	rmu sync.Mutex
	r   io.Reader // current message

	wmu sync.Mutex
}

var errTextFrame = errors.New("hub: MQTT over WebSockets needs binary frames")

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			mt, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if mt != websocket.BinaryMessage {
				return 0, errTextFrame
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

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close frame (best effort) and closes the connection.
func (c *wsConn) Close() error {
	_ = c.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	return c.ws.Close()
}

func (c *wsConn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

// ServerName is the TLS server name (SNI) the client asked for.
func (c *wsConn) ServerName() string { return c.serverName }

// SetDeadline sets the read deadline only: every Write sets its own
// deadline, under the write lock gorilla requires.
func (c *wsConn) SetDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

func (c *wsConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline is ignored; see SetDeadline.
func (c *wsConn) SetWriteDeadline(time.Time) error { return nil }
