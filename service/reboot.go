package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Reboot flow defaults.
const (
	RebootMethod        = "rebootDevice"
	RebootTimeProperty  = "rebootTime"
	DefaultWaitTimeout  = 2 * time.Minute
	DefaultPollInterval = time.Second
	// DefaultJobTimeout is a fleet reboot job's maxExecutionTimeInSeconds
	// unless the caller says otherwise (the service SDKs' default too); see
	// package service/rollout.
	DefaultJobTimeout = time.Hour
	// MaxPollInterval caps a poll interval that doubles while the hub
	// throttles (unless the caller's own interval is longer).
	MaxPollInterval = 30 * time.Second
)

// RebootOptions configures Reboot. The zero value invokes rebootDevice with
// payload {}, a 30 s response timeout, no connect timeout, and waits up to
// 2 minutes for the new rebootTime, polling every second.
type RebootOptions struct {
	Payload         json.RawMessage // method payload; nil means {}
	ResponseTimeout time.Duration   // device answer deadline (default 30 s); whole seconds, rounded up
	ConnectTimeout  time.Duration   // how long the hub waits for the device to connect (default 0)
	NoWait          bool            // return after the device's answer, without confirming
	WaitTimeout     time.Duration   // confirmation deadline, counted from the device's answer (default 2 min)
	PollInterval    time.Duration   // twin poll interval (default 1 s); doubles while the hub throttles
	// Progress, if set, is called at each stage with a snapshot of the result.
	Progress func(RebootProgress)
}

// RebootStage names a step of the reboot flow.
type RebootStage int

const (
	StageBaseline  RebootStage = iota + 1 // the twin was read before invoking
	StageInvoked                          // the device answered the method
	StagePolled                           // one twin poll finished (Err set if it failed)
	StageConfirmed                        // a new rebootTime was seen
)

func (s RebootStage) String() string {
	switch s {
	case StageBaseline:
		return "baseline"
	case StageInvoked:
		return "invoked"
	case StagePolled:
		return "polled"
	case StageConfirmed:
		return "confirmed"
	}
	return fmt.Sprintf("RebootStage(%d)", int(s))
}

// RebootProgress reports one stage of the reboot flow.
type RebootProgress struct {
	Stage  RebootStage
	Result RebootResult // a snapshot at this stage
	Poll   int          // poll number, for StagePolled
	Err    error        // a poll's error, for StagePolled
}

// RebootResult is what the reboot flow saw. A rebootTime is rendered as the
// string the device reported (or compact JSON for a non-string value); the
// Has* fields tell an absent property from an empty one.
type RebootResult struct {
	DeviceID           string
	Status             int             // the device's answer status
	Payload            json.RawMessage // the device's answer payload
	PreviousRebootTime string          // reported.rebootTime before the invocation
	HasPreviousTime    bool
	RebootTime         string // last reported.rebootTime seen after the invocation
	HasRebootTime      bool
	InvokeDuration     time.Duration // the method call's duration
	WaitDuration       time.Duration // time spent waiting for the new rebootTime
	Confirmed          bool          // rebootTime differs from the baseline
	Polls              int           // twin reads while waiting
}

// Reboot invokes rebootDevice on a device and confirms the reboot through
// the twin: it reads reported.rebootTime first (the baseline, possibly
// absent), invokes the method once, and then polls the twin until
// rebootTime differs from the baseline. The first poll happens at once, so
// a device that answers only after rebooting is confirmed immediately.
//
// Errors: the method's errors (ErrDeviceNotFound, ErrDeviceNotOnline,
// ErrMethodTimeout, ...) as InvokeMethod returns them; *DeviceStatusError
// when the device answers 400 or more (the result holds its answer);
// ErrRebootNotConfirmed when the wait deadline passes (the result holds what
// was seen). The result is non-nil whenever the device answered.
func (c *Client) Reboot(ctx context.Context, deviceID string, opts RebootOptions) (*RebootResult, error) {
	return c.invokeConfirmed(ctx, deviceID, rebootFlow, opts)
}

// confirmedMethod is a direct method whose effect the device confirms by
// reporting a new timestamp: rebootDevice and rebootTime, factoryReset and
// factoryResetTime.
type confirmedMethod struct {
	method, property string
	verb             string // for errors: "reboot", "factory reset"
	notConfirmed     error  // the wait deadline passed
}

var rebootFlow = confirmedMethod{method: RebootMethod, property: RebootTimeProperty, verb: "reboot", notConfirmed: ErrRebootNotConfirmed}

// invokeConfirmed reads the baseline of m.property, invokes m.method once
// and, unless opts.NoWait, polls the twin until the property differs from
// the baseline (see Reboot).
func (c *Client) invokeConfirmed(ctx context.Context, deviceID string, m confirmedMethod, opts RebootOptions) (*RebootResult, error) {
	opts = opts.withDefaults()
	res := &RebootResult{DeviceID: deviceID}
	progress := func(p RebootProgress) {
		if opts.Progress != nil {
			p.Result = *res
			opts.Progress(p)
		}
	}

	base, err := c.Twin(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("%s: read baseline: %w", m.verb, err)
	}
	res.PreviousRebootTime, res.HasPreviousTime = reportedTime(base, m.property)
	progress(RebootProgress{Stage: StageBaseline})

	rt, ct := ceilSeconds(opts.ResponseTimeout), ceilSeconds(opts.ConnectTimeout)
	start := time.Now()
	mr, err := c.InvokeMethod(ctx, deviceID, iothub.MethodRequest{
		MethodName:               m.method,
		Payload:                  opts.Payload,
		ResponseTimeoutInSeconds: &rt,
		ConnectTimeoutInSeconds:  &ct,
	})
	res.InvokeDuration = time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.verb, err)
	}
	res.Status, res.Payload = mr.Status, mr.Payload
	progress(RebootProgress{Stage: StageInvoked})
	if mr.Status >= 400 {
		return res, fmt.Errorf("%s device %q: %w", m.verb, deviceID, &DeviceStatusError{Status: mr.Status, Payload: mr.Payload})
	}
	if opts.NoWait {
		return res, nil
	}
	err = c.waitConfirmed(ctx, deviceID, m, opts, res, progress)
	return res, err
}

// waitConfirmed polls the twin until m.property differs from the baseline.
func (c *Client) waitConfirmed(ctx context.Context, deviceID string, m confirmedMethod, opts RebootOptions, res *RebootResult, progress func(RebootProgress)) error {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, opts.WaitTimeout)
	defer cancel()
	interval := opts.PollInterval
	var lastErr error
	read := false // a poll succeeded
	for {
		twin, err := c.Twin(wctx, deviceID)
		res.Polls++
		res.WaitDuration = time.Since(start)
		switch {
		case err == nil:
			lastErr, read = nil, true
			res.RebootTime, res.HasRebootTime = reportedTime(twin, m.property)
			if res.HasRebootTime && (!res.HasPreviousTime || res.RebootTime != res.PreviousRebootTime) {
				res.Confirmed = true
				progress(RebootProgress{Stage: StageConfirmed})
				return nil
			}
			interval = opts.PollInterval
		case ctx.Err() != nil:
			return fmt.Errorf("%s device %q: wait for new %s: %w", m.verb, deviceID, m.property, ctx.Err())
		case wctx.Err() != nil:
			// The deadline cut this poll short; report what was seen before.
		case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrDeviceNotFound):
			return fmt.Errorf("%s device %q: wait for new %s: %w", m.verb, deviceID, m.property, err)
		case errors.Is(err, ErrThrottled):
			lastErr = err
			interval = min(interval*2, max(MaxPollInterval, opts.PollInterval))
		default:
			// The hub or the network failed this poll; keep polling until
			// the deadline, the change may still be confirmed.
			lastErr = err
		}
		progress(RebootProgress{Stage: StagePolled, Poll: res.Polls, Err: err})
		if wctx.Err() == nil {
			c.log.Debug().Str("device", deviceID).Int("poll", res.Polls).Dur("next", interval).
				AnErr("error", err).Msg(m.property + " not updated yet")
			err = c.sleep(wctx, interval)
		}
		if wctx.Err() != nil || err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s device %q: wait for new %s: %w", m.verb, deviceID, m.property, ctx.Err())
			}
			res.WaitDuration = time.Since(start)
			return notConfirmed(deviceID, m, opts.WaitTimeout, res, read, lastErr)
		}
	}
}

func notConfirmed(deviceID string, m confirmedMethod, wait time.Duration, res *RebootResult, read bool, lastErr error) error {
	var seen string
	switch {
	case res.HasRebootTime:
		seen = fmt.Sprintf("%s still %q", m.property, res.RebootTime)
	case read:
		seen = "no " + m.property + " reported"
	default:
		seen = "no successful twin read"
	}
	if lastErr != nil {
		return fmt.Errorf("%s device %q: %w: %s after %v (last poll: %v)", m.verb, deviceID, m.notConfirmed, seen, wait, lastErr)
	}
	return fmt.Errorf("%s device %q: %w: %s after %v", m.verb, deviceID, m.notConfirmed, seen, wait)
}

func (o RebootOptions) withDefaults() RebootOptions {
	if len(bytes.TrimSpace(o.Payload)) == 0 {
		o.Payload = json.RawMessage(`{}`)
	}
	if o.ResponseTimeout <= 0 {
		o.ResponseTimeout = DefaultResponseTimeout
	}
	if o.ConnectTimeout < 0 {
		o.ConnectTimeout = 0
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	return o
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// reportedTime reads a reported property: the string itself, or compact
// JSON for any other value; ok is false when it is absent or null.
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
