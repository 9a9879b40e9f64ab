package mqtt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/sas"
)

// Packet-level tests: the link against a fake broker on the far side of a
// net.Pipe, reading and writing packets with paho's packets package.

// linkPatience bounds every wait in these tests.
const linkPatience = 5 * time.Second

// fakeBroker is the hub's side of a pipe. Its reads and writes fail after
// linkPatience, so a broker goroutine never outlives its test for long.
type fakeBroker struct {
	t    *testing.T
	conn net.Conn
}

// newPipe returns the device's side of a pipe and the broker on the other.
func newPipe(t *testing.T) (net.Conn, *fakeBroker) {
	client, server := net.Pipe()
	_ = server.SetDeadline(time.Now().Add(linkPatience))
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, &fakeBroker{t: t, conn: server}
}

// read returns the next packet from the device, or nil (and a test error)
// if there is none.
func (b *fakeBroker) read() packets.ControlPacket {
	p, err := packets.ReadPacket(b.conn)
	if err != nil {
		b.t.Errorf("broker: no packet from the device: %v", err)
		return nil
	}
	return p
}

func (b *fakeBroker) write(p packets.ControlPacket) {
	if err := p.Write(b.conn); err != nil {
		b.t.Errorf("broker: write %T: %v", p, err)
	}
}

// accept reads CONNECT and answers CONNACK with code.
func (b *fakeBroker) accept(code byte) {
	if _, ok := b.read().(*packets.ConnectPacket); !ok {
		b.t.Errorf("broker: first packet is not CONNECT")
		return
	}
	ack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	ack.ReturnCode = code
	b.write(ack)
}

// goBroker runs f on its own goroutine; the test waits for it at cleanup.
func goBroker(t *testing.T, f func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	t.Cleanup(func() { waitClosed(t, done, "the fake broker to finish") })
	return done
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(linkPatience):
		t.Fatalf("waited %v for %s", linkPatience, what)
	}
}

// delivery is one message the link routed.
type delivery struct{ topic, payload string }

// testLink is an open link on conn with its routed messages and its loss.
type testLink struct {
	*link
	routed chan delivery
	lostCh chan error // buffered 1: the error lost was called with
}

// open runs the CONNECT exchange on conn (the broker must accept) and
// returns the link; it is closed at cleanup.
func open(t *testing.T, conn net.Conn, keepAlive time.Duration) *testLink {
	t.Helper()
	tl := &testLink{routed: make(chan delivery, 16), lostCh: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(t.Context(), linkPatience)
	defer cancel()
	l, err := openLink(ctx, conn, linkConfig{
		clientID: "d", username: "h/d/?api-version=x", password: "not-a-real-token",
		route: func(topic string, payload []byte) { tl.routed <- delivery{topic, string(payload)} },
		lost:  func(err error) { tl.lostCh <- err },
	}, keepAlive, linkPatience)
	if err != nil {
		t.Fatalf("openLink: %v", err)
	}
	t.Cleanup(func() { l.close(false) })
	tl.link = l
	return tl
}

// lost waits for the link to fail and returns why.
func (tl *testLink) lost(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-tl.lostCh:
		return err
	case <-time.After(within):
		t.Fatalf("link did not fail within %v", within)
		return nil
	}
}

func (tl *testLink) delivered(t *testing.T) delivery {
	t.Helper()
	select {
	case d := <-tl.routed:
		return d
	case <-time.After(linkPatience):
		t.Fatalf("no message delivered within %v", linkPatience)
		return delivery{}
	}
}

func (tl *testLink) nothingDelivered(t *testing.T) {
	t.Helper()
	select {
	case d := <-tl.routed:
		t.Fatalf("unexpected delivery %+v", d)
	default:
	}
}

// testConn is a Conn whose transport is the device side of a pipe.
func testConn(t *testing.T, conn net.Conn) *Conn {
	t.Helper()
	cs, err := sas.ParseDevice("HostName=h.example;DeviceId=d;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHM=")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{ConnectionString: cs, ConnectTimeout: linkPatience, RequestTimeout: linkPatience})
	if err != nil {
		t.Fatal(err)
	}
	c.dialConn = func(context.Context) (net.Conn, error) { return conn, nil }
	return c
}

func publishPacket(qos byte, id uint16, topic, payload string) *packets.PublishPacket {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.Qos, p.MessageID, p.TopicName, p.Payload = qos, id, topic, []byte(payload)
	return p
}

func TestConnackRefusals(t *testing.T) {
	for code := byte(1); code <= 6; code++ {
		t.Run(fmt.Sprintf("code %d", code), func(t *testing.T) {
			client, b := newPipe(t)
			goBroker(t, func() { b.accept(code) })
			_, err := testConn(t, client).dial(t.Context())
			if err == nil {
				t.Fatal("refused connect succeeded")
			}
			unauthorized := errors.Is(err, device.ErrUnauthorized)
			switch {
			case code == 4 || code == 5:
				if !unauthorized || !strings.Contains(err.Error(), packets.ConnErrors[code].Error()) {
					t.Fatalf("CONNACK %d: %v, want ErrUnauthorized naming %q", code, err, packets.ConnErrors[code])
				}
			case code == 6:
				if unauthorized || !strings.Contains(err.Error(), "CONNACK return code 6") {
					t.Fatalf("CONNACK 6: %v, want the unknown code named", err)
				}
			default:
				if unauthorized || !errors.Is(err, packets.ConnErrors[code]) {
					t.Fatalf("CONNACK %d: %v, want %v and not ErrUnauthorized", code, err, packets.ConnErrors[code])
				}
			}
			if strings.Contains(err.Error(), "SharedAccessSignature") {
				t.Fatalf("the error shows the token: %v", err)
			}
		})
	}
}

// Refused credentials on the first connect end Run instead of retrying.
func TestRunStopsOnFirstRefusal(t *testing.T) {
	c := testConn(t, nil)
	dials := 0
	c.dialConn = func(context.Context) (net.Conn, error) {
		dials++
		client, b := newPipe(t)
		goBroker(t, func() { b.accept(packets.ErrRefusedNotAuthorised) })
		return client, nil
	}
	ctx, cancel := context.WithTimeout(t.Context(), linkPatience)
	defer cancel()
	err := c.Run(ctx, nopHandler{})
	if !errors.Is(err, device.ErrUnauthorized) || ctx.Err() != nil || dials != 1 {
		t.Fatalf("Run = %v after %d dials, want ErrUnauthorized after one", err, dials)
	}
}

type nopHandler struct{}

func (nopHandler) HandleMethod(context.Context, device.MethodRequest) (int, []byte) { return 200, nil }
func (nopHandler) HandleTwin([]byte)                                                {}
func (nopHandler) HandleDesired(int64, []byte)                                      {}

func TestSubackFailureCode(t *testing.T) {
	client, b := newPipe(t)
	goBroker(t, func() {
		b.accept(packets.Accepted)
		sub, ok := b.read().(*packets.SubscribePacket)
		if !ok {
			t.Errorf("broker: no SUBSCRIBE")
			return
		}
		ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
		ack.MessageID = sub.MessageID
		ack.ReturnCodes = []byte{0, 0x80, 0}
		b.write(ack)
		if _, ok := b.read().(*packets.DisconnectPacket); !ok {
			t.Errorf("broker: the device did not DISCONNECT after the refusal")
		}
	})
	_, err := testConn(t, client).dial(t.Context())
	if err == nil || !strings.Contains(err.Error(), "hub refused $iothub/twin/res/#") {
		t.Fatalf("dial = %v, want the refused filter named", err)
	}
}

func TestMissingPingrespFailsTheLink(t *testing.T) {
	client, b := newPipe(t)
	pings := make(chan struct{}, 8)
	answer := atomic.Int32{} // PINGREQs still to be answered
	answer.Store(2)
	goBroker(t, func() {
		b.accept(packets.Accepted)
		for {
			p, err := packets.ReadPacket(b.conn)
			if err != nil {
				return // the device gave up on the link
			}
			if _, ok := p.(*packets.PingreqPacket); ok {
				pings <- struct{}{}
				if answer.Add(-1) >= 0 {
					b.write(packets.NewControlPacket(packets.Pingresp))
				}
			}
		}
	})
	// keep-alive 300 ms: a PINGREQ every 270 ms, each answer due 270 ms
	// later; the third goes unanswered, so the link fails at about 1.1 s.
	tl := open(t, client, 300*time.Millisecond)
	err := tl.lost(t, 3*time.Second)
	if err == nil || !strings.Contains(err.Error(), "pingresp not received") {
		t.Fatalf("link lost with %v, want the missing PINGRESP", err)
	}
	if len(pings) != 3 {
		t.Fatalf("%d PINGREQs, want 3 (two answered, the third not)", len(pings))
	}
	if err := tl.publish("x", nil); !errors.Is(err, errLinkClosed) {
		t.Fatalf("publish on the failed link = %v, want errLinkClosed", err)
	}
}

func TestInboundQoS1(t *testing.T) {
	client, b := newPipe(t)
	goBroker(t, func() {
		b.accept(packets.Accepted)
		b.write(publishPacket(1, 7, "devices/d/messages/devicebound/", "hello"))
		ack, ok := b.read().(*packets.PubackPacket)
		if !ok || ack.MessageID != 7 {
			t.Errorf("broker: got %v, want PUBACK for packet 7", ack)
		}
	})
	tl := open(t, client, time.Minute)
	if d := tl.delivered(t); d != (delivery{"devices/d/messages/devicebound/", "hello"}) {
		t.Fatalf("delivered %+v", d)
	}
}

// QoS 2 as MQTT 3.1.1 4.3.3 has it: PUBREC (never PUBACK), one delivery
// even when the PUBLISH is resent, PUBCOMP on PUBREL.
func TestInboundQoS2(t *testing.T) {
	client, b := newPipe(t)
	step := make(chan struct{})
	brokerDone := goBroker(t, func() {
		b.accept(packets.Accepted)
		expectRec := func() {
			p := b.read()
			if rec, ok := p.(*packets.PubrecPacket); !ok || rec.MessageID != 9 {
				t.Errorf("broker: got %v, want PUBREC for packet 9", p)
			}
		}
		b.write(publishPacket(2, 9, "t", "once"))
		expectRec()
		resent := publishPacket(2, 9, "t", "once")
		resent.Dup = true
		b.write(resent)
		expectRec()
		<-step // the test has seen a single delivery
		rel := packets.NewControlPacket(packets.Pubrel).(*packets.PubrelPacket)
		rel.MessageID = 9
		b.write(rel)
		if comp, ok := b.read().(*packets.PubcompPacket); !ok || comp.MessageID != 9 {
			t.Errorf("broker: got %v, want PUBCOMP for packet 9", comp)
		}
		// Released, packet ID 9 may carry a new message.
		b.write(publishPacket(2, 9, "t", "next"))
		expectRec()
	})
	tl := open(t, client, time.Minute)
	if d := tl.delivered(t); d.payload != "once" {
		t.Fatalf("delivered %+v, want once", d)
	}
	time.Sleep(50 * time.Millisecond) // time for a wrong second delivery
	tl.nothingDelivered(t)
	close(step)
	if d := tl.delivered(t); d.payload != "next" {
		t.Fatalf("delivered %+v, want next", d)
	}
	waitClosed(t, brokerDone, "the broker's last PUBREC")
}

func TestTruncatedPacketFailsTheLink(t *testing.T) {
	client, b := newPipe(t)
	goBroker(t, func() {
		b.accept(packets.Accepted)
		// A PUBLISH whose header promises 50 bytes, of which 10 come.
		if _, err := b.conn.Write([]byte{0x30, 50, 0, 3, 't', '/', 'x', 'a', 'b', 'c'}); err != nil {
			t.Errorf("broker: %v", err)
		}
		b.conn.Close()
	})
	tl := open(t, client, time.Minute)
	if err := tl.lost(t, linkPatience); err == nil {
		t.Fatal("link lost with a nil error")
	}
	tl.nothingDelivered(t)
}

// The broker reads part of a SUBSCRIBE and hangs up.
func TestSubscribeCutShort(t *testing.T) {
	client, b := newPipe(t)
	goBroker(t, func() {
		b.accept(packets.Accepted)
		buf := make([]byte, 3)
		if _, err := b.conn.Read(buf); err != nil {
			t.Errorf("broker: %v", err)
		}
		b.conn.Close()
	})
	tl := open(t, client, time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), linkPatience)
	defer cancel()
	if _, err := tl.subscribe(ctx, []string{"a/#", "b/#"}, []byte{0, 0}); err == nil || ctx.Err() != nil {
		t.Fatalf("subscribe = %v (ctx %v), want an error before the deadline", err, ctx.Err())
	}
	tl.lost(t, linkPatience)
	if _, err := tl.subscribe(ctx, []string{"a/#"}, []byte{0}); !errors.Is(err, errLinkClosed) {
		t.Fatalf("subscribe on the failed link = %v, want errLinkClosed", err)
	}
}

// failingConn fails every Write once armed; reads go on as before.
type failingConn struct {
	net.Conn
	armed atomic.Bool
}

var errInjected = errors.New("injected write failure")

func (c *failingConn) Write(p []byte) (int, error) {
	if c.armed.Load() {
		return 0, errInjected
	}
	return c.Conn.Write(p)
}

// A write error in any request fails the link, and the request says so.
func TestWriteErrorFailsTheLink(t *testing.T) {
	for _, tt := range []struct {
		packet string
		send   func(ctx context.Context, l *link) error // nil: the keep-alive sends
	}{
		{"SUBSCRIBE", func(ctx context.Context, l *link) error {
			_, err := l.subscribe(ctx, []string{"a/#"}, []byte{0})
			return err
		}},
		{"UNSUBSCRIBE", func(ctx context.Context, l *link) error { return l.unsubscribe(ctx, "a/#") }},
		{"PUBLISH", func(_ context.Context, l *link) error { return l.publish("a/b", []byte("x")) }},
		{"PINGREQ", nil},
	} {
		t.Run(tt.packet, func(t *testing.T) {
			client, b := newPipe(t)
			goBroker(t, func() {
				b.accept(packets.Accepted)
				_, _ = packets.ReadPacket(b.conn) // until the device hangs up
			})
			fc := &failingConn{Conn: client}
			keepAlive := time.Minute
			if tt.send == nil {
				keepAlive = 200 * time.Millisecond
			}
			tl := open(t, fc, keepAlive)
			fc.armed.Store(true)
			if tt.send != nil {
				ctx, cancel := context.WithTimeout(t.Context(), linkPatience)
				defer cancel()
				if err := tt.send(ctx, tl.link); !errors.Is(err, errInjected) {
					t.Fatalf("%s = %v, want the write error", tt.packet, err)
				}
			}
			err := tl.lost(t, linkPatience)
			if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "send "+tt.packet) {
				t.Fatalf("link lost with %v, want the %s write error", err, tt.packet)
			}
			if err := tl.publish("a/b", nil); !errors.Is(err, errLinkClosed) || !errors.Is(err, errInjected) {
				t.Fatalf("publish after the failure = %v, want errLinkClosed naming the cause", err)
			}
		})
	}
}

// Cancelling the context aborts a WebSocket dial that is waiting for the
// hub's answer to the upgrade request.
func TestWebSocketDialHonoursContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		<-release // never answers the upgrade while the test runs
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: the handler returns, Close can finish
	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	cs, err := sas.ParseDevice("HostName=" + srv.Listener.Addr().String() + ";DeviceId=d;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHM=")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{ConnectionString: cs, Transport: TransportWebSockets, RootCAs: pool, Proxy: http.ProxyURL(nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	conn, err := c.dialConn(ctx)
	if err == nil {
		conn.Close()
		t.Fatal("dial succeeded against a hub that never upgrades")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("dial = %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the cancelled dial returned after %v (ConnectTimeout is %v)", took, c.cfg.ConnectTimeout)
	}
}
