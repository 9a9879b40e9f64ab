package hub

import (
	"bytes"
	"errors"
	"time"

	"github.com/dmctl/dmctl/hub/events"
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
		mqtt.OnPacketEncode,
		mqtt.OnPublish,
		mqtt.OnSubscribe,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
	}, []byte{b})
}

// OnConnect caps the keep-alive as IoT Hub does and drops any will: the
// hub routes nothing a device publishes, wills included.
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
	// replaced is why the identity's previous connection, shown as
	// connected, is no longer its connection ("" when there was none).
	var replaced string
	if old, ok := b.sessions[cl.ID]; ok && old.cl != cl {
		// mochi disconnects the old client right after this hook, if it
		// is still open; its end (connEnded) finds it replaced.
		b.log.Info().Func(ident(cl.ID)).Msg("new connection replaces the old one")
		old.stop()
		if old.live {
			replaced = reasonReplaced
			if old.cl.Closed() { // it ended first; connEnded has not run yet
				replaced = disconnectReason(old.cl.StopCause(), false)
			}
		}
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
	// The old connection's end is shown before the new one's start
	// (OnSessionEstablished), so a device that reconnects quickly, or
	// takes its own session over, is shown disconnected then connected.
	if replaced != "" {
		b.record(cl.ID, events.Event{Kind: events.Disconnected, Reason: replaced})
	}
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
	live := false
	if sess, ok := b.sessions[cl.ID]; ok && sess.cl == cl {
		sess.live, live = true, true
		b.signalLocked()
	}
	b.mu.Unlock()
	if live {
		// Under stateMu: the Disconnected of this connection comes after.
		b.record(cl.ID, events.Event{Kind: events.Connected})
	}
	b.log.Info().Func(ident(cl.ID)).Str("remote", cl.Net.Remote).Msg(kind(cl.ID) + " connected")
	// A delete or disable between this client's authentication and now
	// found no live session to disconnect (Revoke): look once more.
	if live {
		b.revoked(cl)
	}
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

// OnACLCheck confines an identity's subscriptions to IoT Hub's method and
// twin topics and its own topic space (allowed), and its publishes to the
// topics IoT Hub lets a device publish to (publishAllowed). A forbidden
// publish never gets here: OnPacketRead ends its connection first.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := allowed(cl.ID, topic)
	if write {
		ok = publishAllowed(cl.ID, topic)
	}
	if !ok {
		h.b.log.Debug().Func(ident(cl.ID)).Str("topic", topic).Bool("publish", write).Msg("denied by ACL")
	}
	return ok
}

// OnPacketRead refuses any CONNECT but MQTT 3.1.1 (CONNACK 1), ends the
// connection on a publish IoT Hub would not take (checkPublish) or an
// oversized SUBSCRIBE (checkSubscribe), and records activity. A returned
// ErrRejectPacket makes mochi close the connection without an answer.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Connect:
		if pk.ProtocolVersion != mqttLevel311 || string(pk.Connect.ProtocolName) != "MQTT" {
			h.b.log.Info().Str("remote", cl.Net.Remote).Int("level", int(pk.ProtocolVersion)).Msg("connection refused: not MQTT 3.1.1")
			return pk, refuseVersion(cl, pk)
		}
	case packets.Subscribe:
		if err := h.b.checkSubscribe(cl, pk); err != nil {
			return pk, err
		}
	case packets.Publish:
		if err := h.b.checkPublish(cl, pk); err != nil {
			return pk, err
		}
		h.b.s.store.Touch(cl.ID)
	}
	return pk, nil
}

// OnPacketEncode keeps every packet written within MQTT 3.1.1 (to311).
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return to311(pk)
}

// OnSubscribe bounds the session's subscriptions (capSubscriptions).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return capSubscriptions(cl, pk)
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
