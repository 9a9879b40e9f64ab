package hub

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

var errTokenExpired = errors.New("hub: SAS token expired")

// hook gives mochi IoT Hub semantics: SAS authentication, per-device ACL,
// and interception of every device publish.
type hook struct {
	mqtt.HookBase
	b *broker
}

func (h *hook) ID() string { return "dmctl-iothub" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished,
		mqtt.OnACLCheck,
		mqtt.OnPacketRead,
		mqtt.OnPublish,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
	}, []byte{b})
}

// OnConnect caps the keep-alive as IoT Hub does and drops any will: a will
// would be telemetry, which the local hub does not keep.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKeepAlive {
		cl.State.Keepalive = maxKeepAlive
	}
	cl.Properties.Will = mqtt.Will{}
	return nil
}

// OnConnectAuthenticate verifies the SAS password; a refusal makes mochi
// answer CONNACK 5 (not authorized) to MQTT 3.1.1 clients.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	id, expiry, err := h.b.authenticate(cl, pk)
	if err != nil {
		h.b.log.Info().Str("client", cl.ID).Str("remote", cl.Net.Remote).Str("reason", err.Error()).Msg("device connection refused")
		return false
	}
	h.b.mu.Lock()
	h.b.tokenExp[cl.Net.Conn] = expiry
	h.b.mu.Unlock()
	h.b.log.Debug().Str("device", id).Msg("device authenticated")
	return true
}

// OnSessionEstablish runs after authentication and before mochi takes over
// an older session of the same device: from here on this client is the
// device's current one, so the old connection's end does not mark the
// device disconnected.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	b.mu.Lock()
	if old, ok := b.sessions[cl.ID]; ok && old.cl != cl {
		// mochi disconnects the old client right after this hook.
		b.log.Info().Str("device", cl.ID).Msg("new connection replaces the old one")
		old.stop()
	}
	sess := &session{cl: cl}
	if expiry, ok := b.tokenExp[cl.Net.Conn]; ok {
		delete(b.tokenExp, cl.Net.Conn)
		sess.expiry = time.AfterFunc(time.Until(expiry), func() {
			if !b.enter() {
				return
			}
			defer b.timers.Done()
			b.log.Info().Str("device", cl.ID).Msg("SAS token expired; disconnecting")
			cl.Stop(errTokenExpired)
		})
	}
	b.sessions[cl.ID] = sess
	if _, ok := b.conns[cl.Net.Conn]; ok {
		b.conns[cl.Net.Conn] = cl.ID
	}
	b.mu.Unlock()
}

// OnSessionEstablished runs after CONNACK: the connection is recorded in
// the store, then becomes visible as the device's live session.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	if !b.isSession(cl.ID, cl.Net.Conn) {
		return // already replaced
	}
	if err := b.s.store.SetConnected(cl.ID, true); err != nil {
		b.log.Warn().Err(err).Str("device", cl.ID).Msg("record connection")
	}
	b.mu.Lock()
	if sess, ok := b.sessions[cl.ID]; ok && sess.cl == cl {
		sess.live = true
		b.signalLocked()
	}
	b.mu.Unlock()
	b.log.Info().Str("device", cl.ID).Str("remote", cl.Net.Remote).Msg("device connected")
}

// OnACLCheck confines a device to IoT Hub's method and twin topics and its
// own devices/{id}/ space, for publishes and subscriptions alike.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := allowed(cl.ID, topic)
	if !ok {
		h.b.log.Debug().Str("device", cl.ID).Str("topic", topic).Bool("publish", write).Msg("denied by ACL")
	}
	return ok
}

// OnPacketRead records device activity and disconnects on QoS 2 publishes,
// which IoT Hub does not support.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	if pk.FixedHeader.Qos == 2 {
		h.b.log.Info().Str("device", cl.ID).Msg("QoS 2 publish is not supported; disconnecting")
		return pk, fmt.Errorf("qos 2 publish: %w", packets.ErrRejectPacket)
	}
	h.b.s.store.Touch(cl.ID)
	return pk, nil
}

// OnPublish handles every device publish itself and tells mochi to
// acknowledge it without routing it to any subscriber.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.b.handlePublish(cl, pk)
	return pk, packets.CodeSuccessIgnore
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	h.b.signal()
}

func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	h.b.signal()
}
