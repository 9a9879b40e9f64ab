package rollout

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/service"
)

// MaxConditionLength bounds the queryCondition of one job: IoT Hub caps a
// query at 8192 characters, and the hub wraps the condition in a query.
const MaxConditionLength = 8000

// wave is one wave of a rollout: its devices (a window of Result.Devices),
// the jobs that call them (one per part of their id list that fits a job's
// queryCondition), and what has been read of those jobs.
type wave struct {
	r        *rollout
	n        int                   // 1-based wave number
	devs     []Device              // the wave's window of Result.Devices
	parts    [][]string            // the device ids of each job
	jobIDs   []string              // the job of each part
	jobs     []*iothub.JobResponse // as last read; nil when not created
	partOf   []int                 // devs[i] is called by jobs[partOf[i]]
	rowsRead []bool                // the device rows of jobs[k] are applied
	start    time.Time
}

// newWave makes wave n of devs, names its jobs and marks each device with
// its wave and job.
func newWave(r *rollout, n int, devs []Device) *wave {
	w := &wave{r: r, n: n, devs: devs, start: time.Now()}
	ids := make([]string, len(devs))
	for i := range devs {
		ids[i] = devs[i].DeviceID
		devs[i].Wave = n
	}
	w.parts = splitByCondition(ids, MaxConditionLength)
	w.jobIDs = make([]string, len(w.parts))
	for k := range w.parts {
		w.jobIDs[k] = fmt.Sprintf("%s-w%d", r.opts.JobIDPrefix, n)
		if len(w.parts) > 1 {
			w.jobIDs[k] += fmt.Sprintf("-%d", k+1)
		}
	}
	w.jobs = make([]*iothub.JobResponse, len(w.parts))
	w.rowsRead = make([]bool, len(w.parts))
	w.partOf = make([]int, len(devs))
	at := 0
	for k, part := range w.parts {
		for range part {
			w.partOf[at] = k
			devs[at].JobID = w.jobIDs[k]
			at++
		}
	}
	return w
}

// splitByCondition cuts ids into consecutive parts whose "deviceId IN
// [...]" condition stays within limit characters.
func splitByCondition(ids []string, limit int) [][]string {
	var parts [][]string
	lo, size := 0, len("deviceId IN []")
	for i, id := range ids {
		n := len(service.QuoteString(id)) + 2 // ", "
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

// run reboots the wave's devices and settles each one's outcome. The error
// is a job that could not be created, or what interrupted the wave.
func (w *wave) run(ctx context.Context) (WaveResult, error) {
	createErr := w.createJobs(ctx)
	if w.jobs[0] == nil {
		return w.result(), createErr
	}
	w.report(StageWaveStarted, nil)
	if err := w.await(ctx); err != nil {
		return w.interrupt(ctx, err)
	}
	wr := w.result()
	w.report(StageWaveDone, nil)
	return wr, createErr
}

// createJobs creates every part's job at once (the hub queues what it
// cannot run yet). After a failure the devices of the jobs not created are
// skipped.
func (w *wave) createJobs(ctx context.Context) error {
	o := w.r.opts
	for k, part := range w.parts {
		job, err := w.r.c.CreateJob(ctx, service.JobRequest{
			JobID:          w.jobIDs[k],
			Type:           iothub.JobTypeDeviceMethod,
			QueryCondition: service.IDListCondition(part),
			CloudToDeviceMethod: &iothub.JobMethod{
				MethodName:               service.RebootMethod,
				Payload:                  o.Payload,
				ResponseTimeoutInSeconds: ceilSeconds(o.ResponseTimeout),
				ConnectTimeoutInSeconds:  ceilSeconds(o.ConnectTimeout),
			},
			StartTime:        w.r.c.Now(),
			MaxExecutionTime: o.MaxExecutionTime,
		})
		if err != nil {
			w.skipUncreated()
			return err
		}
		w.jobs[k] = job
	}
	return nil
}

// skipUncreated skips the devices whose job was not created.
func (w *wave) skipUncreated() {
	for i := range w.devs {
		if w.jobs[w.partOf[i]] == nil {
			w.devs[i].Outcome = OutcomeSkipped
			w.devs[i].Reason = "not rebooted: the job could not be created"
			w.devs[i].JobID = ""
		}
	}
}

// await polls the jobs and confirms reboots until every device's outcome
// is settled, or the wave gives up on jobs it cannot read. An error means
// the wave was interrupted: ctx ended, or the jobs cannot be read at all.
func (w *wave) await(ctx context.Context) error {
	o := w.r.opts
	giveUp := w.start.Add(w.maxExecution() + o.WaitTimeout + pollGrace)
	var confirmBy time.Time
	interval := o.PollInterval
	for {
		pollErr, err := w.poll(ctx)
		if err != nil {
			return err
		}
		done := w.allRowsRead()
		if done && confirmBy.IsZero() {
			confirmBy = time.Now().Add(o.WaitTimeout)
		}
		pending := undecided(w.devs)
		if len(pending) > 0 && (done || w.stats().Finished() > 0) {
			if err := confirm(ctx, w.r.c, w.devs, pending); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				pollErr = err
			}
			pending = undecided(w.devs)
		}
		w.report(StageWavePolled, pollErr)
		if done && (len(pending) == 0 || !time.Now().Before(confirmBy)) {
			w.settleUnconfirmed(pending)
			return nil
		}
		if !time.Now().Before(giveUp) {
			w.settleUnread(pending, pollErr)
			return nil
		}
		interval = nextInterval(interval, o.PollInterval, pollErr)
		if err := retry.Sleep(ctx, interval); err != nil {
			return err
		}
	}
}

// nextInterval is the pause before the next poll: IoT Hub throttles
// queries hard (20 a minute per S1 unit), so it doubles while the hub
// throttles, up to service.MaxPollInterval, and is base otherwise.
func nextInterval(last, base time.Duration, pollErr error) time.Duration {
	if errors.Is(pollErr, service.ErrThrottled) {
		return min(last*2, max(service.MaxPollInterval, base))
	}
	return base
}

// maxExecution is the longest maxExecutionTime of the wave's jobs (an hour
// when the hub named none).
func (w *wave) maxExecution() time.Duration {
	d := time.Duration(0)
	for _, j := range w.jobs {
		if j != nil {
			d = max(d, time.Duration(j.MaxExecutionTimeInSeconds)*time.Second)
		}
	}
	if d <= 0 {
		return time.Hour
	}
	return d
}

// poll reads the status of every unfinished job, and the device rows of
// every job that has finished. A failed read is pollErr: the wave goes on.
// stop is set when it cannot: ctx ended, or a job is gone or no longer
// readable.
func (w *wave) poll(ctx context.Context) (pollErr, stop error) {
	for k, j := range w.jobs {
		if j == nil {
			continue
		}
		if !iothub.JobTerminal(j.Status) {
			nj, err := w.r.c.Job(ctx, w.jobIDs[k])
			switch {
			case err == nil:
				w.jobs[k], j = nj, nj
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.Is(err, service.ErrUnauthorized), errors.Is(err, service.ErrJobNotFound):
				return nil, err
			default:
				pollErr = err
			}
		}
		if iothub.JobTerminal(j.Status) && !w.rowsRead[k] {
			if err := w.readRows(ctx, k); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				pollErr = err
			}
		}
	}
	return pollErr, nil
}

// readRows reads the device rows of job k and applies them to its devices.
func (w *wave) readRows(ctx context.Context, k int) error {
	rows := map[string]iothub.DeviceJob{}
	err := w.r.c.DeviceJobs(ctx, w.jobIDs[k], func(r iothub.DeviceJob) error {
		rows[r.DeviceID] = r
		return nil
	})
	if err != nil {
		return err
	}
	var mine []int
	for i := range w.devs {
		if w.partOf[i] == k {
			mine = append(mine, i)
		}
	}
	applyRows(w.devs, mine, rows)
	w.rowsRead[k] = true
	return nil
}

// allRowsRead reports whether the rows of every created job are applied.
func (w *wave) allRowsRead() bool {
	for k, j := range w.jobs {
		if j != nil && !w.rowsRead[k] {
			return false
		}
	}
	return true
}

// settleUnconfirmed settles the pending devices once the wait for their
// rebootTime is over.
func (w *wave) settleUnconfirmed(pending []int) {
	wait := w.r.opts.WaitTimeout
	for _, i := range pending {
		d := &w.devs[i]
		if d.HasRebootTime {
			d.settle(fmt.Sprintf("no new rebootTime within %v (still %q)", wait, d.RebootTime))
		} else {
			d.settle(fmt.Sprintf("no rebootTime reported within %v", wait))
		}
	}
}

// settleUnread settles the pending devices when the jobs' outcome could
// not be read in time.
func (w *wave) settleUnread(pending []int, pollErr error) {
	reason := "the job's outcome could not be read"
	if pollErr != nil {
		reason += ": " + pollErr.Error()
	}
	for _, i := range pending {
		w.devs[i].settle(reason)
	}
}

// interrupt cancels the wave's unfinished jobs (even though ctx may have
// ended) and settles the devices still undecided.
func (w *wave) interrupt(ctx context.Context, err error) (WaveResult, error) {
	log := w.r.c.Logger()
	for k, j := range w.jobs {
		if j == nil || iothub.JobTerminal(j.Status) {
			continue
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelTimeout)
		if cj, cerr := w.r.c.CancelJob(cctx, w.jobIDs[k]); cerr == nil {
			w.jobs[k] = cj
			log.Info().Str("job", w.jobIDs[k]).Msg("job cancelled after interruption")
		} else {
			log.Warn().Str("job", w.jobIDs[k]).Err(cerr).Msg("could not cancel the job after interruption")
		}
		cancel()
	}
	for i := range w.devs {
		if w.devs[i].Outcome == "" {
			w.devs[i].settle("interrupted before the reboot was confirmed")
		}
	}
	return w.result(), err
}

// result is the wave's outcome as known now.
func (w *wave) result() WaveResult {
	wr := WaveResult{Wave: w.n, JobIDs: w.jobIDs, Size: len(w.devs), JobStatus: w.status(),
		FailureReason: w.failureReason(), Counts: countDecided(w.devs), Duration: time.Since(w.start)}
	wr.Counts.Total = len(w.devs)
	if wr.Size > 0 {
		wr.FailureRate = float64(wr.Counts.Unsuccessful()) / float64(wr.Size)
	}
	return wr
}

// report passes the wave's progress at stage to Options.Progress.
func (w *wave) report(stage Stage, err error) {
	if w.r.opts.Progress == nil {
		return
	}
	w.r.report(Progress{Stage: stage, Wave: w.n, WaveSize: len(w.devs), JobIDs: w.jobIDs, JobStatus: w.status(),
		Stats: w.stats(), Counts: countDecided(w.devs), Elapsed: time.Since(w.start), Err: err})
}

// status is the wave's job status: the one status all created jobs share,
// else the first that is not completed (running before failed, so that a
// wave reads "running" until every job has finished).
func (w *wave) status() string {
	var first, running string
	for _, j := range w.jobs {
		if j == nil {
			continue
		}
		if !iothub.JobTerminal(j.Status) && running == "" {
			running = j.Status
		}
		if j.Status != iothub.JobCompleted && first == "" {
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

// stats sums the device statistics of the wave's jobs.
func (w *wave) stats() iothub.JobStatistics {
	var s iothub.JobStatistics
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

// failureReason joins the jobs' failureReasons, each named by its job.
func (w *wave) failureReason() string {
	var rs []string
	for _, j := range w.jobs {
		if j != nil && j.FailureReason != "" {
			rs = append(rs, j.JobID+": "+j.FailureReason)
		}
	}
	return strings.Join(rs, "; ")
}

// ceilSeconds rounds d up to whole seconds, as the job API counts them.
func ceilSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}
