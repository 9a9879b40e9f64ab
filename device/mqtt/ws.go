package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"
)

// dialWebSocket opens MQTT over a WebSocket (subprotocol "mqtt") at
// wsURL, through proxy. Everything, the TCP dial, the proxy's CONNECT,
// the TLS handshake and the HTTP upgrade, ends when ctx does.
func dialWebSocket(ctx context.Context, wsURL string, tlsConf *tls.Config, proxy func(*http.Request) (*url.URL, error)) (net.Conn, error) {
	var stop func() bool // ends the watch on the raw connection
	d := websocket.Dialer{
		Proxy:           proxy,
		TLSClientConfig: tlsConf,
		Subprotocols:    []string{"mqtt"},
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The upgrade only watches a deadline; a cancel must reach
			// the socket too.
			stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
			return c, nil
		},
	}
	ws, resp, err := d.DialContext(ctx, wsURL, nil)
	cancelled := stop != nil && !stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if resp != nil {
			return nil, fmt.Errorf("websocket upgrade refused: HTTP %d: %w", resp.StatusCode, err)
		}
		return nil, err
	}
	if cancelled {
		_ = ws.Close()
		return nil, ctx.Err()
	}
	return &wsConn{Conn: ws}, nil
}

// wsConn is a WebSocket as a byte stream: every Write is one binary
// message, Read runs across message boundaries. The link reads on one
// goroutine and serializes its writes, as gorilla/websocket requires.
type wsConn struct {
	*websocket.Conn
	r io.Reader // the message being read, if any
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
