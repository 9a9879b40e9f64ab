// Package rollout reboots the devices a twin condition picks, through IoT
// Hub jobs, in staged waves with an abort rule, and confirms every reboot
// through the twins' reported rebootTime. It drives a *service.Client
// through its exported API only.
package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// Rollout limits.
const (
	// ConfirmBatch is the most device ids one confirmation query names.
	ConfirmBatch = 100
	// confirmParallel bounds the confirmation queries in flight.
	confirmParallel = 4
	// baselinePageSize is the page size asked for the baseline query.
	baselinePageSize = 1000
	// cancelTimeout bounds the job cancel sent after an interruption.
	cancelTimeout = 10 * time.Second
	// pollGrace is added to a job's maxExecutionTime before a wave whose
	// job status cannot be read any more gives up.
	pollGrace = time.Minute
)

// Options configures Run. Condition is required; the other zero values
// pick the defaults: payload {}, a 30 s response timeout, one wave over
// every device, a 2 minute wait for rebootTimes, a poll every second.
type Options struct {
	// Condition picks the devices: the body of a WHERE clause over twins
	// ("tags.site = 'lab'").
	Condition       string
	Payload         json.RawMessage // rebootDevice payload; nil means {}
	ResponseTimeout time.Duration   // per device (default 30 s), whole seconds
	ConnectTimeout  time.Duration   // per device (default 0)
	// Waves is the staged-rollout plan (see WaveSizes); nil means one wave.
	Waves []Step
	// AbortFailureRate stops the rollout after a wave (other than the last)
	// whose failure rate (failed + offline + unconfirmed) / wave size
	// exceeds it. The zero value stops at any failure; negative never stops.
	AbortFailureRate float64
	// WaitTimeout is how long a wave waits for new rebootTimes once its job
	// has finished (default 2 min).
	WaitTimeout time.Duration
	// PollInterval paces job polls and confirmation queries (default 1 s).
	PollInterval time.Duration
	// MaxExecutionTime is each job's maxExecutionTimeInSeconds (default
	// service.DefaultJobTimeout).
	MaxExecutionTime time.Duration
	// JobIDPrefix names the jobs PREFIX-w1, PREFIX-w2, ...; default
	// "dmctl-reboot-" and the UTC start time (20060102T150405 and
	// milliseconds, e.g. dmctl-reboot-20261125T200545123Z-w1).
	JobIDPrefix string
	// Progress, if set, is called from Run's goroutine at each step.
	Progress func(Progress)
}

// DefaultJobIDPrefix is the job id prefix for a rollout started at t.
func DefaultJobIDPrefix(t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("dmctl-reboot-%s%03dZ", t.Format("20060102T150405"), t.Nanosecond()/int(time.Millisecond))
}

func (o Options) withDefaults(now time.Time) (Options, error) {
	if strings.TrimSpace(o.Condition) == "" {
		return o, errors.New("fleet reboot: empty condition")
	}
	if len(bytes.TrimSpace(o.Payload)) == 0 {
		o.Payload = json.RawMessage(`{}`)
	}
	if o.ResponseTimeout <= 0 {
		o.ResponseTimeout = service.DefaultResponseTimeout
	}
	o.ConnectTimeout = max(o.ConnectTimeout, 0)
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = service.DefaultWaitTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = service.DefaultPollInterval
	}
	if o.MaxExecutionTime <= 0 {
		o.MaxExecutionTime = service.DefaultJobTimeout
	}
	if o.JobIDPrefix == "" {
		o.JobIDPrefix = DefaultJobIDPrefix(now)
	}
	if err := iothub.ValidJobID(o.JobIDPrefix + "-w999-999"); err != nil {
		return o, fmt.Errorf("fleet reboot: job id prefix: %w", err)
	}
	return o, nil
}

// Run reboots the devices a condition picks through IoT Hub jobs and
// confirms every reboot through the twins:
//
//  1. One paged query reads the matching devices and their
//     reported.rebootTime (SELECT deviceId, properties.reported.rebootTime
//     FROM devices WHERE <condition>); an absent rebootTime is a baseline
//     too.
//  2. The devices, in deviceId order, are split into waves
//     (Options.Waves). Each wave is one scheduleDeviceMethod job calling
//     rebootDevice, with queryCondition deviceId IN [the wave's ids], named
//     PREFIX-wN; a wave whose id list does not fit one condition
//     (MaxConditionLength) gets several jobs, PREFIX-wN-1, PREFIX-wN-2, ...,
//     all created at once (the hub queues what it cannot run yet).
//  3. While the job runs, its status is polled, and the wave's unconfirmed
//     devices are read back in batched twin queries (at most ConfirmBatch
//     ids each); a rebootTime that differs from the baseline confirms a
//     device. Once the job has finished, its device rows give the
//     failures (device status >= 400, offline, deleted, not called; see
//     applyRows), and the wave waits up to WaitTimeout for the remaining
//     confirmations. A device whose call timed out still succeeds if its
//     rebootTime moves (it may answer only after rebooting).
//  4. After a wave whose failure rate exceeds AbortFailureRate, the
//     rollout stops: later devices are skipped. It stops too when a job
//     ends failed or cancelled.
//
// The result is non-nil once the baseline was read. The error is nil when
// every device was confirmed; otherwise it describes the worst outcome and
// wraps the matching error: *service.DeviceStatusError,
// service.ErrMethodTimeout, ErrDeviceNotOnline, ErrDeviceNotFound or
// ErrRebootNotConfirmed (in that order of precedence; see Result.Err). When
// ctx ends, the running job is cancelled and the error wraps ctx's error.
// ErrNoDevices when the condition matches nothing.
func Run(ctx context.Context, c *service.Client, opts Options) (*Result, error) {
	start := time.Now()
	opts, err := opts.withDefaults(c.Now())
	if err != nil {
		return nil, err
	}
	r := &rollout{c: c, opts: opts, res: &Result{Condition: opts.Condition}}
	if err := r.readBaseline(ctx); err != nil {
		return nil, err
	}
	if len(r.res.Devices) == 0 {
		return r.res, fmt.Errorf("fleet reboot where %s: %w", opts.Condition, ErrNoDevices)
	}
	sizes := WaveSizes(opts.Waves, len(r.res.Devices))
	r.res.Planned = len(sizes)
	r.report(Progress{Stage: StageBaseline})
	runErr := r.runWaves(ctx, sizes)
	r.res.Counts = countAll(r.res.Devices)
	r.res.Duration = time.Since(start)
	if runErr != nil {
		return r.res, fmt.Errorf("fleet reboot where %s: %w", opts.Condition, runErr)
	}
	return r.res, r.res.Err()
}

// rollout is one run of Run: the client, the options with their defaults,
// and the result being filled in.
type rollout struct {
	c    *service.Client
	opts Options
	res  *Result
}

// report passes p to Options.Progress with the rollout's totals.
func (r *rollout) report(p Progress) {
	if r.opts.Progress != nil {
		p.Devices = len(r.res.Devices)
		p.Waves = r.res.Planned
		r.opts.Progress(p)
	}
}

// runWaves runs the waves of the given sizes, in order, until the last or
// until one stops the rollout; the devices after the stop are skipped. The
// error is the one that ended a wave before its outcomes were settled.
func (r *rollout) runWaves(ctx context.Context, sizes []int) error {
	lo := 0
	var runErr error
	for k, size := range sizes {
		wr, err := newWave(r, k+1, r.res.Devices[lo:lo+size]).run(ctx)
		r.res.Waves = append(r.res.Waves, wr)
		lo += size
		if err != nil {
			runErr = err
			r.res.Interrupted = ctx.Err() != nil
			r.res.Stopped = lo < len(r.res.Devices)
			r.res.StopReason = fmt.Sprintf("wave %d of %d did not finish: %v", wr.Wave, len(sizes), err)
			break
		}
		if lo == len(r.res.Devices) {
			break
		}
		if reason := r.stopReason(wr, len(sizes)); reason != "" {
			r.res.Stopped, r.res.StopReason = true, reason
			break
		}
	}
	for i := lo; i < len(r.res.Devices); i++ {
		d := &r.res.Devices[i]
		d.Outcome = OutcomeSkipped
		d.Reason = "not rebooted: the rollout stopped before this device's wave"
	}
	if r.res.Stopped {
		r.report(Progress{Stage: StageStoppedEarly, Reason: r.res.StopReason})
	}
	return runErr
}

// stopReason is why the rollout stops after wave wr of planned, "" when it
// goes on: a job that did not complete, or a failure rate above
// AbortFailureRate.
func (r *rollout) stopReason(wr WaveResult, planned int) string {
	switch {
	case wr.JobStatus != iothub.JobCompleted:
		reason := fmt.Sprintf("the job of wave %d (%s) ended %s", wr.Wave, strings.Join(wr.JobIDs, ", "), wr.JobStatus)
		if wr.FailureReason != "" {
			reason += ": " + wr.FailureReason
		}
		return reason
	case r.opts.AbortFailureRate >= 0 && wr.FailureRate > r.opts.AbortFailureRate:
		return fmt.Sprintf("wave %d of %d: %d of %d devices not rebooted (%s), above the abort threshold of %s",
			wr.Wave, planned, wr.Counts.Unsuccessful(), wr.Size, percent(wr.FailureRate), percent(r.opts.AbortFailureRate))
	}
	return ""
}

func percent(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f*100), "0"), ".") + "%"
}
