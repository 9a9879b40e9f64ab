package jobs

import (
	"errors"
	"sync"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// writer is the single goroutine that writes one job's rows and status. It
// batches updates (group commit): a request someone waits for (a row about
// to run, a status change) is written with everything queued before it as
// soon as the writer is free; finished rows, which nobody waits for, are
// held at most the flush interval or until MaxBatch of them are queued.
// Every batch is one transaction that also rewrites the job with the
// statistics of the rows as written.
type writer struct {
	e      *Engine
	in     chan wreq
	exited chan struct{}

	state map[string]string // deviceId -> row status as written

	mu  sync.Mutex
	job iothub.JobResponse
}

type wreq struct {
	rows  []iothub.DeviceJob
	jobFn func(*iothub.JobResponse) // optional change to the job
	done  chan error                // nil when nobody waits
}

func newWriter(e *Engine, j iothub.JobResponse, rows []iothub.DeviceJob) *writer {
	w := &writer{
		e:      e,
		in:     make(chan wreq, 2*cap(e.sem)+16),
		exited: make(chan struct{}),
		state:  make(map[string]string, len(rows)),
		job:    j,
	}
	var st iothub.JobStatistics
	for _, r := range rows {
		w.state[r.DeviceID] = r.Status
		st.Add(r.Status, 1)
	}
	w.job.DeviceJobStatistics = st
	return w
}

// submit queues rows and a job change. With wait it returns a channel that
// yields the outcome of the transaction that wrote them; without, nil.
func (w *writer) submit(rows []iothub.DeviceJob, jobFn func(*iothub.JobResponse), wait bool) <-chan error {
	r := wreq{rows: rows, jobFn: jobFn}
	if wait {
		r.done = make(chan error, 1)
	}
	w.in <- r
	return r.done
}

// close stops the writer after everything queued is written.
func (w *writer) close() {
	close(w.in)
	<-w.exited
}

func (w *writer) jobStatus() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.job.Status
}

func (w *writer) loop() {
	defer close(w.exited)
	var failed error
	for {
		first, ok := <-w.in
		if !ok {
			return
		}
		batch := []wreq{first}
		urgent := first.done != nil
		open := true
		var timer *time.Timer
		var tick <-chan time.Time
		if !urgent {
			timer = time.NewTimer(w.e.flush)
			tick = timer.C
		}
	collect:
		for n := len(first.rows); n < MaxBatch; {
			if urgent {
				select {
				case r, ok := <-w.in:
					if !ok {
						open = false
						break collect
					}
					batch = append(batch, r)
					n += len(r.rows)
				default:
					break collect
				}
				continue
			}
			select {
			case r, ok := <-w.in:
				if !ok {
					open = false
					break collect
				}
				batch = append(batch, r)
				n += len(r.rows)
				urgent = r.done != nil
			case <-tick:
				break collect
			}
		}
		if timer != nil {
			timer.Stop()
		}
		err := failed
		if err == nil {
			if err = w.commit(batch); err != nil {
				failed = err
				if !errors.Is(err, store.ErrClosed) {
					w.e.log.Error().Err(err).Str("job", w.job.JobID).Msg("cannot write job progress; the job stops")
				}
			}
		}
		for _, r := range batch {
			if r.done != nil {
				r.done <- err
			}
		}
		if !open {
			return
		}
	}
}

// commit writes one batch: the rows (the last update of a device wins) and
// the job with its recomputed statistics.
func (w *writer) commit(batch []wreq) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	j := w.job
	st := j.DeviceJobStatistics
	index := map[string]int{}
	var rows []iothub.DeviceJob
	for _, r := range batch {
		for _, row := range r.rows {
			if old, ok := w.state[row.DeviceID]; ok {
				st.Add(old, -1)
			}
			st.Add(row.Status, 1)
			w.state[row.DeviceID] = row.Status
			if i, ok := index[row.DeviceID]; ok {
				rows[i] = row
				continue
			}
			index[row.DeviceID] = len(rows)
			rows = append(rows, row)
		}
		if r.jobFn != nil {
			r.jobFn(&j)
		}
	}
	j.DeviceJobStatistics = st
	if err := w.e.store.WriteJob(&j, rows); err != nil {
		return err
	}
	w.job = j
	return nil
}
