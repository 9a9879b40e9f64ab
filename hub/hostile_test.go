package hub_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// The hostile-client suite: raw MQTT packets over real TLS connections to
// a real hub, one test per class of misbehaviour.

// waitFor polls cond every 20 ms until it holds, failing after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after 10s waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ownFilters(dev string, from, n int) []string {
	fs := make([]string, n)
	for i := range fs {
		fs[i] = fmt.Sprintf("devices/%s/messages/devicebound/f%d/#", dev, from+i)
	}
	return fs
}

func TestHostileSubscriptionCap(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	id := sasIdentity(t, hs.CreateDevice(t, "d1"))
	c := rawConnect(t, hs, id)

	long := "devices/d1/messages/devicebound/" + strings.Repeat("x", hub.MaxFilterLen)
	if codes := c.suback(t, 1, long); codes[0] != 0x80 {
		t.Fatalf("a %d-byte filter got SUBACK %#x, want 0x80", len(long), codes[0])
	}
	// Up to the cap, every filter is granted.
	for i, code := range c.suback(t, 2, ownFilters("d1", 0, hub.MaxSubscriptions)...) {
		if code != 0 {
			t.Fatalf("filter %d of the first %d refused: %#x", i, hub.MaxSubscriptions, code)
		}
	}
	// Past it, new filters are refused; one the session holds is granted
	// again.
	codes := c.suback(t, 3, append(ownFilters("d1", hub.MaxSubscriptions, 3), ownFilters("d1", 0, 1)...)...)
	if string(codes) != "\x80\x80\x80\x00" {
		t.Fatalf("past the cap: SUBACK % x, want 80 80 80 00", codes)
	}
	if n, idx := hs.Hub().MQTTSubscriptions("d1"); n != hub.MaxSubscriptions || idx != hub.MaxSubscriptions {
		t.Fatalf("session holds %d filters, index %d; want %d", n, idx, hub.MaxSubscriptions)
	}
	// A SUBSCRIBE with more filters than a session may hold closes the
	// connection without a SUBACK.
	c.send(t, subscribePacket(4, ownFilters("d1", 100, hub.MaxSubscriptions+1)...))
	c.expectClosed(t, "SUBSCRIBE with too many filters", pSuback)
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}

	// The session kept after a clean session 0 disconnect holds the cap,
	// and a new connection inherits it, cap included.
	if n, idx := hs.Hub().MQTTSubscriptions("d1"); n > hub.MaxSubscriptions || idx > hub.MaxSubscriptions {
		t.Fatalf("kept session holds %d filters, index %d; want at most %d", n, idx, hub.MaxSubscriptions)
	}
	c2 := rawConnect(t, hs, id)
	if codes := c2.suback(t, 5, ownFilters("d1", 200, 2)...); string(codes) != "\x80\x80" {
		t.Fatalf("after reconnecting: SUBACK % x, want 80 80", codes)
	}
	c2.send(t, []byte{pDisconnect << 4, 0})
	c2.expectClosed(t, "DISCONNECT")
	waitFor(t, "d1 to be disconnected", func() bool { return !hs.Connected("d1") })
	if n, idx := hs.Hub().MQTTSubscriptions("d1"); n > hub.MaxSubscriptions || idx > hub.MaxSubscriptions {
		t.Fatalf("kept session holds %d filters, index %d; want at most %d", n, idx, hub.MaxSubscriptions)
	}
}

// otherHostToken signs a token for the device of cs whose sr names host.
func otherHostToken(t *testing.T, cs, host string) string {
	t.Helper()
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	c.HostName = host
	tok, err := c.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestHostileAudience(t *testing.T) {
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	id := sasIdentity(t, cs)
	const evil = "evil.example"
	cases := []struct {
		name, sni, username, password string
		want                          byte
	}{
		{"own names", "", id.username, id.password, 0},
		{"username with a port", "", "localhost:" + fmt.Sprint(hs.Port()) + "/d1/?api-version=" + iothub.APIVersion, id.password, 0},
		{"token for another host, sent with that server name", evil, id.username, otherHostToken(t, cs, evil), 5},
		{"token for another host", "", id.username, otherHostToken(t, cs, evil), 5},
		{"username naming another host", "", iothub.Username(evil, "d1", "", ""), id.password, 5},
		{"username naming another host, sent with that server name", evil, iothub.Username(evil, "d1", "", ""), id.password, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, hs, tc.sni)
			if rc := c.connack(t, connectFields{clientID: "d1", username: tc.username, password: tc.password}); rc != tc.want {
				t.Fatalf("CONNACK %d, want %d", rc, tc.want)
			}
		})
	}
}

func TestHostileProtocolVersion(t *testing.T) {
	hs := hubtest.NewServer(t)
	id := sasIdentity(t, hs.CreateDevice(t, "d1"))
	for _, tc := range []struct {
		name  string
		proto string
		level byte
	}{{"MQTT 5", "MQTT", 5}, {"MQTT 3.1", "MQIsdp", 3}, {"unknown level", "MQTT", 9}} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, hs, "")
			f := connectFields{name: tc.proto, level: tc.level, clean: true, clientID: id.clientID, username: id.username, password: id.password}
			if rc := c.connack(t, f); rc != 1 {
				t.Fatalf("CONNACK %d, want 1 (unacceptable protocol version)", rc)
			}
			c.expectClosed(t, "refused CONNECT")
		})
	}
	t.Run("malformed CONNECT", func(t *testing.T) {
		// The reserved flag bit set: 3.1.1 closes without a CONNACK.
		c := rawDial(t, hs, "")
		c.send(t, connectPacket(connectFields{flags: 0x01, clientID: id.clientID, username: id.username, password: id.password}))
		c.expectClosed(t, "malformed CONNECT", pConnack)
	})
	t.Run("empty client id with clean session 0", func(t *testing.T) {
		c := rawDial(t, hs, "")
		if rc := c.connack(t, connectFields{username: id.username, password: id.password}); rc != 2 {
			t.Fatalf("CONNACK %d, want 2 (identifier rejected)", rc)
		}
	})
	t.Run("takeover", func(t *testing.T) {
		old := rawConnect(t, hs, id)
		old.suback(t, 1, iothub.MethodsFilter)
		rawConnect(t, hs, id)
		old.expectClosed(t, "the replaced connection")
	})
	t.Run("refused publish", func(t *testing.T) {
		c := rawConnect(t, hs, id)
		c.send(t, publishPacket(1, 7, "devices/other/messages/events/", []byte("x")))
		c.expectClosed(t, "forbidden publish", pPuback)
	})
	t.Run("shutdown", func(t *testing.T) {
		c := rawConnect(t, hs, id)
		c.alive(t, "before shutdown")
		if err := hs.Close(); err != nil {
			t.Fatal(err)
		}
		c.expectClosed(t, "hub shutdown")
	})
}

func TestHostileMessageSize(t *testing.T) {
	hs := hubtest.NewServer(t)
	dev := sasIdentity(t, hs.CreateDevice(t, "d1"))
	mod := sasIdentity(t, hs.CreateModule(t, "d1", "m1"))
	for _, tc := range []struct {
		name, topic string
		id          identity
		props       int
	}{
		{"device", "devices/d1/messages/events/", dev, 0},
		{"device with properties", "devices/d1/messages/events/a=b&c=d", dev, len("a=b&c=d")},
		{"module", "devices/d1/modules/m1/messages/events/", mod, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConnect(t, hs, tc.id)
			limit := hub.MaxMessageSize - tc.props
			c.send(t, publishPacket(1, 1, tc.topic, make([]byte, limit)))
			if p := c.expect(t, pPuback, "PUBACK of a message at the limit"); binary.BigEndian.Uint16(p.body) != 1 {
				t.Fatalf("PUBACK for packet %d", binary.BigEndian.Uint16(p.body))
			}
			c.send(t, publishPacket(1, 2, tc.topic, make([]byte, limit+1)))
			c.expectClosed(t, "message one byte over the limit", pPuback)
		})
	}
}

func TestHostileMethodResponseSize(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	c := rawConnect(t, hs, sasIdentity(t, hs.CreateDevice(t, "d1")))
	c.suback(t, 1, iothub.MethodsFilter)

	type result struct {
		status int
		body   []byte
		err    error
	}
	call := func(size int) result {
		done := make(chan result, 1)
		go func() {
			s, b, err := hs.Hub().Devices().Invoke(ctx, "d1", "big", []byte("null"), 0, 20*time.Second)
			done <- result{s, b, err}
		}()
		req := c.expect(t, pPublish, "the method request")
		topic := string(req.body[2 : 2+binary.BigEndian.Uint16(req.body)])
		_, rid, ok := iothub.ParseMethodRequestTopic(topic)
		if !ok {
			t.Fatalf("method request topic %q", topic)
		}
		body := `"` + strings.Repeat("x", size-2) + `"`
		c.send(t, publishPacket(1, 9, iothub.MethodResponseTopic(200, rid), []byte(body)))
		select {
		case r := <-done:
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("the call answered with %d bytes did not end within 10s", size)
		}
		return result{}
	}

	r := call(iothub.MaxMethodPayload)
	if r.err != nil || r.status != 200 || len(r.body) != iothub.MaxMethodPayload {
		t.Fatalf("answer at the limit: status %d, %d bytes, %v", r.status, len(r.body), r.err)
	}
	c.expect(t, pPuback, "PUBACK of the answer at the limit")

	r = call(iothub.MaxMethodPayload + 1)
	if !errors.Is(r.err, hubapi.ErrResponseTooLarge) {
		t.Fatalf("answer one byte over the limit: status %d, %d bytes, %v; want ErrResponseTooLarge", r.status, len(r.body), r.err)
	}
	// The answer is dropped; the device stays connected.
	c.expect(t, pPuback, "PUBACK of the dropped answer")
	c.alive(t, "after the dropped answer")
}

func TestHostileUTF8(t *testing.T) {
	hs := hubtest.NewServer(t)
	id := sasIdentity(t, hs.CreateDevice(t, "d1"))
	for _, tc := range []struct{ name, username string }{
		{"NUL in username", strings.Replace(id.username, "/d1/", "/d1\x00/", 1)},
		{"invalid UTF-8 in username", strings.Replace(id.username, "/d1/", "/d1\xff/", 1)},
		{"NUL in username host", "local\x00host/d1/?api-version=" + iothub.APIVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, hs, "")
			if rc := c.connack(t, connectFields{clientID: "d1", username: tc.username, password: id.password}); rc != 5 {
				t.Fatalf("CONNACK %d, want 5", rc)
			}
		})
	}
	for _, tc := range []struct{ name, clientID string }{
		{"NUL in client id", "d1\x00"},
		{"invalid UTF-8 in client id", "d1\xc3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Malformed strings are a protocol error: closed, no CONNACK.
			c := rawDial(t, hs, "")
			c.send(t, connectPacket(connectFields{clientID: tc.clientID, username: id.username, password: id.password}))
			c.expectClosed(t, tc.name, pConnack)
		})
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"NUL in publish topic", publishPacket(1, 1, "devices/d1/messages/events/\x00", []byte("x"))},
		{"invalid UTF-8 in publish topic", publishPacket(0, 0, "devices/d1/messages/events/\xff", []byte("x"))},
		{"invalid UTF-8 in twin topic", publishPacket(0, 0, "$iothub/twin/GET/?$rid=\xfe", nil)},
		{"NUL in subscribe filter", subscribePacket(1, "$iothub/methods/POST/\x00")},
		{"invalid UTF-8 in subscribe filter", subscribePacket(1, "devices/d1/messages/devicebound/\xc0#")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConnect(t, hs, id)
			c.send(t, tc.pkt)
			c.expectClosed(t, tc.name, pPuback, pSuback)
		})
	}
	t.Run("invalid UTF-8 in reported properties", func(t *testing.T) {
		c := rawConnect(t, hs, id)
		c.suback(t, 1, iothub.TwinResFilter)
		c.send(t, publishPacket(0, 0, iothub.TwinPatchReportedTopic("r1"), []byte("{\"a\":\"\xff\xfe\"}")))
		p := c.expect(t, pPublish, "the twin response")
		topic := string(p.body[2 : 2+binary.BigEndian.Uint16(p.body)])
		status, rid, _, ok := iothub.ParseTwinResponseTopic(topic)
		if !ok || status != 400 || rid != "r1" {
			t.Fatalf("twin response %q, want status 400 for r1", topic)
		}
		twin, err := hs.Store().DeviceTwin("d1")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(twin), `"a"`) {
			t.Fatalf("the refused patch reached the twin: %s", twin)
		}
	})
}

func TestHostileForbiddenPublish(t *testing.T) {
	hs := hubtest.NewServer(t)
	dev := sasIdentity(t, hs.CreateDevice(t, "d1"))
	hs.CreateDevice(t, "d2")
	mod := sasIdentity(t, hs.CreateModule(t, "d1", "m1"))
	cases := []struct {
		who   string
		id    identity
		topic string
	}{
		{"device", dev, "devices/d2/messages/events/"},
		{"device", dev, "devices/d1/messages/devicebound/"},
		{"device", dev, "devices/d1/other"},
		{"device", dev, "devices/d1/modules/m1/messages/events/"},
		{"device", dev, "$iothub/unknown"},
		{"device", dev, "$iothub/twin/GET/"},
		{"device", dev, "$iothub/twin/PATCH/properties/desired/?$rid=1"},
		{"device", dev, "$iothub/methods/res/abc/?$rid=1"},
		{"device", dev, "$iothub/methods/POST/m/?$rid=1"},
		{"device", dev, "$SYS/broker"},
		{"device", dev, "other"},
		{"module", mod, "devices/d1/messages/events/"},
		{"module", mod, "devices/d1/modules/m2/messages/events/"},
		{"module", mod, "$iothub/twin/res/200/?$rid=1"},
	}
	for _, tc := range cases {
		for _, qos := range []byte{0, 1} {
			t.Run(fmt.Sprintf("%s QoS %d %s", tc.who, qos, tc.topic), func(t *testing.T) {
				c := rawConnect(t, hs, tc.id)
				c.send(t, publishPacket(qos, uint16(qos), tc.topic, []byte("x")))
				c.expectClosed(t, "forbidden publish", pPuback)
			})
		}
	}
	// The topics a device may publish to keep it connected.
	c := rawConnect(t, hs, dev)
	for i, topic := range []string{"devices/d1/messages/events/", "devices/d1/messages/events/a=1", iothub.TwinGetTopic("1"), iothub.TwinPatchReportedTopic("2"), iothub.MethodResponseTopic(200, "3")} {
		c.send(t, publishPacket(1, uint16(i+1), topic, []byte("{}")))
		c.expect(t, pPuback, "PUBACK of "+topic)
	}
	m := rawConnect(t, hs, mod)
	m.send(t, publishPacket(1, 1, "devices/d1/modules/m1/messages/events/", []byte("{}")))
	m.expect(t, pPuback, "PUBACK of the module's telemetry")
}
