package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// Job errors; callers match them with errors.Is.
var (
	ErrJobNotFound = errors.New("store: job not found")
	ErrJobExists   = errors.New("store: job already exists")
)

// Job types (JobResponse.type).
const (
	JobTypeDeviceMethod = iothub.JobTypeDeviceMethod
	JobTypeUpdateTwin   = iothub.JobTypeUpdateTwin
)

// Job statuses (JobResponse.status).
const (
	JobQueued    = iothub.JobQueued
	JobScheduled = iothub.JobScheduled
	JobRunning   = iothub.JobRunning
	JobCompleted = iothub.JobCompleted
	JobFailed    = iothub.JobFailed
	JobCancelled = iothub.JobCancelled
)

// Device job (row) statuses. Note the spelling: rows are "canceled", jobs
// "cancelled", as on IoT Hub.
const (
	RowPending   = iothub.RowPending
	RowScheduled = iothub.RowScheduled
	RowRunning   = iothub.RowRunning
	RowCompleted = iothub.RowCompleted
	RowFailed    = iothub.RowFailed
	RowCanceled  = iothub.RowCanceled
)

// JobTerminal reports whether a job status is final.
func JobTerminal(status string) bool {
	return status == JobCompleted || status == JobFailed || status == JobCancelled
}

// RowTerminal reports whether a device job status is final.
func RowTerminal(status string) bool {
	return status == RowCompleted || status == RowFailed || status == RowCanceled
}

// JobMethod is the direct method a scheduleDeviceMethod job calls.
type JobMethod struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds"`
}

// JobTwin is the patch a scheduleUpdateTwin job merges into every twin.
type JobTwin struct {
	Tags       map[string]any    `json:"tags,omitempty"`
	Properties JobTwinProperties `json:"properties"`
}

// JobTwinProperties holds the desired properties of a JobTwin.
type JobTwinProperties struct {
	Desired map[string]any `json:"desired,omitempty"`
}

// JobStatistics counts a job's device rows. Rows "pending" or "scheduled"
// count as pending, "completed" as succeeded, "failed" and "canceled" as
// failed, so DeviceCount is always the sum of the other four.
type JobStatistics struct {
	DeviceCount    int `json:"deviceCount"`
	FailedCount    int `json:"failedCount"`
	SucceededCount int `json:"succeededCount"`
	RunningCount   int `json:"runningCount"`
	PendingCount   int `json:"pendingCount"`
}

// Add counts one row in status.
func (st *JobStatistics) Add(status string, n int) {
	st.DeviceCount += n
	switch status {
	case RowCompleted:
		st.SucceededCount += n
	case RowFailed, RowCanceled:
		st.FailedCount += n
	case RowRunning:
		st.RunningCount += n
	default:
		st.PendingCount += n
	}
}

// Job is an IoT Hub job (v2). It renders as the REST JobResponse; unset
// times render as "0001-01-01T00:00:00Z".
type Job struct {
	JobID                     string
	QueryCondition            string
	CreatedTime               time.Time
	StartTime                 time.Time // scheduled start
	EndTime                   time.Time
	MaxExecutionTimeInSeconds int64
	Type                      string
	CloudToDeviceMethod       *JobMethod // scheduleDeviceMethod
	UpdateTwin                *JobTwin   // scheduleUpdateTwin
	Status                    string
	FailureReason             string
	StatusMessage             string
	DeviceJobStatistics       JobStatistics
}

type jobJSON struct {
	JobID                     string        `json:"jobId"`
	QueryCondition            string        `json:"queryCondition"`
	CreatedTime               string        `json:"createdTime"`
	StartTime                 string        `json:"startTime"`
	EndTime                   string        `json:"endTime"`
	MaxExecutionTimeInSeconds int64         `json:"maxExecutionTimeInSeconds"`
	Type                      string        `json:"type"`
	CloudToDeviceMethod       *JobMethod    `json:"cloudToDeviceMethod,omitempty"`
	UpdateTwin                *JobTwin      `json:"updateTwin,omitempty"`
	Status                    string        `json:"status"`
	FailureReason             string        `json:"failureReason,omitempty"`
	StatusMessage             string        `json:"statusMessage,omitempty"`
	DeviceJobStatistics       JobStatistics `json:"deviceJobStatistics"`
}

// MarshalJSON renders the JobResponse document.
func (j Job) MarshalJSON() ([]byte, error) {
	return json.Marshal(jobJSON{
		JobID:                     j.JobID,
		QueryCondition:            j.QueryCondition,
		CreatedTime:               iothub.FormatTime(j.CreatedTime),
		StartTime:                 iothub.FormatTime(j.StartTime),
		EndTime:                   iothub.FormatTime(j.EndTime),
		MaxExecutionTimeInSeconds: j.MaxExecutionTimeInSeconds,
		Type:                      j.Type,
		CloudToDeviceMethod:       j.CloudToDeviceMethod,
		UpdateTwin:                j.UpdateTwin,
		Status:                    j.Status,
		FailureReason:             j.FailureReason,
		StatusMessage:             j.StatusMessage,
		DeviceJobStatistics:       j.DeviceJobStatistics,
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (j *Job) UnmarshalJSON(b []byte) error {
	var w jobJSON
	if err := decodeJSON(b, &w); err != nil {
		return err
	}
	var err error
	*j = Job{
		JobID:                     w.JobID,
		QueryCondition:            w.QueryCondition,
		MaxExecutionTimeInSeconds: w.MaxExecutionTimeInSeconds,
		Type:                      w.Type,
		CloudToDeviceMethod:       w.CloudToDeviceMethod,
		UpdateTwin:                w.UpdateTwin,
		Status:                    w.Status,
		FailureReason:             w.FailureReason,
		StatusMessage:             w.StatusMessage,
		DeviceJobStatistics:       w.DeviceJobStatistics,
	}
	for _, f := range []struct {
		dst *time.Time
		src string
	}{{&j.CreatedTime, w.CreatedTime}, {&j.StartTime, w.StartTime}, {&j.EndTime, w.EndTime}} {
		if *f.dst, err = ParseTime(f.src); err != nil {
			return err
		}
	}
	return nil
}

// DeviceMethodResponse is the device's answer recorded in a device job row.
type DeviceMethodResponse struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// DeviceJobOutcome is the outcome of a device job row.
type DeviceJobOutcome struct {
	DeviceMethodResponse *DeviceMethodResponse `json:"deviceMethodResponse"`
}

// DeviceJobError explains a failed (or canceled) device job row. Code is
// the decimal IoT Hub error code as a string ("404103"), the type the
// service SDKs declare for it.
type DeviceJobError struct {
	Code        string `json:"code"`
	Description string `json:"description"`
}

// DeviceJob is one device's row of a job, as returned by
// SELECT * FROM devices.jobs.
type DeviceJob struct {
	DeviceID               string
	JobID                  string
	JobType                string
	Status                 string
	StartTimeUtc           time.Time
	EndTimeUtc             time.Time
	CreatedDateTimeUtc     time.Time
	LastUpdatedDateTimeUtc time.Time
	Outcome                *DeviceJobOutcome // nil renders as null
	Error                  *DeviceJobError   // only on failed and canceled rows
}

type deviceJobJSON struct {
	DeviceID               string            `json:"deviceId"`
	JobID                  string            `json:"jobId"`
	JobType                string            `json:"jobType"`
	Status                 string            `json:"status"`
	StartTimeUtc           string            `json:"startTimeUtc"`
	EndTimeUtc             string            `json:"endTimeUtc"`
	CreatedDateTimeUtc     string            `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUtc string            `json:"lastUpdatedDateTimeUtc"`
	Outcome                *DeviceJobOutcome `json:"outcome"`
	Error                  *DeviceJobError   `json:"error,omitempty"`
}

// MarshalJSON renders the devices.jobs document.
func (d DeviceJob) MarshalJSON() ([]byte, error) {
	return json.Marshal(deviceJobJSON{
		DeviceID:               d.DeviceID,
		JobID:                  d.JobID,
		JobType:                d.JobType,
		Status:                 d.Status,
		StartTimeUtc:           iothub.FormatTime(d.StartTimeUtc),
		EndTimeUtc:             iothub.FormatTime(d.EndTimeUtc),
		CreatedDateTimeUtc:     iothub.FormatTime(d.CreatedDateTimeUtc),
		LastUpdatedDateTimeUtc: iothub.FormatTime(d.LastUpdatedDateTimeUtc),
		Outcome:                d.Outcome,
		Error:                  d.Error,
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (d *DeviceJob) UnmarshalJSON(b []byte) error {
	var w deviceJobJSON
	if err := decodeJSON(b, &w); err != nil {
		return err
	}
	*d = DeviceJob{
		DeviceID: w.DeviceID,
		JobID:    w.JobID,
		JobType:  w.JobType,
		Status:   w.Status,
		Outcome:  w.Outcome,
		Error:    w.Error,
	}
	var err error
	for _, f := range []struct {
		dst *time.Time
		src string
	}{{&d.StartTimeUtc, w.StartTimeUtc}, {&d.EndTimeUtc, w.EndTimeUtc},
		{&d.CreatedDateTimeUtc, w.CreatedDateTimeUtc}, {&d.LastUpdatedDateTimeUtc, w.LastUpdatedDateTimeUtc}} {
		if *f.dst, err = ParseTime(f.src); err != nil {
			return err
		}
	}
	return nil
}

// ParseTime parses an RFC 3339 timestamp as the REST API renders and
// clients send them; "" and "0001-01-01T00:00:00Z" give the zero time.
func ParseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q is not RFC 3339: %w", s, err)
	}
	if t.Year() <= 1 && t.YearDay() == 1 && t.Hour() == 0 && t.Minute() == 0 && t.Second() == 0 && t.Nanosecond() == 0 {
		return time.Time{}, nil
	}
	return t.UTC(), nil
}

func decodeJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

var (
	bucketJobs    = []byte("jobs")
	bucketJobRows = []byte("jobrows") // key: jobId "\x00" deviceId
)

func rowKey(jobID, deviceID string) []byte {
	k := make([]byte, 0, len(jobID)+1+len(deviceID))
	k = append(k, jobID...)
	k = append(k, 0)
	return append(k, deviceID...)
}

// jobTx runs fn in a read-write transaction on the job buckets (created on
// first use). The transaction is committed, and synced, before jobTx returns.
func (s *Store) jobTx(fn func(jobs, rows *bolt.Bucket) error) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		jb, err := tx.CreateBucketIfNotExists(bucketJobs)
		if err != nil {
			return err
		}
		rb, err := tx.CreateBucketIfNotExists(bucketJobRows)
		if err != nil {
			return err
		}
		return fn(jb, rb)
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// jobView runs fn in a read-only transaction; the buckets are nil when no
// job was ever stored.
func (s *Store) jobView(fn func(jobs, rows *bolt.Bucket) error) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		return fn(tx.Bucket(bucketJobs), tx.Bucket(bucketJobRows))
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

func putJob(b *bolt.Bucket, j *Job) error {
	v, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("store: encode job %q: %w", j.JobID, err)
	}
	if err := b.Put([]byte(j.JobID), v); err != nil {
		return fmt.Errorf("store: write job %q: %w", j.JobID, err)
	}
	return nil
}

func putRow(b *bolt.Bucket, r *DeviceJob) error {
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode row %q of job %q: %w", r.DeviceID, r.JobID, err)
	}
	if err := b.Put(rowKey(r.JobID, r.DeviceID), v); err != nil {
		return fmt.Errorf("store: write row %q of job %q: %w", r.DeviceID, r.JobID, err)
	}
	return nil
}

// CreateJob stores a new job (ErrJobExists if the id is taken), durably.
func (s *Store) CreateJob(j Job) error {
	if j.JobID == "" {
		return invalid("jobId is empty")
	}
	return s.jobTx(func(jobs, _ *bolt.Bucket) error {
		if jobs.Get([]byte(j.JobID)) != nil {
			return fmt.Errorf("%w: %q", ErrJobExists, j.JobID)
		}
		return putJob(jobs, &j)
	})
}

// WriteJob stores job (when not nil; it must exist, ErrJobNotFound) and
// upserts rows, all in one durable transaction.
func (s *Store) WriteJob(job *Job, rows []DeviceJob) error {
	return s.jobTx(func(jobs, rb *bolt.Bucket) error {
		if job != nil {
			if jobs.Get([]byte(job.JobID)) == nil {
				return fmt.Errorf("%w: %q", ErrJobNotFound, job.JobID)
			}
			if err := putJob(jobs, job); err != nil {
				return err
			}
		}
		for i := range rows {
			if rows[i].JobID == "" || rows[i].DeviceID == "" {
				return invalid("device job row without jobId or deviceId")
			}
			if err := putRow(rb, &rows[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Job returns the stored job id (ErrJobNotFound).
func (s *Store) Job(id string) (Job, error) {
	var j Job
	err := s.jobView(func(jobs, _ *bolt.Bucket) error {
		var v []byte
		if jobs != nil {
			v = jobs.Get([]byte(id))
		}
		if v == nil {
			return fmt.Errorf("%w: %q", ErrJobNotFound, id)
		}
		if err := json.Unmarshal(v, &j); err != nil {
			return fmt.Errorf("store: job %q: %w", id, err)
		}
		return nil
	})
	return j, err
}

// Jobs returns every stored job, oldest first (ties in jobId order).
func (s *Store) Jobs() ([]Job, error) {
	var out []Job
	err := s.jobView(func(jobs, _ *bolt.Bucket) error {
		if jobs == nil {
			return nil
		}
		return jobs.ForEach(func(k, v []byte) error {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("store: job %q: %w", k, err)
			}
			out = append(out, j)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].CreatedTime.Before(out[b].CreatedTime) })
	return out, nil
}

// JobRows returns the rows of job jobID in deviceId order (none for an
// unknown job).
func (s *Store) JobRows(jobID string) ([]DeviceJob, error) {
	var out []DeviceJob
	prefix := rowKey(jobID, "")
	err := s.jobView(func(_, rows *bolt.Bucket) error {
		if rows == nil {
			return nil
		}
		c := rows.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r DeviceJob
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: row %q: %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// rowChunk is how many rows ForEachJobRow reads per transaction.
const rowChunk = 512

// ForEachJobRow calls fn with every device job row, in jobId then deviceId
// order, until fn returns false. Rows are read in chunks, each in its own
// transaction, and fn runs outside any transaction (it may use the store).
func (s *Store) ForEachJobRow(fn func(DeviceJob) bool) error {
	var after []byte
	for {
		var chunk []DeviceJob
		var last []byte
		err := s.jobView(func(_, rows *bolt.Bucket) error {
			if rows == nil {
				return nil
			}
			c := rows.Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else {
				k, v = c.Seek(after)
				if k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(chunk) < rowChunk; k, v = c.Next() {
				var r DeviceJob
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("store: row %q: %w", k, err)
				}
				chunk = append(chunk, r)
				last = append(last[:0], k...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range chunk {
			if !fn(r) {
				return nil
			}
		}
		if len(chunk) < rowChunk {
			return nil
		}
		after = last
	}
}
