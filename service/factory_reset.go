package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
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
	opts = opts.withDefaults()
	res := &FactoryResetResult{DeviceID: deviceID}
	base, err := c.Twin(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("factory reset: read baseline: %w", err)
	}
	res.PreviousResetTime, res.HasPreviousTime = reportedTime(base, FactoryResetTimeProperty)

	rt, ct := ceilSeconds(opts.ResponseTimeout), ceilSeconds(opts.ConnectTimeout)
	start := time.Now()
	mr, err := c.InvokeMethod(ctx, deviceID, iothub.MethodRequest{
		MethodName: FactoryResetMethod, Payload: opts.Payload,
		ResponseTimeoutInSeconds: &rt, ConnectTimeoutInSeconds: &ct,
	})
	res.InvokeDuration = time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("factory reset: %w", err)
	}
	res.Status, res.Payload = mr.Status, mr.Payload
	if mr.Status >= 400 {
		return res, fmt.Errorf("factory reset device %q: %w", deviceID, &DeviceStatusError{Status: mr.Status, Payload: mr.Payload})
	}
	if opts.NoWait {
		return res, nil
	}
	return res, c.waitFactoryReset(ctx, deviceID, opts, res)
}

func (c *Client) waitFactoryReset(ctx context.Context, deviceID string, opts RebootOptions, res *FactoryResetResult) error {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, opts.WaitTimeout)
	defer cancel()
	interval := opts.PollInterval
	var lastErr error
	for {
		twin, err := c.Twin(wctx, deviceID)
		res.Polls++
		res.WaitDuration = time.Since(start)
		switch {
		case err == nil:
			lastErr = nil
			res.ResetTime, res.HasResetTime = reportedTime(twin, FactoryResetTimeProperty)
			if res.HasResetTime && (!res.HasPreviousTime || res.ResetTime != res.PreviousResetTime) {
				res.Confirmed = true
				return nil
			}
			interval = opts.PollInterval
		case ctx.Err() != nil:
			return fmt.Errorf("factory reset device %q: wait for new factoryResetTime: %w", deviceID, ctx.Err())
		case wctx.Err() != nil:
		case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrDeviceNotFound):
			return fmt.Errorf("factory reset device %q: wait for new factoryResetTime: %w", deviceID, err)
		case errors.Is(err, ErrThrottled):
			lastErr = err
			interval = min(interval*2, max(MaxPollInterval, opts.PollInterval))
		default:
			lastErr = err
		}
		if wctx.Err() == nil {
			err = c.sleep(wctx, interval)
		}
		if wctx.Err() != nil || err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("factory reset device %q: wait for new factoryResetTime: %w", deviceID, ctx.Err())
			}
			res.WaitDuration = time.Since(start)
			seen := "no factoryResetTime reported"
			if res.HasResetTime {
				seen = fmt.Sprintf("factoryResetTime still %q", res.ResetTime)
			}
			if lastErr != nil {
				return fmt.Errorf("factory reset device %q: %w: %s after %v (last poll: %v)", deviceID, ErrFactoryResetNotConfirmed, seen, opts.WaitTimeout, lastErr)
			}
			return fmt.Errorf("factory reset device %q: %w: %s after %v", deviceID, ErrFactoryResetNotConfirmed, seen, opts.WaitTimeout)
		}
	}
}

// reportedTime reads a reported property as rebootTimeOf reads rebootTime.
func reportedTime(t *iothub.Twin, name string) (string, bool) {
	if t == nil || t.Properties.Reported == nil {
		return "", false
	}
	v, ok := t.Properties.Reported[name]
	if !ok || v == nil {
		return "", false
	}
	if s, ok := v.(string); ok {
		return s, true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v), true
	}
	return string(b), true
}
