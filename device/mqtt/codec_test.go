package mqtt

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestPublishCodec: appendPublish writes what paho writes, and readPacket
// reads back what paho wrote, at the Remaining Length boundaries and both
// QoS levels; other packets still decode through paho.
func TestPublishCodec(t *testing.T) {
	var hdr [1]byte
	for _, size := range []int{0, 1, 100, 127 - 9, 128, 16383, 16384, 200000} {
		for _, qos := range []byte{0, 1} {
			topic := "$iothub/methods/res/200/?$rid=7"
			payload := bytes.Repeat([]byte("x"), size)
			pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
			pp.TopicName, pp.Payload, pp.Qos = topic, payload, qos
			if qos > 0 {
				pp.MessageID = 0x1234
			}
			var want bytes.Buffer
			if err := pp.Write(&want); err != nil {
				t.Fatal(err)
			}
			got := appendPublish(nil, topic, payload, qos, pp.MessageID)
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("size %d qos %d: appendPublish differs from paho's encoding", size, qos)
			}
			p, err := readPacket(bytes.NewReader(want.Bytes()), &hdr)
			if err != nil {
				t.Fatalf("size %d qos %d: %v", size, qos, err)
			}
			rp, ok := p.(*packets.PublishPacket)
			if !ok || rp.TopicName != topic || !bytes.Equal(rp.Payload, payload) || rp.Qos != qos || rp.MessageID != pp.MessageID {
				t.Fatalf("size %d qos %d: read back %v", size, qos, p)
			}
		}
	}
	sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
	sa.MessageID, sa.ReturnCodes = 9, []byte{0, 1, 0x80}
	var b bytes.Buffer
	if err := sa.Write(&b); err != nil {
		t.Fatal(err)
	}
	p, err := readPacket(&b, &hdr)
	if got, ok := p.(*packets.SubackPacket); err != nil || !ok || got.MessageID != 9 || !bytes.Equal(got.ReturnCodes, sa.ReturnCodes) {
		t.Fatalf("SUBACK read back as %v, %v", p, err)
	}
}

// TestReadPacketMalformed: truncated and inconsistent packets are errors,
// never a packet.
func TestReadPacketMalformed(t *testing.T) {
	var hdr [1]byte
	for name, raw := range map[string][]byte{
		"empty":                {},
		"no length":            {0x30},
		"length over 4 bytes":  {0x30, 0xff, 0xff, 0xff, 0xff, 0x01},
		"short body":           {0x30, 0x05, 0x00},
		"no topic length":      {0x30, 0x01, 0x00},
		"topic past the end":   {0x30, 0x04, 0x00, 0x09, 'a', 'b'},
		"qos 1 without an id":  {0x32, 0x03, 0x00, 0x01, 'a'},
		"unknown packet type":  {0x00, 0x00},
		"suback without an id": {0x90, 0x00},
	} {
		p, err := readPacket(bytes.NewReader(raw), &hdr)
		if err == nil {
			t.Errorf("%s: read %v, want an error", name, p)
		}
	}
	_, err := readPacket(bytes.NewReader([]byte{0x30, 0x80, 0x80, 0x80, 0x80}), &hdr)
	if !errors.Is(err, errMalformed) || !strings.Contains(err.Error(), "four bytes") {
		t.Errorf("5-byte length: %v, want errMalformed", err)
	}
}
