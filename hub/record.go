package hub

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The hub's record of what happens to devices and modules (events.Ring,
// Server.Events), for the dashboard. Recording never blocks the MQTT path
// and events never carry credentials.

// record adds e for the identity key (a device id or "{deviceId}/{moduleId}").
func (b *broker) record(key string, e events.Event) {
	e.DeviceID, e.ModuleID = splitKey(key)
	b.s.events.Add(e)
}

// Reasons a connection ended, as Disconnected events give them.
const (
	reasonClientDisconnect = "client disconnected"
	reasonReplaced         = "replaced by a new connection"
	reasonExpired          = "credential expired"
	reasonRevoked          = "revoked"
	reasonStopping         = "hub stopping"
	reasonLost             = "connection lost"
	reasonKeepAlive        = "connection lost: keep-alive timeout"
	reasonClosed           = "connection lost: closed without DISCONNECT"
	reasonProtocol         = "protocol violation"
)

// disconnectReason says in a short stable text why a connection ended,
// from the cause mochi recorded when it stopped the client (cause) and
// whether the hub is shutting down.
func disconnectReason(cause error, stopping bool) string {
	var ne net.Error
	switch {
	case stopping || errors.Is(cause, packets.ErrServerShuttingDown):
		return reasonStopping
	case errors.Is(cause, packets.CodeDisconnect):
		return reasonClientDisconnect
	case errors.Is(cause, packets.ErrSessionTakenOver):
		return reasonReplaced
	case errors.Is(cause, errCredentialExpired):
		return reasonExpired
	case errors.Is(cause, errRevoked):
		// errRevoked wraps why: "device deleted", "device disabled", ...
		if _, why, ok := strings.Cut(cause.Error(), errRevoked.Error()+": "); ok {
			return reasonRevoked + " (" + why + ")"
		}
		return reasonRevoked
	case errors.Is(cause, errForbiddenPublish):
		return reasonProtocol + ": publish to a forbidden topic"
	case errors.Is(cause, errMessageTooLarge):
		return reasonProtocol + ": message over 256 KB"
	case errors.Is(cause, errTooManyFilters):
		return reasonProtocol + ": too many filters in one SUBSCRIBE"
	case errors.Is(cause, errQoS2):
		return reasonProtocol + ": QoS 2 publish"
	case cause == nil:
		return reasonLost
	case errors.Is(cause, io.EOF), errors.Is(cause, io.ErrUnexpectedEOF):
		return reasonClosed
	case errors.As(cause, &ne) && ne.Timeout():
		return reasonKeepAlive
	}
	var code packets.Code
	if errors.As(cause, &code) {
		return reasonProtocol + ": " + code.Reason
	}
	return reasonLost + ": " + lastPart(cause.Error())
}

// lastPart keeps the end of a wrapped error ("read tcp a->b: connection
// reset by peer" -> "connection reset by peer").
func lastPart(s string) string {
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// Why a method call got no answer, as MethodAnswer events give it.
func methodError(err error) string {
	switch {
	case errors.Is(err, hubapi.ErrDeviceNotOnline):
		return "device not online"
	case errors.Is(err, hubapi.ErrTimeout):
		return "timeout"
	case errors.Is(err, hubapi.ErrResponseTooLarge):
		return "response too large"
	case errors.Is(err, ErrShuttingDown):
		return reasonStopping
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled by the caller"
	}
	return lastPart(err.Error())
}
