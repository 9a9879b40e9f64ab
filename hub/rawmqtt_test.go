package hub_test

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// A raw MQTT client for hostile tests: it writes packets byte by byte, so
// a test can send what no well-behaved library would, and it checks that
// everything the hub writes back is MQTT 3.1.1.

// MQTT packet types (high nibble of the first byte).
const (
	pConnect     = 1
	pConnack     = 2
	pPublish     = 3
	pPuback      = 4
	pSubscribe   = 8
	pSuback      = 9
	pUnsuback    = 11
	pPingreq     = 12
	pPingresp    = 13
	pDisconnect  = 14
	rawReadLimit = 5 * time.Second // one read of a reply
)

type rawConn struct {
	c net.Conn
	r *bufio.Reader
}

type rawPacket struct {
	typ   byte
	flags byte
	body  []byte
}

func (p rawPacket) String() string {
	return fmt.Sprintf("type %d flags %#x body % x", p.typ, p.flags, p.body)
}

// rawDial opens a TLS connection to the hub, asking for serverName, and
// closes it when the test ends.
func rawDial(t testing.TB, hs *hubtest.Server, serverName string) *rawConn {
	t.Helper()
	c, err := dialRaw(hs, serverName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.c.Close() })
	return c
}

// dialRaw opens a TLS connection to the hub; the caller closes it.
func dialRaw(hs *hubtest.Server, serverName string) (*rawConn, error) {
	tc := tlsConfig(hs)
	if serverName != "" && serverName != "localhost" {
		// The hub's certificate does not name it; the test is about what
		// the hub does with the name, not about the certificate.
		tc.ServerName, tc.InsecureSkipVerify = serverName, true
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", hs.Addr(), tc)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", hs.Addr(), err)
	}
	return &rawConn{c: c, r: bufio.NewReader(c)}, nil
}

func mqttStr(s string) []byte {
	return binary.BigEndian.AppendUint16(nil, uint16(len(s))) //nolint:gosec // tests keep strings short
}

func appendStr(b []byte, s string) []byte { return append(append(b, mqttStr(s)...), s...) }

// frame builds a packet: first byte, remaining length, body.
func frame(first byte, body []byte) []byte {
	out := []byte{first}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

type connectFields struct {
	name     string // protocol name; "MQTT" if empty
	level    byte   // protocol level; 4 if 0
	flags    byte   // extra flag bits (reserved bit tests); clean, username and password are set from the fields
	clean    bool
	clientID string
	username string
	password string
}

func connectPacket(f connectFields) []byte {
	if f.name == "" {
		f.name = "MQTT"
	}
	if f.level == 0 {
		f.level = 4
	}
	flags := f.flags
	if f.clean {
		flags |= 0x02
	}
	if f.username != "" {
		flags |= 0x80
	}
	if f.password != "" {
		flags |= 0x40
	}
	b := appendStr(nil, f.name)
	b = append(b, f.level, flags, 0, 60)
	if f.level == 5 {
		b = append(b, 0) // no properties
	}
	b = appendStr(b, f.clientID)
	if f.username != "" {
		b = appendStr(b, f.username)
	}
	if f.password != "" {
		b = appendStr(b, f.password)
	}
	return frame(pConnect<<4, b)
}

func subscribePacket(id uint16, filters ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	for _, f := range filters {
		b = append(appendStr(b, f), 0)
	}
	return frame(pSubscribe<<4|0x02, b)
}

func publishPacket(qos byte, id uint16, topic string, payload []byte) []byte {
	b := appendStr(nil, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return frame(pPublish<<4|qos<<1, append(b, payload...))
}

func (c *rawConn) send(t testing.TB, b []byte) {
	t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// read returns the next packet, io.EOF once the hub closed the connection,
// or a timeout error after rawReadLimit. Every packet is checked to be one
// an MQTT 3.1.1 server may send.
func (c *rawConn) read(t testing.TB) (rawPacket, error) {
	t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(rawReadLimit))
	first, err := c.r.ReadByte()
	if err != nil {
		return rawPacket{}, closedErr(err)
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		d, err := c.r.ReadByte()
		if err != nil {
			return rawPacket{}, closedErr(err)
		}
		n += int(d&0x7f) * mult
		mult *= 128
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			t.Fatalf("hub sent a remaining length of more than 4 bytes")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return rawPacket{}, closedErr(err)
	}
	p := rawPacket{typ: first >> 4, flags: first & 0x0f, body: body}
	if why := not311(p); why != "" {
		t.Errorf("hub sent a packet MQTT 3.1.1 does not have: %s (%v)", why, p)
	}
	return p, nil
}

// closedErr folds the ways a closed connection reads (EOF, reset) into
// io.EOF; a timeout stays what it is.
func closedErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return io.EOF
}

// not311 says why p is not a packet an MQTT 3.1.1 server sends, or "".
func not311(p rawPacket) string {
	switch p.typ {
	case pConnack:
		if len(p.body) != 2 || p.flags != 0 || p.body[0] > 1 || p.body[1] > 5 {
			return "CONNACK with an MQTT 5 reason code or properties"
		}
	case pPublish:
		if p.flags&0x06 == 0x06 {
			return "PUBLISH with QoS 3"
		}
	case pPuback, pUnsuback:
		if len(p.body) != 2 || p.flags != 0 {
			return "acknowledgement with an MQTT 5 reason code or properties"
		}
	case pSuback:
		if len(p.body) < 3 || p.flags != 0 {
			return "malformed SUBACK"
		}
		for _, code := range p.body[2:] {
			if code > 2 && code != 0x80 {
				return fmt.Sprintf("SUBACK return code %#x", code)
			}
		}
	case pPingresp:
		if len(p.body) != 0 {
			return "PINGRESP with a body"
		}
	case pDisconnect:
		return "DISCONNECT from the server"
	default:
		return fmt.Sprintf("packet type %d", p.typ)
	}
	return ""
}

// expect reads the next packet and fails unless it has type typ.
func (c *rawConn) expect(t testing.TB, typ byte, what string) rawPacket {
	t.Helper()
	p, err := c.read(t)
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	if p.typ != typ {
		t.Fatalf("waiting for %s: got %v", what, p)
	}
	return p
}

// expectClosed reads until the hub closes the connection, failing if it
// does not within rawReadLimit or sends a packet of one of the types
// given as forbidden.
func (c *rawConn) expectClosed(t testing.TB, what string, forbidden ...byte) {
	t.Helper()
	for {
		p, err := c.read(t)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: connection still open after %v: %v", what, rawReadLimit, err)
		}
		for _, f := range forbidden {
			if p.typ == f {
				t.Fatalf("%s: hub answered %v before closing", what, p)
			}
		}
	}
}

// connack sends CONNECT and returns the CONNACK return code.
func (c *rawConn) connack(t testing.TB, f connectFields) byte {
	t.Helper()
	c.send(t, connectPacket(f))
	p := c.expect(t, pConnack, "CONNACK")
	return p.body[1]
}

// alive sends PINGREQ and waits for PINGRESP, skipping other packets.
func (c *rawConn) alive(t testing.TB, what string) {
	t.Helper()
	c.send(t, []byte{pPingreq << 4, 0})
	for {
		p, err := c.read(t)
		if err != nil {
			t.Fatalf("%s: connection lost: %v", what, err)
		}
		if p.typ == pPingresp {
			return
		}
	}
}

// identity is what a raw client needs to log in as a device or module.
type identity struct {
	clientID, username, password string
}

func sasIdentity(t testing.TB, cs string) identity {
	t.Helper()
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return identity{
		clientID: iothub.ClientID(c.DeviceID, c.ModuleID),
		username: iothub.Username(c.HostName, c.DeviceID, c.ModuleID, ""),
		password: tok,
	}
}

// rawConnect logs in as id (clean session 0) and fails unless accepted.
func rawConnect(t testing.TB, hs *hubtest.Server, id identity) *rawConn {
	t.Helper()
	c := rawDial(t, hs, "")
	if rc := c.connack(t, connectFields{clientID: id.clientID, username: id.username, password: id.password}); rc != 0 {
		t.Fatalf("connect %s: CONNACK %d", id.clientID, rc)
	}
	return c
}

// suback subscribes and returns the SUBACK return codes.
func (c *rawConn) suback(t testing.TB, id uint16, filters ...string) []byte {
	t.Helper()
	c.send(t, subscribePacket(id, filters...))
	p := c.expect(t, pSuback, "SUBACK")
	if got := binary.BigEndian.Uint16(p.body); got != id {
		t.Fatalf("SUBACK for packet %d, want %d", got, id)
	}
	return p.body[2:]
}
