package hub

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Bounds on what one MQTT client may make the hub hold or do. docs/hub.md
// ("Limits") documents each.
const (
	// maxSubscriptions is the number of topic filters one identity's
	// session may hold. IoT Hub's device side needs four (methods, twin
	// responses, desired patches, cloud-to-device); the rest is headroom.
	// Filters past the cap are refused with SUBACK 0x80; a SUBSCRIBE
	// carrying more filters than the cap closes the connection.
	maxSubscriptions = 50
	// maxFilterLen bounds a topic filter in bytes: the longest one IoT Hub
	// defines, a module's "devices/{128}/modules/{128}/messages/devicebound/#",
	// is under 300. Longer filters are refused with SUBACK 0x80.
	maxFilterLen = 512
	// maxMessageSize is IoT Hub's device-to-cloud message limit, 256 KB,
	// counted as the payload plus the property bag of the topic (IoT
	// Hub counts the application and system properties into the message
	// size). A larger message is not acknowledged: the connection closes.
	maxMessageSize = 256 << 10
)

// mqttLevel311 is the protocol level of MQTT 3.1.1, the only version IoT
// Hub's device endpoint speaks.
const mqttLevel311 = 4

var (
	errProtocolVersion  = errors.New("hub: only MQTT 3.1.1 is supported")
	errForbiddenPublish = errors.New("hub: publish to a topic the identity may not use")
	errMessageTooLarge  = errors.New("hub: device-to-cloud message over 256 KB")
	errTooManyFilters   = errors.New("hub: too many filters in one SUBSCRIBE")
	errQoS2             = errors.New("hub: QoS 2 publish is not supported")
)

// refuseVersion answers a CONNECT that is not MQTT 3.1.1 as a 3.1.1 server
// must ([MQTT-3.1.2-2]): CONNACK return code 1 (unacceptable protocol
// version), encoded as 3.1.1 whatever the client spoke, then the
// connection closes. A CONNECT whose protocol name is neither "MQTT" nor
// "MQIsdp" is not MQTT at all and is closed without an answer.
func refuseVersion(cl *mqtt.Client, pk packets.Packet) error {
	name := string(pk.Connect.ProtocolName)
	if name == "MQTT" || name == "MQIsdp" {
		ack := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connack},
			ReasonCode:      packets.Err3UnsupportedProtocolVersion.Code,
			ProtocolVersion: mqttLevel311,
		}
		var buf bytes.Buffer
		if err := ack.ConnackEncode(&buf); err == nil {
			cl.Lock()
			_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			_, _ = cl.Net.Conn.Write(buf.Bytes())
			cl.Unlock()
		}
	}
	return fmt.Errorf("protocol %q level %d: %w: %w", name, pk.ProtocolVersion, errProtocolVersion, packets.ErrRejectPacket)
}

// publishAllowed is the ACL for a device's or module's publishes: its own
// device-to-cloud topic, method responses, and twin GET and reported
// PATCH requests. Anything else, including every other $iothub topic,
// closes the connection (checkPublish).
func publishAllowed(key, topic string) bool {
	switch {
	case isTelemetry(key, topic):
		return true
	case strings.HasPrefix(topic, "$iothub/methods/res/"):
		_, _, ok := iothub.ParseMethodResponseTopic(topic)
		return ok
	case strings.HasPrefix(topic, "$iothub/twin/"):
		_, _, ok := iothub.ParseTwinRequestTopic(topic)
		return ok
	}
	return false
}

// messageSize is a device-to-cloud message's size as IoT Hub counts it:
// the payload plus the property bag that follows "messages/events/".
func messageSize(key, topic string, payload []byte) int {
	rest, _ := strings.CutPrefix(topic, ownSpace(key)+"messages/events")
	return len(payload) + len(strings.TrimPrefix(rest, "/"))
}

// checkPublish runs on every PUBLISH a client sends, before mochi
// acknowledges it: a QoS 2 publish, a topic outside publishAllowed and a
// device-to-cloud message over maxMessageSize each end the connection at
// once, without a PUBACK, as IoT Hub does.
func (b *broker) checkPublish(cl *mqtt.Client, pk packets.Packet) error {
	switch {
	case pk.FixedHeader.Qos == 2:
		b.log.Info().Func(ident(cl.ID)).Msg("QoS 2 publish is not supported; disconnecting")
		return fmt.Errorf("%w: %w", errQoS2, packets.ErrRejectPacket)
	case !publishAllowed(cl.ID, pk.TopicName):
		b.log.Info().Func(ident(cl.ID)).Str("topic", pk.TopicName).Msg("publish to a forbidden topic; disconnecting")
		return fmt.Errorf("%w: %w", errForbiddenPublish, packets.ErrRejectPacket)
	case isTelemetry(cl.ID, pk.TopicName) && messageSize(cl.ID, pk.TopicName, pk.Payload) > maxMessageSize:
		b.log.Info().Func(ident(cl.ID)).Int("bytes", messageSize(cl.ID, pk.TopicName, pk.Payload)).Msg("device-to-cloud message over 256 KB; disconnecting")
		return fmt.Errorf("%w: %w", errMessageTooLarge, packets.ErrRejectPacket)
	}
	return nil
}

// checkSubscribe closes the connection of a SUBSCRIBE that could never be
// granted in full: more filters than a session may hold.
func (b *broker) checkSubscribe(cl *mqtt.Client, pk packets.Packet) error {
	if len(pk.Filters) > maxSubscriptions {
		b.log.Info().Func(ident(cl.ID)).Int("filters", len(pk.Filters)).Msg("SUBSCRIBE with too many filters; disconnecting")
		return fmt.Errorf("%w (%d): %w", errTooManyFilters, len(pk.Filters), packets.ErrRejectPacket)
	}
	return nil
}

// refusedFilter is a filter mochi refuses as invalid ('#' not last), which
// it answers with SUBACK 0x80 for 3.1.1 clients.
const refusedFilter = "#/"

// capSubscriptions keeps a session within maxSubscriptions filters and
// maxFilterLen bytes a filter: a filter the session holds already is
// granted again, a new one only while there is room; the rest are
// replaced by refusedFilter so mochi refuses them (SUBACK 0x80) and
// stores nothing.
func capSubscriptions(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	held := cl.State.Subscriptions.Len()
	filters := make(packets.Subscriptions, len(pk.Filters))
	added := make(map[string]bool, len(pk.Filters))
	for i, sub := range pk.Filters {
		_, exists := cl.State.Subscriptions.Get(sub.Filter)
		switch {
		case len(sub.Filter) > maxFilterLen:
			sub.Filter = refusedFilter
		case exists || added[sub.Filter]:
		case held < maxSubscriptions:
			held++
			added[sub.Filter] = true
		default:
			sub.Filter = refusedFilter
		}
		filters[i] = sub
	}
	pk.Filters = filters
	return pk
}

// to311 keeps everything mochi writes to a client within MQTT 3.1.1
// (every client is 3.1.1: others are refused at CONNECT). 3.1.1 has no
// server DISCONNECT: mochi's (on takeover, errors, shutdown) is not
// written, and the connection just closes. A CONNACK carrying an MQTT 5
// reason code becomes its 3.1.1 return code, or, for a malformed CONNECT,
// is not written ([MQTT-3.1.4-1]: close without CONNACK). A SUBACK code
// outside 0, 1, 2 becomes 0x80.
//
// A packet that must not be written is given the reserved type 0, which
// mochi refuses to encode: the write fails and nothing reaches the wire.
func to311(pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Disconnect:
		pk.FixedHeader.Type = packets.Reserved
	case packets.Connack:
		switch code := pk.ReasonCode; {
		case code <= packets.Err3NotAuthorized.Code:
		case code == packets.ErrUnspecifiedError.Code, code == packets.ErrClientIdentifierNotValid.Code:
			// mochi's code for a client id refused (empty with clean
			// session 0).
			pk.ReasonCode = packets.Err3ClientIdentifierNotValid.Code
		default:
			pk.FixedHeader.Type = packets.Reserved
		}
	case packets.Suback:
		codes := make([]byte, len(pk.ReasonCodes))
		for i, c := range pk.ReasonCodes {
			if c > packets.CodeGrantedQos2.Code {
				c = packets.ErrUnspecifiedError.Code
			}
			codes[i] = c
		}
		pk.ReasonCodes = codes
	}
	return pk
}

// validText reports whether s is valid UTF-8 without NUL, as MQTT requires
// of every string ([MQTT-1.5.3-1], [MQTT-1.5.3-2]).
func validText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}
