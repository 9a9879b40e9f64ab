package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// A link is one MQTT 3.1.1 connection, from CONNACK to close. Packets are
// framed by paho's packets package; the connection itself is kept lean
// because a fleet holds thousands of them: one goroutine reads (and routes
// PUBLISH, SUBACK, UNSUBACK, PUBREL, PINGRESP), writers share a mutex, and
// the keep-alive is a timer that costs no goroutine while it waits.
//
// Any failure ends the link for good: a read error or a malformed or
// truncated packet, a write error in any packet (SUBSCRIBE, UNSUBSCRIBE,
// PUBLISH, PINGREQ, an acknowledgement), a missing PINGRESP. The lost
// callback then runs once and every waiting request returns an error.
//
// Inbound QoS 1 messages are acknowledged (PUBACK, same packet ID) and
// delivered. IoT Hub never sends QoS 2 to a QoS 0 subscription, but MQTT
// 3.1.1 (4.3.3) lets a client receive it, and the link does so the way the
// standard describes: it stores the packet ID, delivers the message once,
// answers PUBREC, and on PUBREL forgets the ID and answers PUBCOMP; a
// resent PUBLISH with a stored ID gets PUBREC again and is not delivered a
// second time.
type link struct {
	conn         net.Conn
	route        func(topic string, payload []byte) // called on the reader goroutine; must not block
	lost         func(error)                        // called once if the link fails before close
	writeTimeout time.Duration
	pingEvery    time.Duration
	pingTimeout  time.Duration

	wmu sync.Mutex // one packet written at a time

	mu      sync.Mutex
	closed  bool  // close called, or the link failed
	err     error // why the link ended; set with closed
	nextID  uint16
	acks    map[uint16]chan packets.ControlPacket // nil while none is waiting
	pingOut bool                                  // a PINGREQ awaits its PINGRESP
	pingAt  time.Time                             // when the last PINGREQ went out
	timer   *time.Timer
	tickMu  sync.Mutex // held by a running keep-alive tick

	qos2 map[uint16]bool // inbound QoS 2 IDs between PUBREC and PUBREL; reader goroutine only; nil when empty
	hdr  [1]byte         // the reader's scratch byte

	dead chan struct{} // closed when the link is closed or failed
	done chan struct{} // closed when the reader has returned
}

// linkConfig is what a link needs besides the connection's Config.
type linkConfig struct {
	clientID, username, password string // password "": none sent
	route                        func(topic string, payload []byte)
	lost                         func(error)
}

// pingTimeoutMax bounds how long a PINGRESP may take.
const pingTimeoutMax = 10 * time.Second

// dialLink connects (TLS or WebSockets), sends CONNECT and waits for a
// CONNACK that accepts, all within ConnectTimeout. Refusals are
// packets.ConnErrors values.
func (c *Conn) dialLink(parent context.Context, lc linkConfig) (*link, error) {
	ctx, cancel := context.WithTimeout(parent, c.cfg.ConnectTimeout)
	defer cancel()
	conn, err := c.dialConn(ctx)
	if err != nil {
		if parent.Err() != nil {
			return nil, parent.Err()
		}
		return nil, err
	}
	l, err := openLink(ctx, conn, lc, c.cfg.KeepAlive, c.cfg.RequestTimeout)
	if err != nil {
		switch {
		case parent.Err() != nil:
			return nil, parent.Err()
		case ctx.Err() != nil:
			return nil, fmt.Errorf("no CONNACK within %s", c.cfg.ConnectTimeout)
		}
		return nil, err
	}
	return l, nil
}

// dialTransport opens the byte stream MQTT runs on: TLS to the target, or
// a WebSocket over TLS (through Config.Proxy). Cancelling ctx aborts it.
func (c *Conn) dialTransport(ctx context.Context) (net.Conn, error) {
	if c.cfg.Transport == TransportWebSockets {
		return dialWebSocket(ctx, c.broker, c.tlsConf, c.cfg.Proxy, c.cfg.LocalAddr)
	}
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: c.cfg.LocalAddr}, Config: c.tlsConf}
	return d.DialContext(ctx, "tcp", c.target)
}

// openLink runs the CONNECT exchange on conn, bounded by ctx, and starts
// the link's reader and keep-alive. conn is closed if it fails.
func openLink(ctx context.Context, conn net.Conn, lc linkConfig, keepAlive, writeTimeout time.Duration) (*link, error) {
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	ack, err := connect(conn, lc, keepAlive)
	if !stop() && err == nil {
		err = ctx.Err() // ctx ended as the CONNACK came: the deadline is spoilt
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	if ack.ReturnCode != packets.Accepted {
		_ = conn.Close()
		if e, ok := packets.ConnErrors[ack.ReturnCode]; ok {
			return nil, e
		}
		return nil, fmt.Errorf("CONNACK return code %d", ack.ReturnCode)
	}
	l := &link{
		conn:         conn,
		route:        lc.route,
		lost:         lc.lost,
		writeTimeout: writeTimeout,
		pingEvery:    keepAlive * 9 / 10, // MQTT: a packet within every keep-alive period
		dead:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	l.pingTimeout = min(l.pingEvery, pingTimeoutMax)
	l.mu.Lock()
	l.timer = time.AfterFunc(l.pingEvery, l.tick)
	l.mu.Unlock()
	go l.read()
	return l, nil
}

// connect writes CONNECT and reads the CONNACK.
func connect(conn net.Conn, lc linkConfig, keepAlive time.Duration) (*packets.ConnackPacket, error) {
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName = "MQTT"
	cp.ProtocolVersion = 4
	cp.CleanSession = false
	cp.ClientIdentifier = lc.clientID
	cp.UsernameFlag = true
	cp.Username = lc.username
	// An x509 identity sends no password (and no password flag), as the
	// SDKs do: the certificate of the TLS handshake authenticates it.
	if lc.password != "" {
		cp.PasswordFlag = true
		cp.Password = []byte(lc.password)
	}
	cp.Keepalive = uint16(min(keepAlive/time.Second, 65535))
	if err := cp.Write(conn); err != nil {
		return nil, err
	}
	p, err := packets.ReadPacket(conn)
	if err != nil {
		return nil, err
	}
	ack, ok := p.(*packets.ConnackPacket)
	if !ok {
		return nil, fmt.Errorf("hub answered CONNECT with %s", p.String())
	}
	return ack, nil
}

// read routes inbound packets until the connection fails or is closed.
// Acknowledgements (SUBACK, UNSUBACK, PUBACK) go to the request waiting
// for their packet ID.
func (l *link) read() {
	defer close(l.done)
	for {
		p, err := readPacket(l.conn, &l.hdr)
		if err != nil {
			l.fail(err)
			return
		}
		switch p := p.(type) {
		case *packets.PublishPacket:
			if !l.receive(p) {
				return
			}
		case *packets.PubrelPacket:
			delete(l.qos2, p.MessageID)
			if len(l.qos2) == 0 {
				l.qos2 = nil
			}
			comp := packets.NewControlPacket(packets.Pubcomp).(*packets.PubcompPacket)
			comp.MessageID = p.MessageID
			if l.write(comp) != nil {
				return
			}
		case *packets.SubackPacket:
			l.ack(p.MessageID, p)
		case *packets.UnsubackPacket:
			l.ack(p.MessageID, p)
		case *packets.PubackPacket: // a QoS 1 device-to-cloud message (SendMessage)
			l.ack(p.MessageID, p)
		case *packets.PingrespPacket:
			l.mu.Lock()
			l.pingOut = false
			l.mu.Unlock()
		}
	}
}

// receive acknowledges and delivers one inbound PUBLISH by its QoS. It
// returns false if the link failed.
func (l *link) receive(p *packets.PublishPacket) bool {
	switch p.Qos {
	case 0:
		l.route(p.TopicName, p.Payload)
	case 1:
		ack := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
		ack.MessageID = p.MessageID
		if l.write(ack) != nil {
			return false
		}
		l.route(p.TopicName, p.Payload)
	case 2:
		if !l.qos2[p.MessageID] {
			if l.qos2 == nil {
				l.qos2 = make(map[uint16]bool)
			}
			l.qos2[p.MessageID] = true
			l.route(p.TopicName, p.Payload)
		}
		rec := packets.NewControlPacket(packets.Pubrec).(*packets.PubrecPacket)
		rec.MessageID = p.MessageID
		if l.write(rec) != nil {
			return false
		}
	default:
		l.fail(fmt.Errorf("PUBLISH with QoS %d", p.Qos))
		return false
	}
	return true
}

// forgetLocked drops the wait for id. A map keeps its table when emptied:
// an idle link holds none.
func (l *link) forgetLocked(id uint16) {
	delete(l.acks, id)
	if len(l.acks) == 0 {
		l.acks = nil
	}
}

func (l *link) ack(id uint16, p packets.ControlPacket) {
	l.mu.Lock()
	ch := l.acks[id]
	l.forgetLocked(id)
	l.mu.Unlock()
	if ch != nil {
		ch <- p // buffered 1, one sender
	}
}

// tick is the keep-alive: a PINGREQ every pingEvery (whatever else was
// sent: one timer, no bookkeeping per packet); a PINGRESP that does not come
// within pingTimeout fails the link.
func (l *link) tick() {
	l.tickMu.Lock()
	defer l.tickMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	if l.pingOut {
		l.mu.Unlock()
		l.fail(errors.New("pingresp not received, disconnecting"))
		return
	}
	now := time.Now()
	if wait := l.pingAt.Add(l.pingEvery).Sub(now); !l.pingAt.IsZero() && wait > 0 {
		l.timer.Reset(wait)
		l.mu.Unlock()
		return
	}
	l.pingOut, l.pingAt = true, now
	l.timer.Reset(l.pingTimeout)
	l.mu.Unlock()
	_ = l.write(packets.NewControlPacket(packets.Pingreq)) // a failure fails the link
}

// write sends one packet, bounded by writeTimeout. A write that fails
// fails the link: the packet may be half sent, so the stream is unusable.
func (l *link) write(p packets.ControlPacket) error {
	l.wmu.Lock()
	_ = l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	err := p.Write(l.conn)
	l.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("send %s: %w", packetName(p), err)
		l.fail(err)
	}
	return err
}

func packetName(p packets.ControlPacket) string {
	switch p.(type) {
	case *packets.SubscribePacket:
		return "SUBSCRIBE"
	case *packets.UnsubscribePacket:
		return "UNSUBSCRIBE"
	case *packets.PublishPacket:
		return "PUBLISH"
	case *packets.PingreqPacket:
		return "PINGREQ"
	case *packets.PubackPacket:
		return "PUBACK"
	case *packets.PubrecPacket:
		return "PUBREC"
	case *packets.PubcompPacket:
		return "PUBCOMP"
	}
	return fmt.Sprintf("%T", p)
}

// fail ends a link that broke; the lost callback runs unless close came first.
func (l *link) fail(err error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed, l.err = true, err
	l.timer.Stop()
	close(l.dead)
	l.mu.Unlock()
	_ = l.conn.Close()
	l.lost(err)
}

var errLinkClosed = errors.New("connection closed")

// failure is the error a request on an ended link returns.
func (l *link) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil || l.err == errLinkClosed {
		return errLinkClosed
	}
	return fmt.Errorf("%w: %w", errLinkClosed, l.err)
}

// request writes a packet that the hub acknowledges by message ID and waits
// for the acknowledgement.
func (l *link) request(ctx context.Context, build func(id uint16) packets.ControlPacket) (packets.ControlPacket, error) {
	ch := make(chan packets.ControlPacket, 1)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, l.failure()
	}
	for {
		l.nextID++
		if _, used := l.acks[l.nextID]; l.nextID != 0 && !used {
			break
		}
	}
	id := l.nextID
	if l.acks == nil {
		l.acks = make(map[uint16]chan packets.ControlPacket)
	}
	l.acks[id] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.forgetLocked(id)
		l.mu.Unlock()
	}()
	if err := l.write(build(id)); err != nil {
		return nil, err
	}
	select {
	case p := <-ch:
		return p, nil
	case <-l.dead:
		return nil, l.failure()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// subscribe subscribes to filters and returns the granted QoS of each
// (0x80: refused).
func (l *link) subscribe(ctx context.Context, filters []string, qos []byte) ([]byte, error) {
	p, err := l.request(ctx, func(id uint16) packets.ControlPacket {
		sp := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
		sp.MessageID, sp.Topics, sp.Qoss = id, filters, qos
		return sp
	})
	if err != nil {
		return nil, err
	}
	sa, ok := p.(*packets.SubackPacket)
	if !ok || len(sa.ReturnCodes) != len(filters) {
		return nil, errors.New("malformed SUBACK")
	}
	return sa.ReturnCodes, nil
}

// unsubscribe removes a subscription and waits for the hub's UNSUBACK.
func (l *link) unsubscribe(ctx context.Context, filter string) error {
	_, err := l.request(ctx, func(id uint16) packets.ControlPacket {
		up := packets.NewControlPacket(packets.Unsubscribe).(*packets.UnsubscribePacket)
		up.MessageID, up.Topics = id, []string{filter}
		return up
	})
	return err
}

// publish sends a QoS 0 message.
func (l *link) publish(topic string, payload []byte) error {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return l.failure()
	}
	if len(topic) > 0xffff {
		return fmt.Errorf("send PUBLISH: topic of %d bytes", len(topic))
	}
	bp := packetBuffers.Get().(*[]byte)
	*bp = appendPublish((*bp)[:0], topic, payload, 0, 0)
	err := l.writeRaw("PUBLISH", *bp)
	if cap(*bp) <= maxPooledPacket {
		packetBuffers.Put(bp)
	}
	return err
}

// writeRaw sends one encoded packet, as write does.
func (l *link) writeRaw(name string, b []byte) error {
	l.wmu.Lock()
	_ = l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	_, err := l.conn.Write(b)
	l.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("send %s: %w", name, err)
		l.fail(err)
	}
	return err
}

// close sends DISCONNECT (planned) or not, closes the connection and waits
// for the reader and any keep-alive tick to finish. lost is not called.
func (l *link) close(planned bool) {
	l.mu.Lock()
	wasOpen := !l.closed
	if wasOpen {
		l.closed, l.err = true, errLinkClosed
		l.timer.Stop()
		close(l.dead)
	}
	l.mu.Unlock()
	if wasOpen && planned {
		l.wmu.Lock()
		_ = l.conn.SetWriteDeadline(time.Now().Add(250 * time.Millisecond))
		_ = packets.NewControlPacket(packets.Disconnect).Write(l.conn)
		l.wmu.Unlock()
	}
	_ = l.conn.Close()
	<-l.done
	// Wait for a keep-alive tick that was already running: it sees closed
	// (or a closed connection) and returns.
	l.tickMu.Lock()
	l.tickMu.Unlock() //nolint:staticcheck // the wait is the point
}
