// Package jobs runs IoT Hub jobs (v2) in the local hub: scheduled direct
// method calls (scheduleDeviceMethod) and twin updates (scheduleUpdateTwin)
// over the devices a twin query picks.
//
// Life of a job:
//
//   - Create validates the job and stores it, "scheduled" when its
//     startTime is in the future, "queued" otherwise. The job is stored
//     before Create returns.
//   - At startTime the query condition is evaluated once over the twins (a
//     snapshot: devices registered later are not included). One "pending"
//     row per device is stored together with the job's "running" status.
//   - Rows run with bounded concurrency (Config.Concurrency device calls in
//     flight across all jobs). A row is durably "running" before its device
//     is called. Results are written in batches (group commit); the job is
//     "completed" only once every row is durable, whatever the rows' own
//     outcomes.
//   - A direct method the device answers is a "completed" row whatever the
//     device's status (as on IoT Hub: a device answering 500 is a completed
//     row whose outcome says 500). A device that is offline gives a "failed"
//     row with error code "404103", no answer in time "504101", a device
//     deleted since the job started "404001".
//   - A twin-update row merges the job's tags and desired properties into
//     the twin (If-Match "*") and pushes the desired patch to the device;
//     its outcome is null.
//   - When maxExecutionTimeInSeconds (counted from the later of startTime
//     and createdTime) elapses, rows not started are "canceled", calls in
//     flight are abandoned and their rows "failed" with code "504101", and
//     the job is "failed" with a failureReason.
//   - Cancel marks the rows not started "canceled" and the job "cancelled"
//     at once; calls already in flight finish and their rows record the
//     outcome.
//
// Restarts: Run resumes the jobs that were queued, scheduled or running.
// Rows already finished are never run again; "pending" rows run (a row
// whose device had not yet been called when the hub stopped goes back to
// "pending"). A row that
// was "running" when the hub stopped is marked "failed" with code "503001"
// and description "hub restarted while the call was in flight": the method
// may have reached the device, so it is never replayed (a second reboot is
// worse than a reported failure). A graceful stop records the same for the
// calls it abandons, with "hub stopped while the call was in flight".
//
// Job statistics count "pending" rows as pending, "completed" rows as
// succeeded, and "failed" and "canceled" rows as failed, so deviceCount is
// always the sum of the other four counts. They are written in the same
// transaction as the rows they count.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/rs/zerolog"
)

// Defaults and limits.
const (
	// DefaultConcurrency bounds the device calls in flight across all jobs.
	DefaultConcurrency = 64
	// DefaultMaxExecutionTime is maxExecutionTimeInSeconds when the job
	// does not set it.
	DefaultMaxExecutionTime = 3600
	// MaxJobIDLength is the longest accepted jobId.
	MaxJobIDLength = iothub.MaxJobIDLength
	// DefaultFlushInterval bounds how long a finished row may wait in memory
	// before its batch is written.
	DefaultFlushInterval = 50 * time.Millisecond
	// MaxBatch is the most row updates written in one transaction.
	MaxBatch = 512

	defaultResponseTimeout = iothub.DefaultMethodResponseTimeout
	maxExecutionCap        = 100 * 365 * 24 * 3600 // keeps the deadline arithmetic in range
)

// Row error descriptions for the cases the package documents.
const (
	msgRestarted = "hub restarted while the call was in flight; the device may have run the method, so it was not called again"
	msgStopped   = "hub stopped while the call was in flight; the device may have run the method, so it will not be called again"
	msgExpired   = "the job's maxExecutionTimeInSeconds elapsed while the call was in flight; the device may have run the method"
	msgOffline   = "The operation failed because the requested device isn't online or hasn't registered the direct method callback."
	msgTimeout   = "Timed out waiting for the response from device."
)

// Config configures an Engine.
type Config struct {
	Store   *store.Store   // required
	Devices hubapi.Devices // the device side; nil makes every direct-method row fail as offline
	// Concurrency bounds the device calls (or twin updates) in flight across
	// all jobs; default DefaultConcurrency.
	Concurrency int
	// FlushInterval bounds how long finished rows are held for batching;
	// default DefaultFlushInterval.
	FlushInterval time.Duration
	Now           func() time.Time // default time.Now
	Log           zerolog.Logger   // default: the zero Logger writes nothing
}

// Engine runs jobs. Create, Get, Cancel and List may be called at any time;
// jobs execute only while Run is running.
type Engine struct {
	store   *store.Store
	devices hubapi.Devices
	now     func() time.Time
	log     zerolog.Logger
	flush   time.Duration
	sem     chan struct{}
	// timer starts the timers of start times and deadlines; tests replace it.
	timer func(d time.Duration) (c <-chan time.Time, stop func())

	mu      sync.Mutex
	ctx     context.Context // Run's context while Run accepts work, nil otherwise
	started bool
	runs    map[string]*run // jobs with a live goroutine
	wg      sync.WaitGroup  // job goroutines
}

var _ hubapi.Jobs = (*Engine)(nil)

// New returns an engine; call Run to execute jobs.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("jobs: Config.Store is required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	clock := cfg.Now
	return &Engine{
		store:   cfg.Store,
		devices: cfg.Devices,
		// The REST API renders times to 100 ns; keep exactly what is stored.
		now:   func() time.Time { return clock().UTC().Truncate(100 * time.Nanosecond) },
		log:   cfg.Log,
		flush: cfg.FlushInterval,
		sem:   make(chan struct{}, cfg.Concurrency),
		runs:  map[string]*run{},
		timer: func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTimer(d)
			return t.C, func() { t.Stop() }
		},
	}, nil
}

// Run executes jobs until ctx ends: it first settles rows left "running" by
// a previous run (see the package comment), resumes unfinished jobs, then
// runs every job created meanwhile. It returns nil once ctx is done and
// every goroutine of the engine has stopped; calls in flight are abandoned
// (their contexts are cancelled). Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return errors.New("jobs: Run called more than once")
	}
	e.started = true
	e.ctx = ctx
	err := e.recoverLocked(ctx)
	if err != nil {
		e.ctx = nil
	}
	e.mu.Unlock()
	if err == nil {
		<-ctx.Done()
		e.mu.Lock()
		e.ctx = nil
		e.mu.Unlock()
	}
	e.wg.Wait()
	return err
}

// recoverLocked fails rows left running, then starts every unfinished job.
func (e *Engine) recoverLocked(ctx context.Context) error {
	jobs, err := e.store.Jobs()
	if err != nil {
		return fmt.Errorf("jobs: load jobs: %w", err)
	}
	for _, j := range jobs {
		if j.DeviceJobStatistics.RunningCount > 0 {
			if j, err = e.failInFlight(j); err != nil {
				return err
			}
		}
		if !iothub.JobTerminal(j.Status) {
			e.startLocked(ctx, j)
		}
	}
	return nil
}

// failInFlight marks the rows of j that were running when the hub stopped
// as failed and recomputes its statistics.
func (e *Engine) failInFlight(j iothub.JobResponse) (iothub.JobResponse, error) {
	rows, err := e.store.JobRows(j.JobID)
	if err != nil {
		return j, fmt.Errorf("jobs: load rows of %q: %w", j.JobID, err)
	}
	now := e.now().UTC()
	var st iothub.JobStatistics
	var changed []iothub.DeviceJob
	for _, r := range rows {
		if r.Status == iothub.RowRunning {
			r.Status = iothub.RowFailed
			r.EndTimeUtc, r.LastUpdatedDateTimeUtc = now, now
			r.Error = &iothub.DeviceJobError{Code: code(iothub.CodeServiceUnavailable), Description: msgRestarted}
			changed = append(changed, r)
		}
		st.Add(r.Status, 1)
	}
	j.DeviceJobStatistics = st
	if err := e.store.WriteJob(&j, changed); err != nil {
		return j, fmt.Errorf("jobs: settle rows of %q: %w", j.JobID, err)
	}
	e.log.Warn().Str("job", j.JobID).Int("rows", len(changed)).Msg("job rows in flight at the last stop marked failed")
	return j, nil
}

// startLocked starts the goroutine of job j if Run accepts work.
func (e *Engine) startLocked(ctx context.Context, j iothub.JobResponse) {
	if e.ctx == nil || e.ctx.Err() != nil || e.runs[j.JobID] != nil {
		return
	}
	r := &run{id: j.JobID, cancelCh: make(chan struct{}), settled: make(chan struct{})}
	e.runs[j.JobID] = r
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.runs, r.id)
			e.mu.Unlock()
			r.settle()
		}()
		e.runJob(ctx, r, j)
	}()
}

// Create validates job, fills its defaults, stores it and schedules it.
// Errors: *store.ValidationError, store.ErrJobExists, store errors.
func (e *Engine) Create(ctx context.Context, job iothub.JobResponse) (iothub.JobResponse, error) {
	if err := ctx.Err(); err != nil {
		return iothub.JobResponse{}, err
	}
	j, err := e.normalize(job)
	if err != nil {
		return iothub.JobResponse{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.store.CreateJob(j); err != nil {
		return iothub.JobResponse{}, err
	}
	e.log.Info().Str("job", j.JobID).Str("type", j.Type).Str("status", j.Status).
		Time("startTime", j.StartTime).Msg("job created")
	if e.ctx != nil {
		e.startLocked(e.ctx, j)
	}
	return j, nil
}

// Get returns the stored job (store.ErrJobNotFound).
func (e *Engine) Get(ctx context.Context, id string) (iothub.JobResponse, error) {
	if err := ctx.Err(); err != nil {
		return iothub.JobResponse{}, err
	}
	return e.store.Job(id)
}

// List returns the jobs of jobType and status ("" matches any), oldest first.
func (e *Engine) List(ctx context.Context, jobType, status string) ([]iothub.JobResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	all, err := e.store.Jobs()
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, j := range all {
		if (jobType == "" || j.Type == jobType) && (status == "" || j.Status == status) {
			out = append(out, j)
		}
	}
	return out, nil
}

// Cancel cancels a job that has not finished (see the package comment) and
// returns it once its "cancelled" status is durable. A finished job is
// returned unchanged.
func (e *Engine) Cancel(ctx context.Context, id string) (iothub.JobResponse, error) {
	e.mu.Lock()
	r := e.runs[id]
	if r == nil {
		defer e.mu.Unlock()
		return e.cancelStored(id)
	}
	e.mu.Unlock()
	r.requestCancel()
	select {
	case <-r.settled:
	case <-ctx.Done():
		return iothub.JobResponse{}, ctx.Err()
	}
	return e.store.Job(id)
}

// cancelStored cancels a job that has no goroutine (Run is not running);
// the caller holds e.mu so that Run cannot start it meanwhile.
func (e *Engine) cancelStored(id string) (iothub.JobResponse, error) {
	j, err := e.store.Job(id)
	if err != nil || iothub.JobTerminal(j.Status) {
		return j, err
	}
	rows, err := e.store.JobRows(id)
	if err != nil {
		return iothub.JobResponse{}, err
	}
	now := e.now().UTC()
	var st iothub.JobStatistics
	var changed []iothub.DeviceJob
	for _, r := range rows {
		if !iothub.RowTerminal(r.Status) && r.Status != iothub.RowRunning {
			r.Status = iothub.RowCanceled
			r.EndTimeUtc, r.LastUpdatedDateTimeUtc = now, now
			changed = append(changed, r)
		}
		st.Add(r.Status, 1)
	}
	j.DeviceJobStatistics = st
	j.Status, j.EndTime = iothub.JobCancelled, now
	if err := e.store.WriteJob(&j, changed); err != nil {
		return iothub.JobResponse{}, err
	}
	e.log.Info().Str("job", id).Msg("job cancelled")
	return j, nil
}

func twinPatch(t *iothub.JobTwin) iothub.Twin {
	return iothub.Twin{Tags: t.Tags, Properties: iothub.TwinProperties{Desired: t.Properties.Desired}}
}

// deadline is when a job's maxExecutionTimeInSeconds runs out.
func deadline(j iothub.JobResponse) time.Time {
	from := j.StartTime
	if j.CreatedTime.After(from) {
		from = j.CreatedTime
	}
	return from.Add(time.Duration(min(j.MaxExecutionTimeInSeconds, maxExecutionCap)) * time.Second)
}

func (e *Engine) acquire(ctx context.Context) bool {
	select {
	case e.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (e *Engine) release() { <-e.sem }
