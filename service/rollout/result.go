package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// ErrNoDevices: the rollout's condition matched no device. Its text is the
// one the fleet reboot has always printed.
var ErrNoDevices = errors.New("service: no device matches the condition")

// Outcome is what happened to one device of a rollout.
type Outcome string

const (
	// OutcomeSucceeded: the device reported a new rebootTime.
	OutcomeSucceeded Outcome = "succeeded"
	// OutcomeFailed: the device answered with a status of 400 or more, did
	// not answer in time, no longer exists, or its job row failed otherwise.
	OutcomeFailed Outcome = "failed"
	// OutcomeOffline: the device was not connected when the job called it.
	OutcomeOffline Outcome = "offline"
	// OutcomeUnconfirmed: the device accepted the reboot but did not report
	// a new rebootTime before the wait timeout.
	OutcomeUnconfirmed Outcome = "unconfirmed"
	// OutcomeSkipped: the device was not called (the rollout stopped first).
	OutcomeSkipped Outcome = "skipped"
)

// FailureKind refines OutcomeFailed.
type FailureKind string

const (
	FailureDeviceStatus  FailureKind = "device-status"  // answered >= 400
	FailureMethodTimeout FailureKind = "method-timeout" // no answer within the response timeout
	FailureNotFound      FailureKind = "not-found"      // the device no longer exists
	FailureJob           FailureKind = "job"            // the job failed the row otherwise
)

// Device is one device's result in a rollout. A rebootTime is the string
// the device reported (compact JSON for another value); the Has* fields
// tell an absent property from an empty one.
type Device struct {
	DeviceID           string
	Wave               int    // 1-based wave number; 0 when the device was in no wave
	JobID              string // the job that called it
	Outcome            Outcome
	Failure            FailureKind // for OutcomeFailed
	Reason             string      // why it did not succeed, in words
	Status             int         // the device's answer status (0: none)
	Payload            json.RawMessage
	ErrorCode          int    // the job row's IoT Hub error code (e.g. 404103)
	RowStatus          string // the job row's status
	PreviousRebootTime string
	HasPreviousTime    bool
	RebootTime         string
	HasRebootTime      bool

	// A row that failed in a way that may still have rebooted the device
	// (method timeout, hub restart) leaves the device waiting for its
	// rebootTime; this is its outcome if none comes.
	laterFailure FailureKind
	laterReason  string
}

// settle gives an undecided device its final outcome: the failure its job
// row recorded, or unconfirmed with reason.
func (d *Device) settle(reason string) {
	if d.laterFailure != "" {
		d.Outcome, d.Failure, d.Reason = OutcomeFailed, d.laterFailure, d.laterReason
		return
	}
	d.Outcome, d.Reason = OutcomeUnconfirmed, reason
}

// Counts counts devices by outcome.
type Counts struct {
	Total       int `json:"total"`
	Succeeded   int `json:"succeeded"`
	Failed      int `json:"failed"`
	Offline     int `json:"offline"`
	Unconfirmed int `json:"unconfirmed"`
	Skipped     int `json:"skipped"`
}

// Unsuccessful is failed + offline + unconfirmed: the devices that were
// called and are not known to have rebooted.
func (c Counts) Unsuccessful() int { return c.Failed + c.Offline + c.Unconfirmed }

func (c *Counts) add(o Outcome) {
	c.Total++
	switch o {
	case OutcomeSucceeded:
		c.Succeeded++
	case OutcomeFailed:
		c.Failed++
	case OutcomeOffline:
		c.Offline++
	case OutcomeUnconfirmed:
		c.Unconfirmed++
	case OutcomeSkipped:
		c.Skipped++
	}
}

// countAll counts every device, decided or not.
func countAll(devs []Device) Counts {
	var c Counts
	for _, d := range devs {
		c.add(d.Outcome)
	}
	return c
}

// countDecided counts the devices whose outcome is known.
func countDecided(devs []Device) Counts {
	var c Counts
	for _, d := range devs {
		if d.Outcome != "" {
			c.add(d.Outcome)
		}
	}
	return c
}

// WaveResult is one wave of a rollout.
type WaveResult struct {
	Wave int
	// JobIDs are the wave's jobs: one, PREFIX-wN, unless the wave's id list
	// does not fit one queryCondition (MaxConditionLength); then
	// PREFIX-wN-1, PREFIX-wN-2, ...
	JobIDs        []string
	Size          int
	JobStatus     string // the jobs' final status: completed, or the first other one
	FailureReason string // the jobs' failureReason
	Counts        Counts
	FailureRate   float64 // Counts.Unsuccessful() / Size
	Duration      time.Duration
}

// Result is the outcome of Run.
type Result struct {
	Condition   string
	Devices     []Device     // in deviceId order
	Waves       []WaveResult // the waves that ran
	Planned     int          // waves planned
	Counts      Counts
	Stopped     bool   // the rollout stopped before its last wave
	StopReason  string // why, in words
	Interrupted bool   // ctx ended during the rollout
	Duration    time.Duration
}

// Err summarizes the result as an error: nil when every device was
// confirmed. Otherwise the error names the counts and the first device of
// the worst kind, and wraps (in this order of precedence) a
// *service.DeviceStatusError, an error matching service.ErrMethodTimeout,
// ErrDeviceNotOnline or ErrDeviceNotFound, or service.ErrRebootNotConfirmed;
// other job failures and skipped devices alone give a plain error.
func (r *Result) Err() error {
	if r == nil {
		return nil
	}
	c := r.Counts
	if c.Succeeded == c.Total && c.Total > 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d devices not rebooted (%d failed, %d offline, %d unconfirmed, %d skipped)",
		c.Total-c.Succeeded, c.Total, c.Failed, c.Offline, c.Unconfirmed, c.Skipped)
	if r.Stopped && r.StopReason != "" {
		b.WriteString("; rollout stopped: ")
		b.WriteString(r.StopReason)
	}
	worst := r.worst()
	if worst == nil {
		return errors.New(b.String())
	}
	switch rank(worst) {
	case rankJob:
		return fmt.Errorf("%s; device %q: %s", b.String(), worst.DeviceID, worst.Reason)
	case rankUnconfirmed:
		return fmt.Errorf("%s; device %q: %w: %s", b.String(), worst.DeviceID, service.ErrRebootNotConfirmed, worst.Reason)
	}
	return fmt.Errorf("%s; device %q: %w", b.String(), worst.DeviceID, cause(worst))
}

// How bad a device's outcome is, for Err: the higher, the worse.
const (
	rankNone = iota
	rankUnconfirmed
	rankJob
	rankNotFound
	rankOffline
	rankMethodTimeout
	rankDeviceStatus
)

func rank(d *Device) int {
	switch {
	case d.Outcome == OutcomeFailed && d.Failure == FailureDeviceStatus:
		return rankDeviceStatus
	case d.Outcome == OutcomeFailed && d.Failure == FailureMethodTimeout:
		return rankMethodTimeout
	case d.Outcome == OutcomeOffline:
		return rankOffline
	case d.Outcome == OutcomeFailed && d.Failure == FailureNotFound:
		return rankNotFound
	case d.Outcome == OutcomeFailed:
		return rankJob
	case d.Outcome == OutcomeUnconfirmed:
		return rankUnconfirmed
	}
	return rankNone
}

// worst is the first device of the worst outcome, nil when every device
// succeeded or was skipped.
func (r *Result) worst() *Device {
	var worst *Device
	for i := range r.Devices {
		d := &r.Devices[i]
		if rank(d) > rankNone && (worst == nil || rank(d) > rank(worst)) {
			worst = d
		}
	}
	return worst
}

// cause is the service error a device's failure matches: its answer, or an
// APIError with the IoT Hub code its job row carried.
func cause(d *Device) error {
	code, status := 0, 404
	switch rank(d) {
	case rankDeviceStatus:
		return &service.DeviceStatusError{Status: d.Status, Payload: d.Payload}
	case rankMethodTimeout:
		code, status = iothub.CodeGatewayTimeout, 504
	case rankOffline:
		code = iothub.CodeDeviceNotOnline
	case rankNotFound:
		code = iothub.CodeDeviceNotFound
	}
	return &service.APIError{Status: status, Code: code, Name: iothub.ErrorName(code), Message: d.Reason}
}
