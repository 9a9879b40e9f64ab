package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// stopCause says why a job stopped handing out rows.
type stopCause int

const (
	running stopCause = iota
	stopCancelled
	stopExpired
	stopShutdown
)

// errExpired is the cancellation cause of calls abandoned at the deadline.
var errExpired = errors.New("jobs: maxExecutionTimeInSeconds elapsed")

// run is the live state of one job's goroutine.
type run struct {
	id         string
	cancelCh   chan struct{} // closed by Cancel
	cancelOnce sync.Once
	settled    chan struct{} // closed once a cancel has taken effect or the goroutine ended
	settleOnce sync.Once

	mu    sync.Mutex
	stop  stopCause
	queue []iothub.DeviceJob // rows to run, in deviceId order
	next  int                // queue[next:] have not been handed to a worker
}

func (r *run) requestCancel() { r.cancelOnce.Do(func() { close(r.cancelCh) }) }
func (r *run) settle()        { r.settleOnce.Do(func() { close(r.settled) }) }

// runJob waits for the job's start time, creates its rows if needed and
// executes them.
func (e *Engine) runJob(ctx context.Context, r *run, j iothub.JobResponse) {
	var rows []iothub.DeviceJob
	var err error
	if j.Status == iothub.JobQueued || j.Status == iothub.JobScheduled {
		if d := j.StartTime.Sub(e.now()); d > 0 {
			c, stop := e.timer(d)
			select {
			case <-c:
				stop()
			case <-r.cancelCh:
				stop()
				e.cancelUnstarted(j)
				return
			case <-ctx.Done():
				stop()
				return
			}
		}
		select {
		case <-r.cancelCh:
			e.cancelUnstarted(j)
			return
		default:
		}
		j, rows, err = e.begin(j)
	} else {
		rows, err = e.store.JobRows(j.JobID)
	}
	if err != nil {
		if !errors.Is(err, store.ErrClosed) {
			e.log.Error().Err(err).Str("job", j.JobID).Msg("job cannot start")
		}
		return
	}
	e.execute(ctx, r, j, rows)
}

// cancelUnstarted records the cancellation of a job that has no rows yet.
func (e *Engine) cancelUnstarted(j iothub.JobResponse) {
	j.Status, j.EndTime = iothub.JobCancelled, e.now().UTC()
	if err := e.store.WriteJob(&j, nil); err != nil {
		e.log.Error().Err(err).Str("job", j.JobID).Msg("cannot record job cancellation")
		return
	}
	e.log.Info().Str("job", j.JobID).Msg("job cancelled before it started")
}

// begin evaluates the query condition over the twins and stores one pending
// row per matching device together with the job's running status.
func (e *Engine) begin(j iothub.JobResponse) (iothub.JobResponse, []iothub.DeviceJob, error) {
	q, err := ParseCondition(j.QueryCondition)
	if err != nil {
		j.Status, j.EndTime, j.FailureReason = iothub.JobFailed, e.now().UTC(), err.Error()
		return j, nil, errors.Join(err, e.store.WriteJob(&j, nil))
	}
	var ids []string
	var ferr error
	err = e.store.ForEachTwin(func(t iothub.Twin) bool {
		doc, err := jsonDoc(t)
		if err != nil {
			ferr = fmt.Errorf("render twin %q: %w", t.DeviceID, err)
			return false
		}
		if q.Match(doc) {
			ids = append(ids, t.DeviceID)
		}
		return true
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return j, nil, err
	}
	now := e.now().UTC()
	rows := make([]iothub.DeviceJob, len(ids))
	for i, id := range ids {
		rows[i] = iothub.DeviceJob{DeviceID: id, JobID: j.JobID, JobType: j.Type, Status: iothub.RowPending,
			CreatedDateTimeUtc: now, LastUpdatedDateTimeUtc: now}
	}
	j.Status = iothub.JobRunning
	j.DeviceJobStatistics = iothub.JobStatistics{}
	j.DeviceJobStatistics.Add(iothub.RowPending, len(rows))
	if err := e.store.WriteJob(&j, rows); err != nil {
		return j, nil, err
	}
	e.log.Info().Str("job", j.JobID).Int("devices", len(rows)).Msg("job started")
	return j, rows, nil
}

// execute runs the pending rows of a running job and settles the job.
func (e *Engine) execute(ctx context.Context, r *run, j iothub.JobResponse, rows []iothub.DeviceJob) {
	w := newWriter(e, j, rows)
	go w.loop()
	defer w.close()

	var queue []iothub.DeviceJob
	for _, row := range rows {
		if row.Status == iothub.RowPending || row.Status == iothub.RowScheduled {
			queue = append(queue, row)
		}
	}
	r.mu.Lock()
	r.queue = queue
	r.mu.Unlock()

	callCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	workers := min(cap(e.sem), len(queue))
	if !deadline(j).After(e.now()) {
		// Out of time before anything ran (the hub was down meanwhile).
		_ = e.stopRows(r, w, stopExpired, nil)
		workers = 0
	}
	// The deadline runs from before the first call.
	expired, stopTimer := e.timer(max(deadline(j).Sub(e.now()), 0))
	defer stopTimer()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.worker(callCtx, r, j, w)
		}()
	}
	workersDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(workersDone)
	}()

	cancelCh := r.cancelCh
	for done := false; !done; {
		select {
		case <-workersDone:
			done = true
		case <-cancelCh:
			cancelCh, expired = nil, nil
			now := e.now().UTC()
			err := e.stopRows(r, w, stopCancelled, func(j *iothub.JobResponse) {
				j.Status, j.EndTime = iothub.JobCancelled, now
			})
			if err == nil {
				e.log.Info().Str("job", j.JobID).Msg("job cancelled")
			}
			r.settle()
		case <-expired:
			cancelCh, expired = nil, nil
			_ = e.stopRows(r, w, stopExpired, nil)
			abort(errExpired)
		case <-ctx.Done():
			r.mu.Lock()
			if r.stop == running {
				r.stop = stopShutdown
			}
			r.mu.Unlock()
			<-workersDone
			done = true
		}
	}

	r.mu.Lock()
	cause := r.stop
	r.mu.Unlock()
	now := e.now().UTC()
	var final func(*iothub.JobResponse)
	switch cause {
	case running:
		final = func(j *iothub.JobResponse) { j.Status, j.EndTime = iothub.JobCompleted, now }
	case stopExpired:
		reason := fmt.Sprintf("the job did not finish within maxExecutionTimeInSeconds (%d)", j.MaxExecutionTimeInSeconds)
		final = func(j *iothub.JobResponse) { j.Status, j.EndTime, j.FailureReason = iothub.JobFailed, now, reason }
	}
	if final != nil {
		if err := <-w.submit(nil, final, true); err == nil {
			e.log.Info().Str("job", j.JobID).Str("status", w.jobStatus()).Msg("job finished")
		}
	}
}

// stopRows stops handing out rows and marks those not handed out canceled,
// applying jobFn to the job in the same transaction.
func (e *Engine) stopRows(r *run, w *writer, cause stopCause, jobFn func(*iothub.JobResponse)) error {
	now := e.now().UTC()
	r.mu.Lock()
	if r.stop == running {
		r.stop = cause
	}
	rest := r.queue[r.next:]
	r.next = len(r.queue)
	stopped := make([]iothub.DeviceJob, len(rest))
	for i, row := range rest {
		row.Status = iothub.RowCanceled
		row.EndTimeUtc, row.LastUpdatedDateTimeUtc = now, now
		stopped[i] = row
	}
	// Submitted under r.mu: every worker's "running" mark for a row it
	// took earlier is already queued ahead of this request.
	done := w.submit(stopped, jobFn, true)
	r.mu.Unlock()
	return <-done
}

// worker takes rows from the run's queue and executes them one at a time.
func (e *Engine) worker(ctx context.Context, r *run, j iothub.JobResponse, w *writer) {
	for {
		if !e.acquire(ctx) {
			return
		}
		r.mu.Lock()
		if r.stop != running || r.next >= len(r.queue) || ctx.Err() != nil {
			r.mu.Unlock()
			e.release()
			return
		}
		row := r.queue[r.next]
		r.next++
		now := e.now().UTC()
		row.Status, row.StartTimeUtc, row.LastUpdatedDateTimeUtc = iothub.RowRunning, now, now
		done := w.submit([]iothub.DeviceJob{row}, nil, true)
		r.mu.Unlock()
		if err := <-done; err != nil {
			// Not durably running: the device must not be called.
			e.release()
			return
		}
		if ctx.Err() != nil {
			// Stopped while the mark was written; the device was not
			// called, so the row goes back to pending (hub stopping) or is
			// canceled (deadline).
			row.StartTimeUtc, row.LastUpdatedDateTimeUtc = time.Time{}, e.now().UTC()
			row.Status = iothub.RowPending
			if errors.Is(context.Cause(ctx), errExpired) {
				row.Status, row.EndTimeUtc = iothub.RowCanceled, row.LastUpdatedDateTimeUtc
			}
			w.submit([]iothub.DeviceJob{row}, nil, false)
			e.release()
			return
		}
		row = e.executeRow(ctx, j, row)
		w.submit([]iothub.DeviceJob{row}, nil, false)
		e.release()
	}
}

// executeRow performs the job's action on one device and returns the
// finished row.
func (e *Engine) executeRow(ctx context.Context, j iothub.JobResponse, row iothub.DeviceJob) iothub.DeviceJob {
	row = e.act(ctx, j, row)
	now := e.now().UTC()
	row.EndTimeUtc, row.LastUpdatedDateTimeUtc = now, now
	return row
}

func (e *Engine) act(ctx context.Context, j iothub.JobResponse, row iothub.DeviceJob) iothub.DeviceJob {
	fail := func(c int, msg string) iothub.DeviceJob {
		row.Status = iothub.RowFailed
		row.Error = &iothub.DeviceJobError{Code: code(c), Description: msg}
		return row
	}
	switch j.Type {
	case iothub.JobTypeDeviceMethod:
		m := j.CloudToDeviceMethod
		if _, err := e.store.Device(row.DeviceID); errors.Is(err, store.ErrNotFound) {
			return fail(iothub.CodeDeviceNotFound, "device "+row.DeviceID+" no longer exists")
		}
		if e.devices == nil {
			return fail(iothub.CodeDeviceNotOnline, msgOffline)
		}
		payload := []byte(m.Payload)
		if len(bytes.TrimSpace(payload)) == 0 {
			payload = []byte("null")
		}
		status, body, err := e.devices.Invoke(ctx, row.DeviceID, m.MethodName, payload,
			time.Duration(m.ConnectTimeoutInSeconds)*time.Second, time.Duration(m.ResponseTimeoutInSeconds)*time.Second)
		switch {
		case err == nil:
			res := &iothub.DeviceMethodResponse{Status: status, Payload: json.RawMessage("null")}
			if b := bytes.TrimSpace(body); len(b) > 0 && json.Valid(b) {
				res.Payload = append(json.RawMessage(nil), b...)
			}
			row.Status = iothub.RowCompleted
			row.Outcome = &iothub.DeviceJobOutcome{DeviceMethodResponse: res}
			return row
		case errors.Is(context.Cause(ctx), errExpired):
			return fail(iothub.CodeGatewayTimeout, msgExpired)
		case ctx.Err() != nil:
			return fail(iothub.CodeServiceUnavailable, msgStopped)
		case errors.Is(err, hubapi.ErrDeviceNotOnline):
			return fail(iothub.CodeDeviceNotOnline, msgOffline)
		case errors.Is(err, hubapi.ErrTimeout):
			return fail(iothub.CodeGatewayTimeout, msgTimeout)
		default:
			e.log.Error().Err(err).Str("job", j.JobID).Str("device", row.DeviceID).Msg("job direct method failed")
			return fail(iothub.CodeServerError, "the direct method could not be delivered")
		}
	case iothub.JobTypeUpdateTwin:
		// The store tells the device of the desired change itself (OnDesired).
		_, _, err := e.store.PatchTwin(row.DeviceID, twinPatch(j.UpdateTwin), "*")
		var ve *store.ValidationError
		switch {
		case err == nil:
			row.Status = iothub.RowCompleted
			return row
		case errors.Is(err, store.ErrNotFound):
			return fail(iothub.CodeDeviceNotFound, "device "+row.DeviceID+" no longer exists")
		case errors.As(err, &ve):
			return fail(ve.Code, ve.Msg)
		default:
			e.log.Error().Err(err).Str("job", j.JobID).Str("device", row.DeviceID).Msg("job twin update failed")
			return fail(iothub.CodeServerError, "the twin could not be updated")
		}
	}
	return fail(iothub.CodeArgumentInvalid, "unsupported job type "+j.Type)
}

// jsonDoc renders v as the JSON object the query language sees.
func jsonDoc(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}
