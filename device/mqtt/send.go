package mqtt

import (
	"context"
	"errors"
	"fmt"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/dmctl/dmctl/internal/iothub"
)

// MaxMessageSize is IoT Hub's bound on a device-to-cloud message: the body
// plus its encoded properties.
const MaxMessageSize = 256 << 10

// ErrNotConnected is returned by SendMessage while Run runs but no
// connection is up (connecting, reconnecting or suspended).
var ErrNotConnected = errors.New("mqtt: not connected to the hub")

// SendMessage sends a device-to-cloud message: body with props (application
// properties, and system properties such as "$.ct" for the content type)
// as the property bag of the identity's events topic (its module's for a
// module), at QoS 1. It returns once the hub acknowledged it (PUBACK), or
// with ctx's error, or the connection's if it is lost first: the message may
// then have arrived or not. It fails at once with ErrClosed when Run is not
// running, ErrNotConnected when no connection is up, and for a message over
// MaxMessageSize or a property with an empty name.
func (c *Conn) SendMessage(ctx context.Context, body []byte, props map[string]string) error {
	for k := range props {
		if k == "" {
			return errors.New("mqtt: message property with an empty name")
		}
	}
	topic := iothub.MessageTopic(c.cs.DeviceID, c.cs.ModuleID, props)
	bag := len(topic) - len(iothub.MessageTopic(c.cs.DeviceID, c.cs.ModuleID, nil))
	if size := len(body) + bag; size > MaxMessageSize {
		return fmt.Errorf("mqtt: message of %d bytes (body and properties) is over IoT Hub's limit of %d", size, MaxMessageSize)
	}
	c.mu.Lock()
	running, s := c.runCtx != nil, c.sess
	c.mu.Unlock()
	switch {
	case !running:
		return ErrClosed
	case s == nil:
		return ErrNotConnected
	}
	p, err := s.link.request(ctx, func(id uint16) packets.ControlPacket {
		pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pp.Qos, pp.MessageID, pp.TopicName, pp.Payload = 1, id, topic, body
		return pp
	})
	if err != nil {
		return fmt.Errorf("send message as %s: %w", identity(c.cs), err)
	}
	if _, ok := p.(*packets.PubackPacket); !ok {
		return fmt.Errorf("send message as %s: hub answered with %s", identity(c.cs), p.String())
	}
	return nil
}

// WaitConnected returns once a connection is up, with ctx's error if ctx
// ends first, or ErrClosed if Run returns first.
func (c *Conn) WaitConnected(ctx context.Context) error {
	for {
		s, up := c.current()
		if s != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return ErrClosed
		case <-up:
		}
	}
}
