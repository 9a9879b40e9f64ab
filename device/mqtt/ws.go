package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"

	"github.com/dmctl/dmctl/internal/wsstream"
)

// dialWebSocket opens MQTT over a WebSocket (subprotocol "mqtt") at
// wsURL, through proxy. Everything, the TCP dial, the proxy's CONNECT,
// the TLS handshake and the HTTP upgrade, ends when ctx does. The TCP
// connection dials from local when it is not nil.
func dialWebSocket(ctx context.Context, wsURL string, tlsConf *tls.Config, proxy func(*http.Request) (*url.URL, error), local net.Addr) (net.Conn, error) {
	var stop func() bool // ends the watch on the raw connection
	d := websocket.Dialer{
		Proxy:           proxy,
		TLSClientConfig: tlsConf,
		Subprotocols:    []string{"mqtt"},
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{LocalAddr: local}).DialContext(ctx, network, addr)
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
	return wsstream.New(ws, 0), nil
}
