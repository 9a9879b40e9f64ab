package hub_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/wsstream"
	"github.com/dmctl/dmctl/sas"
)

// testCtx bounds a test's waits.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type device struct {
	id   string
	c    paho.Client
	msgs chan paho.Message
	lost chan error
}

type connOpts struct {
	clientID  string
	username  string
	password  string
	transport string           // "tls" (default), "ws" (subprotocol mqtt), "wsMQTT" (subprotocol MQTT)
	cert      *tls.Certificate // client certificate to present in the TLS handshake
	origin    string           // Origin header of the WebSocket handshake ("ws" only)
}

// token mints a device SAS for the hub's HostName.
func token(t *testing.T, hs *hubtest.Server, cs string, expiry time.Time) string {
	t.Helper()
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func deviceKey(t *testing.T, cs string) string {
	t.Helper()
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	return c.SharedAccessKey
}

func tlsConfig(hs *hubtest.Server) *tls.Config {
	return &tls.Config{RootCAs: hs.CAPool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// dial connects an MQTT client and returns the CONNACK return code.
func dial(t *testing.T, hs *hubtest.Server, o connOpts) (*device, byte, error) {
	t.Helper()
	d := &device{id: o.clientID, msgs: make(chan paho.Message, 64), lost: make(chan error, 1)}
	tc := tlsConfig(hs)
	if o.cert != nil {
		tc.Certificates = []tls.Certificate{*o.cert}
	}
	opts := paho.NewClientOptions().
		SetClientID(o.clientID).
		SetUsername(o.username).
		SetPassword(o.password).
		SetTLSConfig(tc).
		SetCleanSession(false).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetKeepAlive(60 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case d.lost <- err:
			default:
			}
		})
	switch o.transport {
	case "", "tls":
		opts.AddBroker("tls://" + hs.Addr())
	case "ws":
		opts.AddBroker("wss://" + hs.Addr() + "/$iothub/websocket")
		if o.origin != "" {
			opts.SetHTTPHeaders(http.Header{"Origin": []string{o.origin}})
		}
	case "wsMQTT":
		opts.AddBroker("wss://" + hs.Addr() + "/$iothub/websocket")
		opts.SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			dialer := websocket.Dialer{TLSClientConfig: tc, Subprotocols: []string{"MQTT"}, HandshakeTimeout: 10 * time.Second}
			ws, resp, err := dialer.Dial(u.String(), nil)
			if err != nil {
				return nil, err
			}
			if resp.Header.Get("Sec-Websocket-Protocol") != "MQTT" {
				_ = ws.Close()
				return nil, fmt.Errorf("server chose subprotocol %q", resp.Header.Get("Sec-Websocket-Protocol"))
			}
			return wsstream.New(ws, 0), nil
		})
	default:
		t.Fatalf("unknown transport %q", o.transport)
	}
	d.c = paho.NewClient(opts)
	tok := d.c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		t.Fatal("connect did not finish")
	}
	rc := tok.(*paho.ConnectToken).ReturnCode()
	if err := tok.Error(); err != nil {
		return nil, rc, err
	}
	t.Cleanup(func() { d.c.Disconnect(0) })
	return d, rc, nil
}

// connectDevice connects as the device or module of connection string cs.
func connectDevice(t *testing.T, hs *hubtest.Server, cs, transport string) *device {
	t.Helper()
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	id := iothub.ClientID(c.DeviceID, c.ModuleID)
	d, rc, err := dial(t, hs, connOpts{
		clientID:  id,
		username:  iothub.Username(c.HostName, c.DeviceID, c.ModuleID, "dmctl-test/1"),
		password:  token(t, hs, cs, time.Now().Add(time.Hour)),
		transport: transport,
	})
	if err != nil {
		t.Fatalf("connect %s: rc=%d: %v", id, rc, err)
	}
	return d
}

func (d *device) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := d.c.Subscribe(filter, 0, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func (d *device) publish(t *testing.T, topic string, qos byte, body string) {
	t.Helper()
	tok := d.c.Publish(topic, qos, false, body)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("publish %s did not finish", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// next returns the next message the device receives.
func (d *device) next(ctx context.Context, t *testing.T) paho.Message {
	t.Helper()
	select {
	case m := <-d.msgs:
		return m
	case err := <-d.lost:
		t.Fatalf("%s: connection lost: %v", d.id, err)
	case <-ctx.Done():
		t.Fatalf("%s: no message: %v", d.id, ctx.Err())
	}
	return nil
}

// twinGet asks for the twin and returns the response topic and body.
func (d *device) twinGet(ctx context.Context, t *testing.T, rid string) (string, []byte) {
	t.Helper()
	d.publish(t, iothub.TwinGetTopic(rid), 0, " ")
	m := d.next(ctx, t)
	return m.Topic(), m.Payload()
}

// serveMethods answers every method request with status 200 and a payload
// naming the device and echoing the request body.
func (d *device) serveMethods(t *testing.T) {
	t.Helper()
	tok := d.c.Subscribe(iothub.MethodsFilter, 0, func(c paho.Client, m paho.Message) {
		name, rid, ok := iothub.ParseMethodRequestTopic(m.Topic())
		if !ok {
			return
		}
		body, _ := json.Marshal(map[string]any{"device": d.id, "method": name, "request": json.RawMessage(orNull(m.Payload()))})
		c.Publish(iothub.MethodResponseTopic(200, rid), 0, false, body)
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe methods: %v", tok.Error())
	}
}

func orNull(b []byte) []byte {
	if len(strings.TrimSpace(string(b))) == 0 {
		return []byte("null")
	}
	return b
}

// policyToken mints an iothubowner SAS for REST calls.
func policyToken(t *testing.T, hs *hubtest.Server) string {
	t.Helper()
	c, err := sas.ParseService(hs.ServiceConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type (
	pahoClient  = paho.Client
	pahoMessage = paho.Message
)
