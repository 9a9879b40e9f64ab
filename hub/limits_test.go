package hub

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestPublishAllowed(t *testing.T) {
	cases := []struct {
		key, topic string
		want       bool
	}{
		{"d1", "devices/d1/messages/events/", true},
		{"d1", "devices/d1/messages/events", true},
		{"d1", "devices/d1/messages/events/a=b&%24.ct=json", true},
		{"d1", "devices/d1/messages/eventsX", false},
		{"d1", "devices/d1/messages/devicebound/", false},
		{"d1", "devices/d1/modules/m1/messages/events/", false},
		{"d1/m1", "devices/d1/modules/m1/messages/events/", true},
		{"d1/m1", "devices/d1/messages/events/", false},
		{"d1", "$iothub/methods/res/200/?$rid=1", true},
		{"d1", "$iothub/methods/res/200/", false},
		{"d1", "$iothub/twin/GET/?$rid=1", true},
		{"d1", "$iothub/twin/PATCH/properties/reported/?$rid=1", true},
		{"d1", "$iothub/twin/PATCH/properties/desired/?$rid=1", false},
		{"d1", "$iothub/twin/res/200/?$rid=1", false},
		{"d1", "$iothub/methods/POST/m/?$rid=1", false},
		{"d1", "$SYS/x", false},
	}
	for _, tc := range cases {
		if got := publishAllowed(tc.key, tc.topic); got != tc.want {
			t.Errorf("publishAllowed(%q, %q) = %v", tc.key, tc.topic, got)
		}
	}
}

func TestMessageSize(t *testing.T) {
	for _, tc := range []struct {
		key, topic string
		want       int
	}{
		{"d1", "devices/d1/messages/events/", 3},
		{"d1", "devices/d1/messages/events", 3},
		{"d1", "devices/d1/messages/events/a=b", 6},
		{"d1/m", "devices/d1/modules/m/messages/events/k=v&x=y", 10},
	} {
		if got := messageSize(tc.key, tc.topic, []byte("abc")); got != tc.want {
			t.Errorf("messageSize(%q, %q) = %d, want %d", tc.key, tc.topic, got, tc.want)
		}
	}
}

func TestTo311(t *testing.T) {
	dis := to311(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0x8e})
	if dis.FixedHeader.Type != packets.Reserved {
		t.Errorf("DISCONNECT kept type %d", dis.FixedHeader.Type)
	}
	for code, want := range map[byte]byte{0: 0, 1: 1, 5: 5, 0x80: 2, 0x85: 2} {
		ack := to311(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code})
		if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != want {
			t.Errorf("CONNACK %#x became type %d code %#x, want %#x", code, ack.FixedHeader.Type, ack.ReasonCode, want)
		}
	}
	if ack := to311(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: 0x82}); ack.FixedHeader.Type != packets.Reserved {
		t.Errorf("CONNACK 0x82 is written")
	}
	in := []byte{0, 1, 2, 0x80, 0x87, 0x8f}
	sub := to311(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, ReasonCodes: in})
	if string(sub.ReasonCodes) != "\x00\x01\x02\x80\x80\x80" {
		t.Errorf("SUBACK codes % x", sub.ReasonCodes)
	}
	if in[4] != 0x87 {
		t.Error("to311 changed mochi's slice")
	}
}
