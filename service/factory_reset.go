package service

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// The factory reset flow: the factoryReset direct method, confirmed through
// the twin's reported factoryResetTime, as Reboot confirms rebootDevice
// through rebootTime.
const (
	FactoryResetMethod       = "factoryReset"
	FactoryResetTimeProperty = "factoryResetTime"
)

// ErrFactoryResetNotConfirmed: the device did not report a new
// factoryResetTime before the wait deadline.
var ErrFactoryResetNotConfirmed = errors.New("service: factory reset not confirmed: the device did not report a new factoryResetTime in time")

// FactoryResetResult is what the factory reset flow saw; the times are
// rendered as Reboot renders rebootTime.
type FactoryResetResult struct {
	DeviceID          string
	Status            int             // the device's answer status
	Payload           json.RawMessage // the device's answer payload
	PreviousResetTime string          // reported.factoryResetTime before the invocation
	HasPreviousTime   bool
	ResetTime         string // last reported.factoryResetTime seen after the invocation
	HasResetTime      bool
	InvokeDuration    time.Duration
	WaitDuration      time.Duration
	Confirmed         bool // factoryResetTime differs from the baseline
	Polls             int
}

// FactoryReset invokes factoryReset on a device once and, unless
// opts.NoWait, polls the twin until reported.factoryResetTime differs from
// the one read before the call. opts is Reboot's (payload, timeouts, wait
// and poll interval; Progress is not called). Errors are Reboot's, with
// ErrFactoryResetNotConfirmed when the wait deadline passes; the result is
// non-nil whenever the device answered.
func (c *Client) FactoryReset(ctx context.Context, deviceID string, opts RebootOptions) (*FactoryResetResult, error) {
	opts.Progress = nil
	r, err := c.invokeConfirmed(ctx, deviceID, factoryResetFlow, opts)
	if r == nil {
		return nil, err
	}
	return &FactoryResetResult{
		DeviceID: r.DeviceID, Status: r.Status, Payload: r.Payload,
		PreviousResetTime: r.PreviousRebootTime, HasPreviousTime: r.HasPreviousTime,
		ResetTime: r.RebootTime, HasResetTime: r.HasRebootTime,
		InvokeDuration: r.InvokeDuration, WaitDuration: r.WaitDuration,
		Confirmed: r.Confirmed, Polls: r.Polls,
	}, err
}

var factoryResetFlow = confirmedMethod{
	method: FactoryResetMethod, property: FactoryResetTimeProperty,
	verb: "factory reset", notConfirmed: ErrFactoryResetNotConfirmed,
}
