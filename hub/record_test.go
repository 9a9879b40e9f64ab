package hub

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// The reasons the dashboard shows for a disconnect, for causes the event
// tests cannot provoke quickly (a keep-alive runs out after 1.5 periods).
func TestDisconnectReason(t *testing.T) {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		cause    error
		stopping bool
		want     string
	}{
		{packets.CodeDisconnect, false, "client disconnected"},
		{fmt.Errorf("read: %w", timeout), false, "connection lost: keep-alive timeout"},
		{io.EOF, false, "connection lost: closed without DISCONNECT"},
		{errors.New("read tcp 1->2: connection reset by peer"), false, "connection lost: connection reset by peer"},
		{nil, false, "connection lost"},
		{packets.ErrSessionTakenOver, false, "replaced by a new connection"},
		{errCredentialExpired, false, "credential expired"},
		{fmt.Errorf("%w: %s", errRevoked, "device disabled"), false, "revoked (device disabled)"},
		{fmt.Errorf("%w: %w", errMessageTooLarge, packets.ErrRejectPacket), false, "protocol violation: message over 256 KB"},
		{fmt.Errorf("%w: %w", errQoS2, packets.ErrRejectPacket), false, "protocol violation: QoS 2 publish"},
		{packets.ErrMalformedPacket, false, "protocol violation: " + packets.ErrMalformedPacket.Reason},
		{io.EOF, true, "hub stopping"},
		{packets.ErrServerShuttingDown, false, "hub stopping"},
	} {
		if got := disconnectReason(tc.cause, tc.stopping); got != tc.want {
			t.Errorf("disconnectReason(%v, %v) = %q, want %q", tc.cause, tc.stopping, got, tc.want)
		}
	}
}

func TestMethodError(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("x: %w", hubapi.ErrDeviceNotOnline):  "device not online",
		fmt.Errorf("x: %w", hubapi.ErrTimeout):          "timeout",
		fmt.Errorf("x: %w", hubapi.ErrResponseTooLarge): "response too large",
		ErrShuttingDown: "hub stopping",
	} {
		if got := methodError(err); got != want {
			t.Errorf("methodError(%v) = %q, want %q", err, got, want)
		}
	}
}

// BenchmarkMessageEvent is what recording one device-to-cloud message costs
// the MQTT path: parsing its property bag, keeping its body, adding it.
func BenchmarkMessageEvent(b *testing.B) {
	br := &broker{s: &Server{events: events.New(0, nil)}, log: zerolog.Nop()}
	topic := "devices/d1/messages/events/$.ct=application%2Fjson&$.ce=utf-8&level=warning"
	payload := []byte(`{"temperature":21.5,"humidity":40}`)
	b.ReportAllocs()
	for b.Loop() {
		br.message("d1", topic, payload)
	}
}
