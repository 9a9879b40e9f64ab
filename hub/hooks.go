package hub

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

var errCredentialExpired = errors.New("hub: SAS token or certificate expired")

// hook gives mochi IoT Hub semantics: SAS and X.509 authentication of
// devices and modules, a per-identity ACL, and interception of every
// publish.
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

// OnConnectAuthenticate checks the credential (authenticate); a refusal
// makes mochi answer CONNACK 5 (not authorized) to MQTT 3.1.1 clients.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	g, err := h.b.authenticate(cl, pk)
	if err != nil {
		h.b.log.Info().Str("client", cl.ID).Str("remote", cl.Net.Remote).Str("reason", err.Error()).Msg("connection refused")
		return false
	}
	h.b.mu.Lock()
	h.b.granted[cl.Net.Conn] = g
	h.b.mu.Unlock()
	h.b.log.Debug().Func(ident(cl.ID)).Str("credential", g.credential).Msg("authenticated")
	return true
}

// OnSessionEstablish runs after authentication and before mochi takes over
// an older session of the same identity: from here on this client is the
// identity's current one, so the old connection's end does not mark it
// disconnected.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	b.mu.Lock()
	if old, ok := b.sessions[cl.ID]; ok && old.cl != cl {
		// mochi disconnects the old client right after this hook.
		b.log.Info().Func(ident(cl.ID)).Msg("new connection replaces the old one")
		old.stop()
	}
	sess := &session{cl: cl}
	if g, ok := b.granted[cl.Net.Conn]; ok {
		delete(b.granted, cl.Net.Conn)
		sess.modelID = g.modelID
		if !g.until.IsZero() {
			credential := g.credential
			sess.expiry = time.AfterFunc(time.Until(g.until), func() {
				if !b.enter() {
					return
				}
				defer b.timers.Done()
				b.log.Info().Func(ident(cl.ID)).Msg(credential + " expired; disconnecting")
				cl.Stop(errCredentialExpired)
			})
		}
	}
	b.sessions[cl.ID] = sess
	if _, ok := b.conns[cl.Net.Conn]; ok {
		b.conns[cl.Net.Conn] = cl.ID
	}
	b.mu.Unlock()
}

// OnSessionEstablished runs after CONNACK: the model id announced and the
// connection are recorded in the store, then the connection becomes
// visible as the identity's live session.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	b.mu.Lock()
	sess, ok := b.sessions[cl.ID]
	b.mu.Unlock()
	if !ok || sess.cl != cl {
		return // already replaced
	}
	b.recordModelID(cl.ID, sess.modelID)
	if err := b.s.store.SetConnected(cl.ID, true); err != nil {
		b.log.Warn().Err(err).Func(ident(cl.ID)).Msg("record connection")
	}
	b.mu.Lock()
	if sess, ok := b.sessions[cl.ID]; ok && sess.cl == cl {
		sess.live = true
		b.signalLocked()
	}
	b.mu.Unlock()
	b.log.Info().Func(ident(cl.ID)).Str("remote", cl.Net.Remote).Msg(kind(cl.ID) + " connected")
}

// recordModelID stores the IoT Plug and Play model id a client announced
// ("model-id=" in its username) in its twin. A model id the store refuses
// (longer than 512 characters) does not cost the connection: it is logged
// and left out, and the twin keeps its previous modelId.
func (b *broker) recordModelID(key, modelID string) {
	if modelID == "" {
		return
	}
	if err := b.s.store.SetModelID(key, modelID); err != nil {
		b.log.Warn().Err(err).Func(ident(key)).Int("length", len(modelID)).Msg("model id not recorded")
	}
}

// OnACLCheck confines an identity to IoT Hub's method and twin topics and
// its own topic space (allowed), for publishes and subscriptions alike.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := allowed(cl.ID, topic)
	if !ok {
		h.b.log.Debug().Func(ident(cl.ID)).Str("topic", topic).Bool("publish", write).Msg("denied by ACL")
	}
	return ok
}

// OnPacketRead records activity and disconnects on QoS 2 publishes,
// which IoT Hub does not support.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	if pk.FixedHeader.Qos == 2 {
		h.b.log.Info().Func(ident(cl.ID)).Msg("QoS 2 publish is not supported; disconnecting")
		return pk, fmt.Errorf("qos 2 publish: %w", packets.ErrRejectPacket)
	}
	h.b.s.store.Touch(cl.ID)
	return pk, nil
}

// OnPublish handles every publish itself and tells mochi to
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
