package device

import "time"

// EventKind names what happened to a device or its connection. The values
// are stable; the same words appear as the "event" field of the logs.
type EventKind string

// Connection events, emitted by the transport (device/mqtt).
const (
	EventConnected            EventKind = "connected"              // a connection is up (Target, Transport, TokenExpires)
	EventSubscribed           EventKind = "subscribed"             // methods, twin responses and desired patches subscribed (Filters)
	EventDisconnected         EventKind = "disconnected"           // the connection ended (Reason, Err for a lost one)
	EventConnectFailed        EventKind = "connect_failed"         // one connect attempt failed (Target, Err)
	EventRetrying             EventKind = "retrying"               // waiting before the next attempt (Attempt, Delay)
	EventTokenRenewed         EventKind = "token_renewed"          // reconnected with a fresh SAS token (TokenExpires)
	EventSuspended            EventKind = "suspended"              // staying offline until resumed
	EventResumed              EventKind = "resumed"                // a suspend ended; reconnecting
	EventReported             EventKind = "reported"               // a reported-properties patch was acknowledged (Version)
	EventReportRetry          EventKind = "report_retry"           // a patch will be resent: no answer (Err) or the hub was busy (Status)
	EventReportRejected       EventKind = "report_rejected"        // the hub refused a patch for good (Status, Err)
	EventTwinGetFailed        EventKind = "twin_get_failed"        // the twin could not be read after a connect (Err)
	EventMethodResponseFailed EventKind = "method_response_failed" // a method answer could not be sent (Method, Err)
)

// Device events, emitted by Device.
const (
	EventMethodReceived EventKind = "method_received" // a direct method arrived (Method)
	EventMethodAnswered EventKind = "method"          // a direct method was answered (Method, Status)
	EventRebootStarted  EventKind = "reboot_started"  // going offline for the reboot (Delay)
	EventRebooted       EventKind = "rebooted"        // back online, rebootTime reported (RebootTime)
	EventRebootFailed   EventKind = "reboot_failed"   // the reboot could not finish (Err)
	EventTwin           EventKind = "twin"            // the twin was read after a connect (Version: desired $version)
	EventDesired        EventKind = "desired"         // a desired-properties patch was applied (Version)

	EventFirmware          EventKind = "firmware"           // a firmware step was reported and acknowledged (Firmware)
	EventFirmwareAbandoned EventKind = "firmware_abandoned" // an update gave way to a newer desired firmware (Firmware: current and pending)
	EventFactoryReset      EventKind = "factory_reset"      // back online after a factory reset, factoryResetTime reported (ResetTime)
)

// Event is one thing that happened, delivered to an OnEvent callback. Only
// the fields its Kind documents are set. Events carry no secrets.
type Event struct {
	Kind     EventKind
	Time     time.Time
	DeviceID string
	ModuleID string // set when the identity is a module of DeviceID

	Reason       string          // disconnected: "shutdown", "token renewal", "suspended", or why it was lost
	Err          error           // connect_failed, disconnected (lost), reboot_failed
	Attempt      int             // retrying: the attempt about to be made (1 is the first retry)
	Delay        time.Duration   // retrying: the wait; reboot_started: the time offline
	Target       string          // connected: host:port dialled
	Transport    string          // connected: "mqtt" or "mqtt-ws"
	Filters      []string        // subscribed
	TokenExpires time.Time       // connected, token_renewed
	Method       string          // method_received, method
	Status       int             // method: the status answered; report_retry, report_rejected: the hub's
	Version      int64           // reported: the reported $version; twin, desired: the desired $version
	RebootTime   string          // rebooted
	ResetTime    string          // factory_reset
	Firmware     *FirmwareReport // firmware, firmware_abandoned
}
