package hub_test

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
)

// FuzzPublish sends one QoS 1 PUBLISH with the fuzzed topic and payload as
// a connected device, then a PINGREQ. The hub must never panic or hang:
// within rawReadLimit it either answers the PINGREQ (the connection
// stayed) or closes the connection, and everything it writes is MQTT
// 3.1.1. Malformed topics must close the connection; the device's own
// telemetry within the size limit must be acknowledged.
//
// One hub serves every iteration, and the connection is reused until the
// hub closes it, so an iteration costs one round trip.
func FuzzPublish(f *testing.F) {
	hs := hubtest.NewServer(f, hubtest.WithLogger(zerolog.Nop()))
	dev := sasIdentity(f, hs.CreateDevice(f, "fz"))
	var cur *rawConn
	f.Cleanup(func() {
		if cur != nil {
			_ = cur.c.Close()
		}
	})
	connect := func(t *testing.T) *rawConn {
		c, err := dialRaw(hs, "")
		if err != nil {
			t.Fatal(err)
		}
		if rc := c.connack(t, connectFields{clientID: dev.clientID, username: dev.username, password: dev.password}); rc != 0 {
			t.Fatalf("connect: CONNACK %d", rc)
		}
		c.suback(t, 1, iothub.TwinResFilter, iothub.MethodsFilter)
		return c
	}

	for _, s := range []struct {
		topic   string
		payload string
	}{
		{"devices/fz/messages/events/", `{"t":1}`},
		{iothub.TwinPatchReportedTopic("1"), `{"a":1}`},
		{"$iothub/unknown", ""},
	} {
		f.Add(s.topic, []byte(s.payload))
	}

	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		if len(topic) > 0xffff || len(payload) > hub.MaxMessageSize+4096 {
			t.Skip("does not fit an MQTT packet the hub accepts")
		}
		if cur == nil {
			cur = connect(t)
		}
		c := cur
		_ = c.c.SetWriteDeadline(time.Now().Add(rawReadLimit))
		_, werr := c.c.Write(append(publishPacket(1, 2, topic, payload), pPingreq<<4, 0))
		stayed, acked := false, false
		for werr == nil && !stayed {
			p, err := c.read(t)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("publish to %q (%d bytes): the hub neither answered nor closed within %v: %v", topic, len(payload), rawReadLimit, err)
			}
			switch p.typ {
			case pPuback:
				acked = true
			case pPingresp:
				stayed = true
			}
		}
		if !stayed {
			_ = c.c.Close()
			cur = nil
		}
		malformed := !utf8.ValidString(topic) || strings.ContainsAny(topic, "\x00+#") || topic == ""
		if malformed && stayed {
			t.Fatalf("publish to the malformed topic %q kept the connection", topic)
		}
		rest, own := strings.CutPrefix(topic, "devices/fz/messages/events")
		telemetry := own && (rest == "" || strings.HasPrefix(rest, "/"))
		small := len(payload)+len(strings.TrimPrefix(rest, "/")) <= hub.MaxMessageSize
		if telemetry && small && !malformed && !(stayed && acked) {
			t.Fatalf("telemetry to %q (%d bytes) was not acknowledged (connection kept: %v)", topic, len(payload), stayed)
		}
	})
}
