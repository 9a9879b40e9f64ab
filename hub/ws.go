package hub

import (
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dmctl/dmctl/internal/wsstream"
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
		c := &wsConn{Conn: wsstream.New(ws, writeTimeout)}
		if hc, ok := ws.NetConn().(*hubConn); ok {
			c.serverName = hc.serverName
		}
		_ = c.SetDeadline(time.Now().Add(connectTimeout))
		s.broker.handoff(c)
	})
}

// wsConn is MQTT over a WebSocket as a byte stream, with the TLS server
// name the client asked for.
type wsConn struct {
	*wsstream.Conn
	serverName string
}

// ServerName is the TLS server name (SNI) the client asked for.
func (c *wsConn) ServerName() string { return c.serverName }
