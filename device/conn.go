// Package device is the simulated IoT Hub device: a direct-method mux with the
// rebootDevice and factoryReset handlers, firmware updates driven by the
// desired "firmware" object (firmware.go), reported-property updates and
// desired-property logging. It knows nothing about MQTT; the transport is a Conn, implemented
// by package device/mqtt.
//
// rebootDevice answers 200 at once with {"message":...,"delaySeconds":N},
// then goes offline (Conn.Suspend) for the reboot delay (Config.RebootDelay,
// default 20 s; a payload {"delaySeconds": N} with an integer N in 0..3600
// overrides it, also when sent as a JSON string holding the object, as
// service SDKs that take the payload as text do), comes back (Conn.Resume) and reports rebootTime as
// time.Now().UTC() in RFC 3339 with nanoseconds, so two reboots never report
// the same value. A rebootDevice call while a reboot is under way gets 409
// and starts nothing. The device never reports rebootTime on a plain start.
// Desired-property patches are logged; of them only "firmware" changes
// anything (see firmware.go). factoryReset (reset.go) answers 200 first,
// restores the factory firmware, reboots and reports factoryResetTime.
//
// Events go to Config.OnEvent as Event values (see events.go), and are
// logged for people with the same "event" field: method (method, status), reboot_accepted,
// reboot_started, rebooted (rebootTime), reboot_failed, twin (after every
// connect: desired_version, reported_version, rebootTime), desired (version,
// patch), firmware (status, current, pending, substatus), firmware_update,
// firmware_abandoned, factory_reset_accepted, factory_reset
// (factoryResetTime).
package device

import (
	"context"
	"errors"
)

// ErrUnauthorized reports that the hub refused the device's credentials on
// the first connect (MQTT CONNACK 4 or 5): a wrong key, an expired token, an
// unknown or disabled device. Retrying does not help.
var ErrUnauthorized = errors.New("device: hub refused the credentials")

// ErrUntrusted reports that the hub's TLS certificate could not be verified
// on the first connect. Verification is never switched off; trust the hub's
// CA instead.
var ErrUntrusted = errors.New("device: hub certificate not trusted")

// MethodRequest is one direct-method call as it arrives from the hub.
type MethodRequest struct {
	Name    string // method name, case-sensitive, not decoded
	Payload []byte // body as received; empty when the service sent no payload
}

// Handler is what a Conn delivers inbound traffic to. A Conn calls
// HandleMethod on goroutines it owns (possibly several at once) and publishes
// the returned status and JSON body as the method response. HandleTwin and
// HandleDesired are called one at a time, in arrival order, and must return
// quickly.
type Handler interface {
	HandleMethod(ctx context.Context, req MethodRequest) (status int, payload []byte)
	// HandleTwin receives the device-side twin document
	// ({"desired":{...},"reported":{...}}) read after every (re)connect.
	HandleTwin(doc []byte)
	// HandleDesired receives a desired-property patch and its $version.
	HandleDesired(version int64, patch []byte)
}

// Conn is the device's link to IoT Hub. device/mqtt implements it.
type Conn interface {
	// Run connects, keeps the link up (reconnecting after drops, renewing
	// credentials) and delivers inbound traffic to h until ctx is done. It
	// returns nil when ctx ends, and an error wrapping ErrUnauthorized or
	// ErrUntrusted when the very first connect cannot succeed.
	Run(ctx context.Context, h Handler) error

	// Report sends a reported-properties patch (a JSON object; null deletes a
	// key). Patches are sent in order; made while offline, they wait for the
	// next connection. Report returns nil once the hub acknowledged the patch,
	// an error if the hub rejected it, or ctx.Err() if ctx ends first (the
	// patch then stays queued and is still sent while Run goes on).
	Report(ctx context.Context, patch []byte) error

	// Suspend answers the method calls in progress, disconnects and stays
	// offline until Resume. It returns once the link is down.
	Suspend(ctx context.Context) error

	// Resume ends a Suspend and returns once the link is up again.
	Resume(ctx context.Context) error
}
