package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Fleet reboot limits.
const (
	// ConfirmBatch is the most device ids one confirmation query names.
	ConfirmBatch = 100
	// confirmParallel bounds the confirmation queries in flight.
	confirmParallel = 4
	// baselinePageSize is the page size asked for the baseline query.
	baselinePageSize = 1000
	// cancelTimeout bounds the job cancel sent after an interruption.
	cancelTimeout = 10 * time.Second
	// DefaultJobTimeout is a fleet reboot job's maxExecutionTimeInSeconds
	// unless the caller says otherwise (the service SDKs' default too).
	DefaultJobTimeout = time.Hour
	// pollGrace is added to a job's maxExecutionTime before a wave whose
	// job status cannot be read any more gives up.
	pollGrace = time.Minute
)

// ErrNoDevices: the fleet reboot's condition matched no device.
var ErrNoDevices = errors.New("service: no device matches the condition")

// FleetOutcome is what happened to one device of a fleet reboot.
type FleetOutcome string

const (
	// OutcomeSucceeded: the device reported a new rebootTime.
	OutcomeSucceeded FleetOutcome = "succeeded"
	// OutcomeFailed: the device answered with a status of 400 or more, did
	// not answer in time, no longer exists, or its job row failed otherwise.
	OutcomeFailed FleetOutcome = "failed"
	// OutcomeOffline: the device was not connected when the job called it.
	OutcomeOffline FleetOutcome = "offline"
	// OutcomeUnconfirmed: the device accepted the reboot but did not report
	// a new rebootTime before the wait timeout.
	OutcomeUnconfirmed FleetOutcome = "unconfirmed"
	// OutcomeSkipped: the device was not called (the rollout stopped first).
	OutcomeSkipped FleetOutcome = "skipped"
)

// FailureKind refines OutcomeFailed.
type FailureKind string

const (
	FailureDeviceStatus  FailureKind = "device-status"  // answered >= 400
	FailureMethodTimeout FailureKind = "method-timeout" // no answer within the response timeout
	FailureNotFound      FailureKind = "not-found"      // the device no longer exists
	FailureJob           FailureKind = "job"            // the job failed the row otherwise
)

// DeviceReboot is one device's result in a fleet reboot. A rebootTime is
// the string the device reported (compact JSON for another value); the
// Has* fields tell an absent property from an empty one.
type DeviceReboot struct {
	DeviceID           string
	Wave               int    // 1-based wave number; 0 when the device was in no wave
	JobID              string // the job that called it
	Outcome            FleetOutcome
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
func (d *DeviceReboot) settle(reason string) {
	if d.laterFailure != "" {
		d.Outcome, d.Failure, d.Reason = OutcomeFailed, d.laterFailure, d.laterReason
		return
	}
	d.Outcome, d.Reason = OutcomeUnconfirmed, reason
}

// FleetCounts counts devices by outcome.
type FleetCounts struct {
	Total       int `json:"total"`
	Succeeded   int `json:"succeeded"`
	Failed      int `json:"failed"`
	Offline     int `json:"offline"`
	Unconfirmed int `json:"unconfirmed"`
	Skipped     int `json:"skipped"`
}

// Unsuccessful is failed + offline + unconfirmed: the devices that were
// called and are not known to have rebooted.
func (c FleetCounts) Unsuccessful() int { return c.Failed + c.Offline + c.Unconfirmed }

func (c *FleetCounts) add(o FleetOutcome) {
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

// WaveResult is one wave of a fleet reboot.
type WaveResult struct {
	Wave int
	// JobIDs are the wave's jobs: one, PREFIX-wN, unless the wave's id list
	// does not fit one queryCondition (MaxConditionLength); then
	// PREFIX-wN-1, PREFIX-wN-2, ...
	JobIDs        []string
	Size          int
	JobStatus     string // the jobs' final status: completed, or the first other one
	FailureReason string // the jobs' failureReason
	Counts        FleetCounts
	FailureRate   float64 // Counts.Unsuccessful() / Size
	Duration      time.Duration
}

// FleetResult is the outcome of FleetReboot.
type FleetResult struct {
	Condition   string
	Devices     []DeviceReboot // in deviceId order
	Waves       []WaveResult   // the waves that ran
	Planned     int            // waves planned
	Counts      FleetCounts
	Stopped     bool   // the rollout stopped before its last wave
	StopReason  string // why, in words
	Interrupted bool   // ctx ended during the rollout
	Duration    time.Duration
}

// FleetStage names a step of FleetReboot.
type FleetStage int

const (
	FleetBaseline     FleetStage = iota + 1 // the devices and their rebootTime baselines were read
	FleetWaveStarted                        // a wave's job was created
	FleetWavePolled                         // one round of job status and confirmation queries finished
	FleetWaveDone                           // a wave's outcomes are final
	FleetStoppedEarly                       // the rollout stopped before its last wave
)

func (s FleetStage) String() string {
	switch s {
	case FleetBaseline:
		return "baseline"
	case FleetWaveStarted:
		return "wave-started"
	case FleetWavePolled:
		return "wave-polled"
	case FleetWaveDone:
		return "wave-done"
	case FleetStoppedEarly:
		return "stopped"
	}
	return fmt.Sprintf("FleetStage(%d)", int(s))
}

// FleetProgress reports one step of FleetReboot. Counts hold only the
// devices of the current wave whose outcome is known.
type FleetProgress struct {
	Stage     FleetStage
	Devices   int // devices the condition matched
	Wave      int // current wave (1-based), 0 before the first
	Waves     int // waves planned
	WaveSize  int
	JobIDs    []string            // the wave's jobs
	JobStatus string              // their status (see WaveResult.JobStatus)
	Stats     DeviceJobStatistics // their statistics, summed
	Counts    FleetCounts         // outcomes known so far in this wave
	Elapsed   time.Duration
	Err       error  // a failed poll (FleetWavePolled), kept going
	Reason    string // FleetStoppedEarly: why
}

// FleetRebootOptions configures FleetReboot. Condition is required; the
// other zero values pick the defaults: payload {}, a 30 s response
// timeout, one wave over every device, a 2 minute wait for rebootTimes, a
// poll every second.
type FleetRebootOptions struct {
	// Condition picks the devices: the body of a WHERE clause over twins
	// ("tags.site = 'lab'").
	Condition       string
	Payload         json.RawMessage // rebootDevice payload; nil means {}
	ResponseTimeout time.Duration   // per device (default 30 s), whole seconds
	ConnectTimeout  time.Duration   // per device (default 0)
	// Waves is the staged-rollout plan (see WaveSizes); nil means one wave.
	Waves []Wave
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
	// DefaultJobTimeout).
	MaxExecutionTime time.Duration
	// JobIDPrefix names the jobs PREFIX-w1, PREFIX-w2, ...; default
	// "dmctl-reboot-" and the UTC start time (20060102T150405 and
	// milliseconds, e.g. dmctl-reboot-20261125T200545123Z-w1).
	JobIDPrefix string
	// Progress, if set, is called from FleetReboot's goroutine at each step.
	Progress func(FleetProgress)
}

// DefaultJobIDPrefix is the job id prefix for a fleet reboot started at t.
func DefaultJobIDPrefix(t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("dmctl-reboot-%s%03dZ", t.Format("20060102T150405"), t.Nanosecond()/int(time.Millisecond))
}

func (o FleetRebootOptions) withDefaults(now time.Time) (FleetRebootOptions, error) {
	if strings.TrimSpace(o.Condition) == "" {
		return o, errors.New("fleet reboot: empty condition")
	}
	if len(bytes.TrimSpace(o.Payload)) == 0 {
		o.Payload = json.RawMessage(`{}`)
	}
	if o.ResponseTimeout <= 0 {
		o.ResponseTimeout = DefaultResponseTimeout
	}
	o.ConnectTimeout = max(o.ConnectTimeout, 0)
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.MaxExecutionTime <= 0 {
		o.MaxExecutionTime = DefaultJobTimeout
	}
	if o.JobIDPrefix == "" {
		o.JobIDPrefix = DefaultJobIDPrefix(now)
	}
	if err := ValidJobID(o.JobIDPrefix + "-w999-999"); err != nil {
		return o, fmt.Errorf("fleet reboot: job id prefix: %w", err)
	}
	return o, nil
}

// FleetReboot reboots the devices a condition picks through IoT Hub jobs
// and confirms every reboot through the twins:
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
// wraps the matching error: *DeviceStatusError, ErrMethodTimeout,
// ErrDeviceNotOnline, ErrDeviceNotFound or ErrRebootNotConfirmed (in that
// order of precedence; see FleetResult.Err). When ctx ends, the running
// job is cancelled and the error wraps ctx's error. ErrNoDevices when the
// condition matches nothing.
func (c *Client) FleetReboot(ctx context.Context, opts FleetRebootOptions) (*FleetResult, error) {
	start := time.Now()
	opts, err := opts.withDefaults(c.now())
	if err != nil {
		return nil, err
	}
	res := &FleetResult{Condition: opts.Condition}
	if err := c.readBaseline(ctx, opts.Condition, res); err != nil {
		return nil, err
	}
	report := func(p FleetProgress) {
		if opts.Progress != nil {
			p.Devices = len(res.Devices)
			p.Waves = res.Planned
			opts.Progress(p)
		}
	}
	if len(res.Devices) == 0 {
		return res, fmt.Errorf("fleet reboot where %s: %w", opts.Condition, ErrNoDevices)
	}
	sizes := WaveSizes(opts.Waves, len(res.Devices))
	res.Planned = len(sizes)
	report(FleetProgress{Stage: FleetBaseline})

	lo := 0
	var runErr error
	for w, size := range sizes {
		wr, err := c.runWave(ctx, opts, res, w+1, res.Devices[lo:lo+size], report)
		res.Waves = append(res.Waves, wr)
		lo += size
		if err != nil {
			runErr = err
			res.Interrupted = ctx.Err() != nil
			res.Stopped = lo < len(res.Devices)
			res.StopReason = fmt.Sprintf("wave %d of %d did not finish: %v", w+1, len(sizes), err)
			break
		}
		if lo == len(res.Devices) {
			break
		}
		switch {
		case wr.JobStatus != JobCompleted:
			res.Stopped = true
			res.StopReason = fmt.Sprintf("the job of wave %d (%s) ended %s", w+1, strings.Join(wr.JobIDs, ", "), wr.JobStatus)
			if wr.FailureReason != "" {
				res.StopReason += ": " + wr.FailureReason
			}
		case opts.AbortFailureRate >= 0 && wr.FailureRate > opts.AbortFailureRate:
			res.Stopped = true
			res.StopReason = fmt.Sprintf("wave %d of %d: %d of %d devices not rebooted (%s), above the abort threshold of %s",
				w+1, len(sizes), wr.Counts.Unsuccessful(), wr.Size, percent(wr.FailureRate), percent(opts.AbortFailureRate))
		}
		if res.Stopped {
			break
		}
	}
	for i := lo; i < len(res.Devices); i++ {
		d := &res.Devices[i]
		d.Outcome = OutcomeSkipped
		d.Reason = "not rebooted: the rollout stopped before this device's wave"
	}
	if res.Stopped {
		report(FleetProgress{Stage: FleetStoppedEarly, Reason: res.StopReason})
	}
	res.Counts = FleetCounts{}
	for _, d := range res.Devices {
		res.Counts.add(d.Outcome)
	}
	res.Duration = time.Since(start)
	if runErr != nil {
		return res, fmt.Errorf("fleet reboot where %s: %w", opts.Condition, runErr)
	}
	return res, res.Err()
}

func percent(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f*100), "0"), ".") + "%"
}

// readBaseline reads the matching devices and their rebootTime, each
// device once, and sorts them by deviceId.
func (c *Client) readBaseline(ctx context.Context, cond string, res *FleetResult) error {
	q := "SELECT deviceId, properties.reported." + RebootTimeProperty + " AS " + RebootTimeProperty +
		" FROM devices WHERE " + cond
	seen := map[string]bool{}
	err := c.Query(ctx, q, baselinePageSize, func(raw json.RawMessage) error {
		id, rt, ok, err := decodeRebootRow(raw)
		if err != nil {
			return err
		}
		if id == "" || seen[id] {
			return nil
		}
		seen[id] = true
		res.Devices = append(res.Devices, DeviceReboot{DeviceID: id, PreviousRebootTime: rt, HasPreviousTime: ok})
		return nil
	})
	if err != nil {
		return fmt.Errorf("fleet reboot where %s: read devices and their rebootTime: %w", cond, err)
	}
	slices.SortFunc(res.Devices, func(a, b DeviceReboot) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	return nil
}

// decodeRebootRow reads {"deviceId": ..., "rebootTime": ...}.
func decodeRebootRow(raw json.RawMessage) (id, rebootTime string, ok bool, err error) {
	var row struct {
		DeviceID   string          `json:"deviceId"`
		RebootTime json.RawMessage `json:"rebootTime"`
	}
	if err := json.Unmarshal(raw, &row); err != nil {
		return "", "", false, fmt.Errorf("decode query row: %w", err)
	}
	rt, ok := rawRebootTime(row.RebootTime)
	return row.DeviceID, rt, ok, nil
}

// rawRebootTime renders a rebootTime value as rebootTimeOf does: the string
// itself, compact JSON otherwise; ok is false when absent or null.
func rawRebootTime(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) == nil {
		return buf.String(), true
	}
	return string(raw), true
}

// waveCounts counts the decided devices of a wave.
func waveCounts(devs []DeviceReboot) FleetCounts {
	var c FleetCounts
	for _, d := range devs {
		if d.Outcome != "" {
			c.add(d.Outcome)
		}
	}
	return c
}

// MaxConditionLength bounds the queryCondition of one job: IoT Hub caps a
// query at 8192 characters, and the hub wraps the condition in a query.
const MaxConditionLength = 8000

// splitByCondition cuts ids into consecutive parts whose "deviceId IN
// [...]" condition stays within limit characters.
func splitByCondition(ids []string, limit int) [][]string {
	var parts [][]string
	lo, size := 0, len("deviceId IN []")
	for i, id := range ids {
		n := len(QuoteString(id)) + 2 // ", "
		if i > lo && size+n > limit {
			parts = append(parts, ids[lo:i])
			lo, size = i, len("deviceId IN []")
		}
		size += n
	}
	if lo < len(ids) {
		parts = append(parts, ids[lo:])
	}
	return parts
}

// waveJobs is the jobs of one wave.
type waveJobs struct {
	ids  []string       // job ids
	jobs []*JobResponse // as last read; nil when not created
}

func (w *waveJobs) terminal() bool {
	for _, j := range w.jobs {
		if j != nil && !JobTerminal(j.Status) {
			return false
		}
	}
	return true
}

// status is the wave's job status: the one status all created jobs share,
// else the first that is not completed (running before failed, so that a
// wave reads "running" until every job has finished).
func (w *waveJobs) status() string {
	var first, running string
	for _, j := range w.jobs {
		if j == nil {
			continue
		}
		if !JobTerminal(j.Status) && running == "" {
			running = j.Status
		}
		if j.Status != JobCompleted && first == "" {
			first = j.Status
		}
	}
	switch {
	case running != "":
		return running
	case first != "":
		return first
	}
	for _, j := range w.jobs {
		if j != nil {
			return j.Status
		}
	}
	return ""
}

func (w *waveJobs) stats() DeviceJobStatistics {
	var s DeviceJobStatistics
	for _, j := range w.jobs {
		st := j.Stats()
		s.DeviceCount += st.DeviceCount
		s.FailedCount += st.FailedCount
		s.SucceededCount += st.SucceededCount
		s.RunningCount += st.RunningCount
		s.PendingCount += st.PendingCount
	}
	return s
}

func (w *waveJobs) failureReason() string {
	var rs []string
	for _, j := range w.jobs {
		if j != nil && j.FailureReason != "" {
			rs = append(rs, j.JobID+": "+j.FailureReason)
		}
	}
	return strings.Join(rs, "; ")
}

// runWave reboots devs with one job (more when the id list does not fit
// one condition) and settles each device's outcome.
func (c *Client) runWave(ctx context.Context, opts FleetRebootOptions, res *FleetResult, wave int, devs []DeviceReboot, report func(FleetProgress)) (WaveResult, error) {
	start := time.Now()
	ids := make([]string, len(devs))
	for i := range devs {
		ids[i] = devs[i].DeviceID
		devs[i].Wave = wave
	}
	parts := splitByCondition(ids, MaxConditionLength)
	wj := &waveJobs{ids: make([]string, len(parts)), jobs: make([]*JobResponse, len(parts))}
	for k := range parts {
		wj.ids[k] = fmt.Sprintf("%s-w%d", opts.JobIDPrefix, wave)
		if len(parts) > 1 {
			wj.ids[k] += fmt.Sprintf("-%d", k+1)
		}
	}
	partOf := make([]int, len(devs))
	for k, at := 0, 0; k < len(parts); k++ {
		for range parts[k] {
			partOf[at] = k
			devs[at].JobID = wj.ids[k]
			at++
		}
	}
	wr := WaveResult{Wave: wave, JobIDs: wj.ids, Size: len(devs)}
	finish := func() WaveResult {
		wr.JobStatus, wr.FailureReason = wj.status(), wj.failureReason()
		wr.Counts = waveCounts(devs)
		wr.Counts.Total = len(devs)
		if wr.Size > 0 {
			wr.FailureRate = float64(wr.Counts.Unsuccessful()) / float64(wr.Size)
		}
		wr.Duration = time.Since(start)
		return wr
	}
	progress := func(stage FleetStage, err error) {
		report(FleetProgress{Stage: stage, Wave: wave, WaveSize: len(devs), JobIDs: wj.ids,
			JobStatus: wj.status(), Stats: wj.stats(), Counts: waveCounts(devs), Elapsed: time.Since(start), Err: err})
	}

	// Create every part's job at once; the hub queues what it cannot run yet.
	var createErr error
	maxExec := time.Duration(0)
	for k, part := range parts {
		job, err := c.CreateJob(ctx, JobRequest{
			JobID:          wj.ids[k],
			Type:           JobTypeDeviceMethod,
			QueryCondition: IDListCondition(part),
			CloudToDeviceMethod: &JobMethod{
				MethodName:               RebootMethod,
				Payload:                  opts.Payload,
				ResponseTimeoutInSeconds: ceilSeconds(opts.ResponseTimeout),
				ConnectTimeoutInSeconds:  ceilSeconds(opts.ConnectTimeout),
			},
			StartTime:        c.now(),
			MaxExecutionTime: opts.MaxExecutionTime,
		})
		if err != nil {
			createErr = err
			break
		}
		wj.jobs[k] = job
		maxExec = max(maxExec, time.Duration(job.MaxExecutionTimeInSeconds)*time.Second)
	}
	if createErr != nil {
		for i := range devs {
			if wj.jobs[partOf[i]] == nil {
				devs[i].Outcome = OutcomeSkipped
				devs[i].Reason = "not rebooted: the job could not be created"
				devs[i].JobID = ""
			}
		}
		if wj.jobs[0] == nil {
			return finish(), createErr
		}
	}
	progress(FleetWaveStarted, nil)

	if maxExec <= 0 {
		maxExec = time.Hour
	}
	giveUp := start.Add(maxExec + opts.WaitTimeout + pollGrace)
	var confirmBy time.Time
	rowsRead := make([]bool, len(parts))
	allRead := func() bool {
		for k := range parts {
			if wj.jobs[k] != nil && !rowsRead[k] {
				return false
			}
		}
		return true
	}
	interrupted := func(err error) (WaveResult, error) {
		for k, j := range wj.jobs {
			if j == nil || JobTerminal(j.Status) {
				continue
			}
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelTimeout)
			if cj, cerr := c.CancelJob(cctx, wj.ids[k]); cerr == nil {
				wj.jobs[k] = cj
				c.log.Info().Str("job", wj.ids[k]).Msg("job cancelled after interruption")
			} else {
				c.log.Warn().Str("job", wj.ids[k]).Err(cerr).Msg("could not cancel the job after interruption")
			}
			cancel()
		}
		for i := range devs {
			if devs[i].Outcome == "" {
				devs[i].settle("interrupted before the reboot was confirmed")
			}
		}
		return finish(), err
	}

	interval := opts.PollInterval
	for {
		var pollErr error
		for k, j := range wj.jobs {
			if j == nil {
				continue
			}
			if !JobTerminal(j.Status) {
				nj, err := c.Job(ctx, wj.ids[k])
				switch {
				case err == nil:
					wj.jobs[k], j = nj, nj
				case ctx.Err() != nil:
					return interrupted(ctx.Err())
				case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrJobNotFound):
					return interrupted(err)
				default:
					pollErr = err
				}
			}
			if JobTerminal(j.Status) && !rowsRead[k] {
				rows := map[string]DeviceJob{}
				err := c.DeviceJobs(ctx, wj.ids[k], func(r DeviceJob) error {
					rows[r.DeviceID] = r
					return nil
				})
				switch {
				case err == nil:
					var mine []int
					for i := range devs {
						if partOf[i] == k {
							mine = append(mine, i)
						}
					}
					applyRows(devs, mine, rows)
					rowsRead[k] = true
				case ctx.Err() != nil:
					return interrupted(ctx.Err())
				default:
					pollErr = err
				}
			}
		}
		done := allRead()
		if done && confirmBy.IsZero() {
			confirmBy = time.Now().Add(opts.WaitTimeout)
		}
		cands := undecided(devs)
		if len(cands) > 0 && (done || wj.stats().Finished() > 0) {
			if err := c.confirm(ctx, devs, cands); err != nil {
				if ctx.Err() != nil {
					return interrupted(ctx.Err())
				}
				pollErr = err
			}
			cands = undecided(devs)
		}
		progress(FleetWavePolled, pollErr)
		if done && (len(cands) == 0 || !time.Now().Before(confirmBy)) {
			for _, i := range cands {
				d := &devs[i]
				if d.HasRebootTime {
					d.settle(fmt.Sprintf("no new rebootTime within %v (still %q)", opts.WaitTimeout, d.RebootTime))
				} else {
					d.settle(fmt.Sprintf("no rebootTime reported within %v", opts.WaitTimeout))
				}
			}
			break
		}
		if !time.Now().Before(giveUp) {
			for _, i := range cands {
				reason := "the job's outcome could not be read"
				if pollErr != nil {
					reason += ": " + pollErr.Error()
				}
				devs[i].settle(reason)
			}
			break
		}
		// IoT Hub throttles queries hard (20 a minute per S1 unit): back
		// off while it does.
		if errors.Is(pollErr, ErrThrottled) {
			interval = min(interval*2, max(maxPollInterval, opts.PollInterval))
		} else {
			interval = opts.PollInterval
		}
		if err := c.sleep(ctx, interval); err != nil {
			return interrupted(err)
		}
	}
	wr = finish()
	progress(FleetWaveDone, nil)
	if createErr != nil {
		return wr, createErr
	}
	return wr, nil
}

// undecided lists the indexes of devs without an outcome.
func undecided(devs []DeviceReboot) []int {
	var out []int
	for i := range devs {
		if devs[i].Outcome == "" {
			out = append(out, i)
		}
	}
	return out
}

// applyRows records the job rows of devs[idx] and settles the outcomes a
// row decides: a device that answered >= 400 failed (even if its rebootTime
// changed meanwhile); one that was offline, no longer exists, or that the
// job never called failed at once (unless its new rebootTime was already
// seen). A row that failed while the call may have reached the device
// (method timeout, hub restart) keeps the device waiting for its
// rebootTime: it succeeds if one comes, and fails with the row's reason
// otherwise.
func applyRows(devs []DeviceReboot, idx []int, rows map[string]DeviceJob) {
	for _, i := range idx {
		d := &devs[i]
		row, ok := rows[d.DeviceID]
		if !ok {
			if d.Outcome == "" {
				d.Outcome, d.Failure = OutcomeFailed, FailureNotFound
				d.Reason = "the job did not include the device (deleted since the query?)"
			}
			continue
		}
		d.RowStatus = row.Status
		if mr := row.MethodResponse(); mr != nil {
			d.Status, d.Payload = mr.Status, mr.Payload
		}
		d.ErrorCode = row.Error.CodeInt()
		desc := ""
		if row.Error != nil {
			desc = row.Error.Description
		}
		switch {
		case row.MethodResponse() != nil && d.Status >= 400:
			// Completed here; IoT Hub may also mark such a row failed.
			d.Outcome, d.Failure = OutcomeFailed, FailureDeviceStatus
			d.Reason = fmt.Sprintf("device answered with status %d", d.Status)
			if p := strings.TrimSpace(string(d.Payload)); p != "" && p != "null" {
				d.Reason += ": " + truncate(p, maxMessageLen)
			}
		case d.Outcome != "":
			// Already confirmed: the reboot happened whatever the row says.
		case row.Status == DeviceJobCompleted:
			// Answered < 400: waits for its rebootTime.
		case row.Status == DeviceJobFailed && d.ErrorCode == iothub.CodeDeviceNotOnline:
			d.Outcome, d.Reason = OutcomeOffline, withDesc("device not online", desc)
		case row.Status == DeviceJobFailed && d.ErrorCode == iothub.CodeDeviceNotFound:
			d.Outcome, d.Failure = OutcomeFailed, FailureNotFound
			d.Reason = withDesc("device not found", desc)
		case row.Status == DeviceJobCanceled:
			d.Outcome, d.Failure = OutcomeFailed, FailureJob
			d.Reason = withDesc("the job stopped before calling the device", desc)
		case row.Status == DeviceJobFailed && d.ErrorCode == iothub.CodeGatewayTimeout:
			d.laterFailure = FailureMethodTimeout
			d.laterReason = withDesc("device did not answer in time", desc)
		case row.Status == DeviceJobFailed:
			d.laterFailure = FailureJob
			what := "job row failed"
			if row.Error != nil && row.Error.Code != "" {
				what += " (error " + row.Error.Code + ")"
			}
			d.laterReason = withDesc(what, desc)
		default:
			d.Outcome, d.Failure = OutcomeFailed, FailureJob
			d.Reason = fmt.Sprintf("job row still %s after the job ended", row.Status)
		}
	}
}

func withDesc(what, desc string) string {
	if desc = strings.TrimSpace(desc); desc != "" {
		return what + ": " + truncate(desc, maxMessageLen)
	}
	return what
}

// confirm reads the rebootTime of devs[cands] in batched queries and marks
// the devices whose rebootTime differs from their baseline succeeded.
func (c *Client) confirm(ctx context.Context, devs []DeviceReboot, cands []int) error {
	type batch struct {
		idx  []int
		seen map[string]json.RawMessage
		err  error
	}
	var batches []*batch
	for lo := 0; lo < len(cands); lo += ConfirmBatch {
		batches = append(batches, &batch{idx: cands[lo:min(lo+ConfirmBatch, len(cands))]})
	}
	sem := make(chan struct{}, confirmParallel)
	var wg sync.WaitGroup
	for _, b := range batches {
		ids := make([]string, len(b.idx))
		for k, i := range b.idx {
			ids[k] = devs[i].DeviceID
		}
		q := "SELECT deviceId, properties.reported." + RebootTimeProperty + " AS " + RebootTimeProperty +
			" FROM devices WHERE " + IDListCondition(ids)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			b.seen = map[string]json.RawMessage{}
			b.err = c.Query(ctx, q, ConfirmBatch, func(raw json.RawMessage) error {
				var row struct {
					DeviceID   string          `json:"deviceId"`
					RebootTime json.RawMessage `json:"rebootTime"`
				}
				if err := json.Unmarshal(raw, &row); err != nil {
					return fmt.Errorf("decode query row: %w", err)
				}
				b.seen[row.DeviceID] = row.RebootTime
				return nil
			})
		}()
	}
	wg.Wait()
	var firstErr error
	for _, b := range batches {
		if b.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("confirm reboots: %w", b.err)
		}
		for _, i := range b.idx {
			d := &devs[i]
			raw, ok := b.seen[d.DeviceID]
			if !ok {
				continue
			}
			d.RebootTime, d.HasRebootTime = rawRebootTime(raw)
			if d.HasRebootTime && (!d.HasPreviousTime || d.RebootTime != d.PreviousRebootTime) {
				d.Outcome = OutcomeSucceeded
			}
		}
	}
	return firstErr
}

// Err summarizes the result as an error: nil when every device was
// confirmed. Otherwise the error names the counts and the first device of
// the worst kind, and wraps (in this order of precedence) a
// *DeviceStatusError, an error matching ErrMethodTimeout,
// ErrDeviceNotOnline or ErrDeviceNotFound, or ErrRebootNotConfirmed; other
// job failures and skipped devices alone give a plain error.
func (r *FleetResult) Err() error {
	if r == nil {
		return nil
	}
	c := r.Counts
	if c.Succeeded == c.Total && c.Total > 0 {
		return nil
	}
	rank := func(d *DeviceReboot) int {
		switch {
		case d.Outcome == OutcomeFailed && d.Failure == FailureDeviceStatus:
			return 6
		case d.Outcome == OutcomeFailed && d.Failure == FailureMethodTimeout:
			return 5
		case d.Outcome == OutcomeOffline:
			return 4
		case d.Outcome == OutcomeFailed && d.Failure == FailureNotFound:
			return 3
		case d.Outcome == OutcomeFailed:
			return 2
		case d.Outcome == OutcomeUnconfirmed:
			return 1
		}
		return 0
	}
	var worst *DeviceReboot
	for i := range r.Devices {
		d := &r.Devices[i]
		if rank(d) > 0 && (worst == nil || rank(d) > rank(worst)) {
			worst = d
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d devices not rebooted (%d failed, %d offline, %d unconfirmed, %d skipped)",
		c.Total-c.Succeeded, c.Total, c.Failed, c.Offline, c.Unconfirmed, c.Skipped)
	if r.Stopped && r.StopReason != "" {
		b.WriteString("; rollout stopped: ")
		b.WriteString(r.StopReason)
	}
	if worst == nil {
		return errors.New(b.String())
	}
	var cause error
	switch rank(worst) {
	case 6:
		cause = &DeviceStatusError{Status: worst.Status, Payload: worst.Payload}
	case 5:
		cause = &APIError{Status: 504, Code: iothub.CodeGatewayTimeout, Name: iothub.ErrorName(iothub.CodeGatewayTimeout), Message: worst.Reason}
	case 4:
		cause = &APIError{Status: 404, Code: iothub.CodeDeviceNotOnline, Name: iothub.ErrorName(iothub.CodeDeviceNotOnline), Message: worst.Reason}
	case 3:
		cause = &APIError{Status: 404, Code: iothub.CodeDeviceNotFound, Name: iothub.ErrorName(iothub.CodeDeviceNotFound), Message: worst.Reason}
	case 2:
		return fmt.Errorf("%s; device %q: %s", b.String(), worst.DeviceID, worst.Reason)
	default:
		return fmt.Errorf("%s; device %q: %w: %s", b.String(), worst.DeviceID, ErrRebootNotConfirmed, worst.Reason)
	}
	return fmt.Errorf("%s; device %q: %w", b.String(), worst.DeviceID, cause)
}
