package mqtt_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/testcert"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/gorilla/websocket"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/wsstream"
)

// A wireHub is a TLS endpoint that speaks just enough MQTT for a device to
// connect, and records what each connection presented: the client
// certificate of the handshake and the CONNECT packet. It answers CONNACK
// with a chosen code, grants every SUBSCRIBE, answers twin GETs and pings.
// It checks the wire where the local hub cannot yet (modules, X.509).
type wireHub struct {
	t    *testing.T
	host string // HostName for connection strings: localhost:port
	ca   *testcert.Cert
	code byte // CONNACK return code
	// reboot, when set, makes the first connection receive a rebootDevice
	// call (delaySeconds 0) once subscribed.
	reboot   bool
	rebooted atomic.Bool

	got  chan wireConnect            // buffered
	pubs chan *packets.PublishPacket // buffered: method answers and reported patches

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// wireConnect is what one connection presented.
type wireConnect struct {
	peer    []*x509.Certificate
	connect *packets.ConnectPacket
}

// wireTLS is the server side of the handshake: it asks for a client
// certificate and names clientCAs as acceptable issuers, like a hub that
// trusts device CAs; it verifies nothing itself unless require is set.
func wireTLS(t *testing.T, clientCAs *x509.CertPool, require bool) (*tls.Config, *testcert.Cert) {
	ca := testcert.New(t, testcert.Options{CommonName: "wire test CA", CA: true}, nil)
	srv := testcert.New(t, testcert.Options{CommonName: "localhost", Hosts: []string{"localhost", "127.0.0.1", "::1"}}, ca)
	auth := tls.RequestClientCert
	if require {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{Certificates: []tls.Certificate{srv.TLS()}, ClientAuth: auth, ClientCAs: clientCAs, MinVersion: tls.VersionTLS12}, ca
}

// newWireHub listens with MQTT over TLS on a loopback port.
func newWireHub(t *testing.T, clientCAs *x509.CertPool, require bool) *wireHub {
	conf, ca := wireTLS(t, clientCAs, require)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	h := &wireHub{t: t, ca: ca, got: make(chan wireConnect, 16), pubs: make(chan *packets.PublishPacket, 16), conns: map[net.Conn]bool{},
		host: "localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				tc := c.(*tls.Conn)
				_ = tc.SetDeadline(time.Now().Add(patience))
				if err := tc.Handshake(); err != nil {
					c.Close()
					return
				}
				_ = tc.SetDeadline(time.Time{})
				h.serve(c, tc.ConnectionState().PeerCertificates)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.closeAll()
	})
	return h
}

// newWireWSHub serves MQTT over WebSockets (/$iothub/websocket) over TLS.
func newWireWSHub(t *testing.T, clientCAs *x509.CertPool) *wireHub {
	conf, ca := wireTLS(t, clientCAs, false)
	h := &wireHub{t: t, ca: ca, got: make(chan wireConnect, 16), pubs: make(chan *packets.PublishPacket, 16), conns: map[net.Conn]bool{}}
	up := websocket.Upgrader{Subprotocols: []string{"mqtt"}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/$iothub/websocket" {
			http.NotFound(w, r)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		h.wg.Add(1)
		defer h.wg.Done()
		h.serve(wsstream.New(ws, patience), r.TLS.PeerCertificates)
	}))
	srv.TLS = conf
	srv.StartTLS()
	h.host = "localhost:" + strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)
	t.Cleanup(func() {
		h.closeAll()
		srv.Close()
	})
	return h
}

func (h *wireHub) closeAll() {
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// serve runs one MQTT connection until the device leaves.
func (h *wireHub) serve(c net.Conn, peer []*x509.Certificate) {
	h.mu.Lock()
	h.conns[c] = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		c.Close()
	}()
	p, err := packets.ReadPacket(c)
	if err != nil {
		return
	}
	cp, ok := p.(*packets.ConnectPacket)
	if !ok {
		h.t.Errorf("wire hub: first packet is %s, not CONNECT", p)
		return
	}
	h.got <- wireConnect{peer: peer, connect: cp}
	ack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	ack.ReturnCode = h.code
	if ack.Write(c) != nil || h.code != packets.Accepted {
		return
	}
	for {
		p, err := packets.ReadPacket(c)
		if err != nil {
			return
		}
		var reply, then packets.ControlPacket
		switch p := p.(type) {
		case *packets.SubscribePacket:
			sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			sa.MessageID, sa.ReturnCodes = p.MessageID, make([]byte, len(p.Topics))
			reply = sa
			if h.reboot && h.rebooted.CompareAndSwap(false, true) {
				call := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
				call.TopicName = iothub.MethodRequestTopic("rebootDevice", "r1")
				call.Payload = []byte(`{"delaySeconds":0}`)
				then = call
			}
		case *packets.UnsubscribePacket:
			ua := packets.NewControlPacket(packets.Unsuback).(*packets.UnsubackPacket)
			ua.MessageID = p.MessageID
			reply = ua
		case *packets.PingreqPacket:
			reply = packets.NewControlPacket(packets.Pingresp)
		case *packets.PublishPacket:
			op, rid, ok := iothub.ParseTwinRequestTopic(p.TopicName)
			res := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
			switch {
			case ok && op == iothub.TwinGet:
				res.TopicName = iothub.TwinResponseTopic(200, rid, 0)
				res.Payload = []byte(`{"desired":{"$version":1},"reported":{"$version":1}}`)
				reply = res
			case ok && op == iothub.TwinPatchReported:
				res.TopicName = iothub.TwinResponseTopic(204, rid, 2)
				reply = res
				h.pubs <- p
			default:
				h.pubs <- p
			}
		case *packets.DisconnectPacket:
			return
		}
		for _, r := range []packets.ControlPacket{reply, then} {
			if r != nil && r.Write(c) != nil {
				return
			}
		}
	}
}

// next returns what the next connection presented.
func (h *wireHub) next(t *testing.T) wireConnect {
	t.Helper()
	select {
	case w := <-h.got:
		return w
	case <-time.After(patience):
		t.Fatalf("no CONNECT reached the wire hub within %v", patience)
		return wireConnect{}
	}
}

// published returns the device's next PUBLISH other than a twin GET.
func (h *wireHub) published(t *testing.T, what string) *packets.PublishPacket {
	t.Helper()
	select {
	case p := <-h.pubs:
		return p
	case <-time.After(patience):
		t.Fatalf("no %s reached the wire hub within %v", what, patience)
		return nil
	}
}

// none checks that no further connection comes within d.
func (h *wireHub) none(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case w := <-h.got:
		t.Fatalf("%s, but the device connected again as %q", why, w.connect.ClientIdentifier)
	case <-time.After(d):
	}
}

// errNoCert is what a broker sees when the device sent no certificate.
var errNoCert = errors.New("no client certificate")

// peerLeaf returns the client certificate a connection presented.
func (w wireConnect) peerLeaf() (*x509.Certificate, error) {
	if len(w.peer) == 0 {
		return nil, errNoCert
	}
	return w.peer[0], nil
}

// runWire runs a device until the test ends.
func runWire(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device Run: %v", err)
			}
		case <-time.After(patience):
			t.Errorf("device Run did not return within %v of its cancel", patience)
		}
	})
}
