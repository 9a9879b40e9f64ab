package hub

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// MQTTSubscriptions reports, for tests, how many topic filters the broker
// keeps for the MQTT client id: in its session (live or kept after a clean
// session 0 disconnect), and in the broker's whole topic index.
func (s *Server) MQTTSubscriptions(clientID string) (session int, index int64) {
	m := s.broker.mochi
	if cl, ok := m.Clients.Get(clientID); ok {
		session = cl.State.Subscriptions.Len()
	}
	return session, atomic.LoadInt64(&m.Info.Subscriptions)
}

// Limits are the broker's bounds, for tests.
const (
	MaxSubscriptions = maxSubscriptions
	MaxFilterLen     = maxFilterLen
	MaxMessageSize   = maxMessageSize
)

// AddMQTTHook adds a broker hook after the hub's own, for tests that act
// between two steps of a connection.
func (s *Server) AddMQTTHook(h mqtt.Hook) error { return s.broker.mochi.AddHook(h, nil) }
