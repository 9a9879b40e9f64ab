package hub

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// Broker limits.
const (
	// maxPacketSize bounds an MQTT packet: IoT Hub's 256 KiB message limit
	// plus room for the topic.
	maxPacketSize = 256<<10 + 4<<10
	// maxWritesPending is mochi's per-client outbound queue. The hub writes
	// to devices directly, so the queue stays almost empty.
	maxWritesPending = 32
	// readBufferSize is mochi's per-connection read buffer. It need not
	// hold a packet (a larger read bypasses it) and TLS keeps the record
	// it decrypts in its own buffer: it only saves calls into TLS for the
	// small packets, and every idle connection holds it.
	readBufferSize = 256
	// sessionExpiry is how long mochi keeps a clean-session-0 session
	// (subscriptions) of a disconnected device, in seconds.
	sessionExpiry = 3600
)

const listenerID = "dmctl"

type mqttClient = mqtt.Client

// broker wraps the mochi server and keeps the hub's view of device
// connections: which client is the current one for each device, and which
// method calls are waiting for an answer.
type broker struct {
	s     *Server
	log   zerolog.Logger
	mochi *mqtt.Server
	ln    *mochiListener

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]string // every connection handed to mochi -> identity key once known
	granted  map[net.Conn]grant  // authenticated connections without a session yet
	sessions map[string]*session // current session of each identity (device id or module key)
	change   chan struct{}       // closed and replaced on every change
	pending  map[string]*call    // method calls by request id
	wg       sync.WaitGroup      // one per connection handed to mochi
	// ended are the identities whose connections ended after close
	// began: their disconnection is recorded in one write (close).
	ended []string

	timers sync.WaitGroup // token expiry callbacks that are running

	// stateMu orders connection-state writes to the store, so that an old
	// connection's end never overwrites its successor's "Connected".
	stateMu sync.Mutex

	rid atomic.Uint64
}

func newBroker(s *Server) (*broker, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1 // QoS 2 subscriptions are granted QoS 1, as on IoT Hub
	caps.MaximumClientWritesPending = maxWritesPending
	caps.MaximumSessionExpiryInterval = sessionExpiry
	caps.MaximumPacketSize = maxPacketSize
	caps.SharedSubAvailable = 0
	caps.MinimumProtocolVersion = 4

	quiet := s.log.With().Str("component", "mqtt").Logger()
	if quiet.GetLevel() < zerolog.ErrorLevel {
		quiet = quiet.Level(zerolog.ErrorLevel)
	}
	m := mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		ClientNetReadBufferSize:  readBufferSize,
		ClientNetWriteBufferSize: 1024,
		Logger:                   slog.New(zerolog.NewSlogHandler(quiet)),
		SysTopicResendInterval:   3600,
	})
	b := &broker{
		s:        s,
		log:      s.log.With().Str("component", "mqtt").Logger(),
		mochi:    m,
		conns:    make(map[net.Conn]string),
		granted:  make(map[net.Conn]grant),
		sessions: make(map[string]*session),
		change:   make(chan struct{}),
		pending:  make(map[string]*call),
	}
	b.ln = &mochiListener{
		id:     listenerID,
		addr:   s.listeners[0].Addr(),
		ch:     make(chan net.Conn),
		done:   make(chan struct{}),
		served: make(chan struct{}),
		b:      b,
	}
	if err := m.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("hub: broker hook: %w", err)
	}
	if err := m.AddListener(b.ln); err != nil {
		return nil, fmt.Errorf("hub: broker listener: %w", err)
	}
	if err := m.Serve(); err != nil {
		return nil, fmt.Errorf("hub: start broker: %w", err)
	}
	return b, nil
}

// handoff gives an MQTT connection to mochi. The connection is closed if the
// broker is shutting down.
func (b *broker) handoff(c net.Conn) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = c.Close()
		return
	}
	b.conns[c] = ""
	open := len(b.conns)
	b.wg.Add(1)
	b.mu.Unlock()
	b.s.fd.opened(open)
	select {
	case b.ln.ch <- c:
	case <-b.ln.done:
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		b.wg.Done()
		_ = c.Close()
	}
}

// session is the current connection of an identity.
type session struct {
	cl *mqtt.Client
	// expiry disconnects the client when its SAS token expires, as IoT
	// Hub does, or its certificate.
	expiry *time.Timer
	// modelID is the model id the client announced, recorded with the
	// connection.
	modelID string
	// live is set once the CONNACK went out and the connection is
	// recorded in the store.
	live bool
}

func (s *session) stop() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

// connEnded runs after mochi is done with a connection. If the connection
// was its device's current one, the device is now disconnected: recorded in
// the store first, then visible through connected().
func (b *broker) connEnded(c net.Conn) {
	defer b.wg.Done()
	_ = c.Close()
	b.mu.Lock()
	id := b.conns[c]
	delete(b.conns, c)
	delete(b.granted, c)
	b.mu.Unlock()
	if id == "" {
		return
	}
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	if !b.isSession(id, c) {
		return // replaced by a newer connection
	}
	b.mu.Lock()
	closing := b.closed
	if closing {
		b.ended = append(b.ended, id)
	}
	b.mu.Unlock()
	if !closing {
		if err := b.s.store.SetConnected(id, false); err != nil && !errors.Is(err, errStoreNotFound) && !errors.Is(err, store.ErrModuleNotFound) {
			b.log.Warn().Err(err).Func(ident(id)).Msg("record disconnection")
		}
	}
	b.mu.Lock()
	var ended *session
	if sess, ok := b.sessions[id]; ok && sess.cl.Net.Conn == c {
		sess.stop()
		delete(b.sessions, id)
		b.signalLocked()
		ended = sess
	}
	stopping := b.closed
	b.mu.Unlock()
	// At shutdown close logs one line for all.
	logged := b.log.Info()
	if stopping {
		logged = b.log.Debug()
	}
	if ended == nil || !ended.live {
		// Never shown as connected (it ended before its CONNACK went
		// out): nothing to show as disconnected either.
		logged.Func(ident(id)).Msg(kind(id) + " disconnected")
		return
	}
	reason := disconnectReason(ended.cl.StopCause(), stopping)
	b.record(id, events.Event{Kind: events.Disconnected, Reason: reason})
	logged.Func(ident(id)).Str("reason", reason).Msg(kind(id) + " disconnected")
}

// isSession reports whether c is the connection of id's current session.
func (b *broker) isSession(id string, c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	sess, ok := b.sessions[id]
	return ok && sess.cl.Net.Conn == c
}

// close stops mochi, drops every connection and waits for their goroutines.
func (b *broker) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	_ = b.mochi.Close() // closes b.ln, which closes every connection
	b.wg.Wait()
	// One write for every connection closed: one per connection would
	// take seconds for a large fleet.
	b.mu.Lock()
	ended := b.ended
	b.ended = nil
	b.mu.Unlock()
	if err := b.s.store.SetDisconnectedAll(ended); err != nil {
		b.log.Warn().Err(err).Int("connections", len(ended)).Msg("record disconnections")
	}
	if len(ended) > 0 {
		b.log.Info().Int("connections", len(ended)).Msg("hub stopping: connections closed")
	}
	b.timers.Wait()
	<-b.ln.served
	b.mu.Lock()
	for _, c := range b.pending {
		c.cancel()
	}
	close(b.change) // wakes waiters; they find the hub closed
	b.change = nil
	b.mu.Unlock()
}

// enter registers a running timer callback; false once the broker is
// closing.
func (b *broker) enter() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.timers.Add(1)
	return true
}

// current returns the live client of a device, if its connection is still
// open.
func (b *broker) current(id string) (*mqtt.Client, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sess, ok := b.sessions[id]
	if !ok || !sess.live || sess.cl.Closed() {
		return nil, false
	}
	return sess.cl, true
}

// connected reports whether the device has a live session. It turns false
// only after the disconnection is recorded in the store.
func (b *broker) connected(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	sess, ok := b.sessions[id]
	return ok && sess.live
}

// changed returns a channel closed at the next connection or subscription
// change; nil (never ready) once the broker is closed.
func (b *broker) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.change
}

func (b *broker) signal() {
	b.mu.Lock()
	b.signalLocked()
	b.mu.Unlock()
}

func (b *broker) signalLocked() {
	if b.change == nil {
		return
	}
	close(b.change)
	b.change = make(chan struct{})
}

// subscribed reports whether one of cl's subscriptions matches topic. The
// filters the SDKs subscribe with for the hub's own topics are looked up
// first, without copying the client's subscriptions.
func subscribed(cl *mqtt.Client, topic string) bool {
	for _, f := range [...]string{iothub.MethodsFilter, iothub.DesiredFilter, iothub.TwinResFilter} {
		if strings.HasPrefix(topic, f[:len(f)-1]) {
			if _, ok := cl.State.Subscriptions.Get(f); ok {
				return true
			}
			break
		}
	}
	for filter := range cl.State.Subscriptions.GetAll() {
		if matchFilter(filter, topic) {
			return true
		}
	}
	return false
}

// matchFilter implements MQTT topic filter matching; wildcards at the first
// level do not match topics starting with '$'.
func matchFilter(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	topicLeft := true // a level of topic is still to match
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		if !topicLeft {
			return false
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore {
			return !tmore
		}
		filter, topic, topicLeft = frest, trest, tmore
	}
}

// send writes a QoS 0 PUBLISH to exactly this client, provided it
// subscribed to a filter matching topic. It reports whether it was written.
func (b *broker) send(cl *mqtt.Client, topic string, payload []byte) (bool, error) {
	if !subscribed(cl, topic) {
		return false, nil
	}
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	})
	if err != nil {
		return false, err
	}
	return true, nil
}

// handlePublish answers a device's publish. Nothing a device publishes is
// routed to other clients.
func (b *broker) handlePublish(cl *mqtt.Client, pk packets.Packet) {
	if b.revoked(cl) {
		return
	}
	id := cl.ID
	topic := pk.TopicName
	switch {
	case strings.HasPrefix(topic, "$iothub/methods/res/"):
		status, rid, ok := iothub.ParseMethodResponseTopic(topic)
		if !ok {
			b.log.Debug().Func(ident(id)).Str("topic", topic).Msg("malformed method response topic")
			return
		}
		b.methodResponse(id, rid, status, pk.Payload)
	case strings.HasPrefix(topic, "$iothub/twin/"):
		op, rid, ok := iothub.ParseTwinRequestTopic(topic)
		if !ok {
			b.log.Debug().Func(ident(id)).Str("topic", topic).Msg("unsupported twin topic")
			return
		}
		switch op {
		case iothub.TwinGet:
			b.twinGet(cl, rid)
		case iothub.TwinPatchReported:
			b.twinPatch(cl, rid, pk.Payload)
		}
	case isTelemetry(id, topic):
		b.message(id, topic, pk.Payload)
	default:
		b.log.Debug().Func(ident(id)).Str("topic", topic).Msg("publish to unsupported topic dropped")
	}
}

// message records a device-to-cloud message with the properties of its
// topic. A malformed property bag costs only the pairs that do not decode.
func (b *broker) message(id, topic string, payload []byte) {
	_, _, props, _, err := iothub.ParseMessageTopic(topic)
	if err != nil {
		b.log.Debug().Err(err).Func(ident(id)).Msg("device-to-cloud message: property skipped")
	}
	e := events.Event{Kind: events.Message, Properties: props}
	e.SetBody(payload)
	b.record(id, e)
	b.log.Debug().Func(ident(id)).Int("bytes", len(payload)).Int("properties", len(props)).Msg("device-to-cloud message received")
}
