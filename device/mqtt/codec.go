package mqtt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// The link's own framing of the packets every method call and twin
// request carries: a PUBLISH is read into one buffer (its payload a slice
// of it) and written from one pooled buffer, where paho's packets package
// allocates a buffer per field. Every other packet goes through paho.

// errMalformed is a packet that cannot be decoded; it ends the link.
var errMalformed = errors.New("malformed packet")

// readPacket reads one packet from r. hdr is the caller's scratch byte
// (the link's, so that reads allocate nothing for it).
func readPacket(r io.Reader, hdr *[1]byte) (packets.ControlPacket, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	first := hdr[0]
	n, err := readLength(r, hdr)
	if err != nil {
		return nil, err
	}
	fh := packets.FixedHeader{
		MessageType:     first >> 4,
		Dup:             first>>3&1 == 1,
		Qos:             first >> 1 & 3,
		Retain:          first&1 == 1,
		RemainingLength: n,
	}
	cp, err := packets.NewControlPacketWithHeader(fh)
	if err != nil {
		return nil, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	if pp, ok := cp.(*packets.PublishPacket); ok {
		return pp, unpackPublish(pp, body)
	}
	return cp, cp.Unpack(bytes.NewBuffer(body))
}

// readLength reads MQTT's variable-length Remaining Length (at most four
// bytes).
func readLength(r io.Reader, hdr *[1]byte) (int, error) {
	n := 0
	for shift := 0; shift < 28; shift += 7 {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return 0, err
		}
		n |= int(hdr[0]&0x7f) << shift
		if hdr[0]&0x80 == 0 {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: remaining length over four bytes", errMalformed)
}

// unpackPublish decodes a PUBLISH's variable header and payload from body.
func unpackPublish(p *packets.PublishPacket, body []byte) error {
	if len(body) < 2 {
		return fmt.Errorf("%w: PUBLISH without a topic", errMalformed)
	}
	tl := int(body[0])<<8 | int(body[1])
	rest := body[2:]
	if len(rest) < tl {
		return fmt.Errorf("%w: PUBLISH topic longer than the packet", errMalformed)
	}
	p.TopicName, rest = string(rest[:tl]), rest[tl:]
	if p.Qos > 0 {
		if len(rest) < 2 {
			return fmt.Errorf("%w: PUBLISH without a packet id", errMalformed)
		}
		p.MessageID, rest = uint16(rest[0])<<8|uint16(rest[1]), rest[2:]
	}
	p.Payload = rest
	return nil
}

// appendPublish appends a PUBLISH of payload to topic at QoS qos (with
// packet id id when qos > 0).
func appendPublish(dst []byte, topic string, payload []byte, qos byte, id uint16) []byte {
	n := 2 + len(topic) + len(payload)
	if qos > 0 {
		n += 2
	}
	dst = append(dst, byte(packets.Publish)<<4|qos<<1)
	for {
		b := byte(n & 0x7f)
		if n >>= 7; n > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if n == 0 {
			break
		}
	}
	dst = append(dst, byte(len(topic)>>8), byte(len(topic)))
	dst = append(dst, topic...)
	if qos > 0 {
		dst = append(dst, byte(id>>8), byte(id))
	}
	return append(dst, payload...)
}

// packetBuffers hold outgoing PUBLISH packets while they are written.
var packetBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledPacket keeps the buffers of large packets out of the pool.
const maxPooledPacket = 16 << 10
