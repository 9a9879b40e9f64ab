package hub

import (
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"strings"
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
		// Devices authenticate inside MQTT (a SAS token, or the client
		// certificate checked at CONNECT), never with ambient browser
		// credentials, so the origin does not matter.
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
			if s.sameOrigin(r) {
				c.peerCerts = hc.peerCerts
			}
		}
		_ = c.SetDeadline(time.Now().Add(connectTimeout))
		s.broker.handoff(c)
	})
}

// sameOrigin reports whether a WebSocket request comes from no web page
// (no Origin) or from a page served under one of the hub's own names (the
// request's Host, the configured hostname, the loopback names). A client
// certificate is a browser's ambient credential: a page of another site
// must not log in with it, so the hub forgets the certificate of a
// cross-origin WebSocket (SAS logins are unaffected).
func (s *Server) sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Hostname() == "" {
		return false
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(r.Host); err == nil {
		host = h
	}
	for _, h := range append(s.hosts(), strings.Trim(host, "[]")) {
		if strings.EqualFold(u.Hostname(), h) {
			return true
		}
	}
	return false
}

// wsConn is MQTT over a WebSocket as a byte stream, with the TLS server
// name the client asked for and the client certificate chain it presented.
type wsConn struct {
	*wsstream.Conn
	serverName string
	peerCerts  []*x509.Certificate
}

// ServerName is the TLS server name (SNI) the client asked for.
func (c *wsConn) ServerName() string { return c.serverName }

// PeerCertificates is the certificate chain the client presented in the
// TLS handshake, leaf first; nil if it presented none.
func (c *wsConn) PeerCertificates() []*x509.Certificate { return c.peerCerts }
