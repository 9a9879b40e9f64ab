package iothub

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Job types (JobResponse.type) of IoT Hub jobs v2.
const (
	JobTypeDeviceMethod = "scheduleDeviceMethod"
	JobTypeUpdateTwin   = "scheduleUpdateTwin"
)

// Job statuses (JobResponse.status). IoT Hub also documents "unknown" and
// "enqueued".
const (
	JobQueued    = "queued"
	JobScheduled = "scheduled"
	JobRunning   = "running"
	JobCompleted = "completed"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// Device job (row) statuses, as devices.jobs queries return them. Rows are
// "canceled", jobs "cancelled", as on IoT Hub.
const (
	RowPending   = "pending"
	RowScheduled = "scheduled"
	RowRunning   = "running"
	RowCompleted = "completed"
	RowFailed    = "failed"
	RowCanceled  = "canceled"
)

// MaxJobIDLength is the longest jobId IoT Hub accepts.
const MaxJobIDLength = 64

// JobTerminal reports whether a job status is final (case-insensitive).
func JobTerminal(status string) bool {
	switch strings.ToLower(status) {
	case JobCompleted, JobFailed, JobCancelled:
		return true
	}
	return false
}

// RowTerminal reports whether a device job status is final.
func RowTerminal(status string) bool {
	return status == RowCompleted || status == RowFailed || status == RowCanceled
}

// JobMethod is the direct method of a scheduleDeviceMethod job: the
// cloudToDeviceMethod member of the job request and of JobResponse.
type JobMethod struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds"`
}

// JobTwin is the patch a scheduleUpdateTwin job merges into every twin: the
// updateTwin member of the job request and of JobResponse.
type JobTwin struct {
	Tags       map[string]any    `json:"tags,omitempty"`
	Properties JobTwinProperties `json:"properties"`
}

// JobTwinProperties holds the desired properties of a JobTwin.
type JobTwinProperties struct {
	Desired map[string]any `json:"desired,omitempty"`
}

// JobStatistics counts a job's device rows (deviceJobStatistics). Rows
// "pending" or "scheduled" count as pending, "completed" as succeeded,
// "failed" and "canceled" as failed, so DeviceCount is always the sum of
// the other four.
type JobStatistics struct {
	DeviceCount    int `json:"deviceCount"`
	FailedCount    int `json:"failedCount"`
	SucceededCount int `json:"succeededCount"`
	RunningCount   int `json:"runningCount"`
	PendingCount   int `json:"pendingCount"`
}

// Add counts n rows in status.
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

// Finished is the number of rows that have an outcome.
func (st JobStatistics) Finished() int { return st.SucceededCount + st.FailedCount }

// JobResponse is an IoT Hub job (v2) as GET /jobs/v2/{id} renders it. Unset
// times render as NeverTime; reading accepts what ReadTime accepts.
type JobResponse struct {
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

type jobResponseJSON struct {
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
func (j JobResponse) MarshalJSON() ([]byte, error) {
	return json.Marshal(jobResponseJSON{
		JobID:                     j.JobID,
		QueryCondition:            j.QueryCondition,
		CreatedTime:               FormatTime(j.CreatedTime),
		StartTime:                 FormatTime(j.StartTime),
		EndTime:                   FormatTime(j.EndTime),
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

// UnmarshalJSON reads a JobResponse as the hub or IoT Hub renders it.
// Numbers in the twin patch stay json.Number; timestamps are read with
// ReadTime (a missing or unreadable one is the zero time).
func (j *JobResponse) UnmarshalJSON(b []byte) error {
	var w jobResponseJSON
	if err := decodeJSON(b, &w); err != nil {
		return err
	}
	*j = JobResponse{
		JobID:                     w.JobID,
		QueryCondition:            w.QueryCondition,
		CreatedTime:               readTime(w.CreatedTime),
		StartTime:                 readTime(w.StartTime),
		EndTime:                   readTime(w.EndTime),
		MaxExecutionTimeInSeconds: w.MaxExecutionTimeInSeconds,
		Type:                      w.Type,
		CloudToDeviceMethod:       w.CloudToDeviceMethod,
		UpdateTwin:                w.UpdateTwin,
		Status:                    w.Status,
		FailureReason:             w.FailureReason,
		StatusMessage:             w.StatusMessage,
		DeviceJobStatistics:       w.DeviceJobStatistics,
	}
	return nil
}

// Stats returns the job's statistics (zero for a nil job).
func (j *JobResponse) Stats() JobStatistics {
	if j == nil {
		return JobStatistics{}
	}
	return j.DeviceJobStatistics
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

// CodeInt is Code as a number, 0 when it is not one (or e is nil).
func (e *DeviceJobError) CodeInt() int {
	if e == nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(e.Code))
	return n
}

// DeviceJob is one device's row of a job, as SELECT * FROM devices.jobs
// returns it. Unset times render as NeverTime.
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
		StartTimeUtc:           FormatTime(d.StartTimeUtc),
		EndTimeUtc:             FormatTime(d.EndTimeUtc),
		CreatedDateTimeUtc:     FormatTime(d.CreatedDateTimeUtc),
		LastUpdatedDateTimeUtc: FormatTime(d.LastUpdatedDateTimeUtc),
		Outcome:                d.Outcome,
		Error:                  d.Error,
	})
}

// UnmarshalJSON reads a devices.jobs row; timestamps are read with ReadTime.
func (d *DeviceJob) UnmarshalJSON(b []byte) error {
	var w deviceJobJSON
	if err := decodeJSON(b, &w); err != nil {
		return err
	}
	*d = DeviceJob{
		DeviceID:               w.DeviceID,
		JobID:                  w.JobID,
		JobType:                w.JobType,
		Status:                 w.Status,
		StartTimeUtc:           readTime(w.StartTimeUtc),
		EndTimeUtc:             readTime(w.EndTimeUtc),
		CreatedDateTimeUtc:     readTime(w.CreatedDateTimeUtc),
		LastUpdatedDateTimeUtc: readTime(w.LastUpdatedDateTimeUtc),
		Outcome:                w.Outcome,
		Error:                  w.Error,
	}
	return nil
}

// MethodResponse is the device's answer, nil when the row has none.
func (d *DeviceJob) MethodResponse() *DeviceMethodResponse {
	if d == nil || d.Outcome == nil {
		return nil
	}
	return d.Outcome.DeviceMethodResponse
}

// ParseTime parses an RFC 3339 timestamp as clients send them (startTime of
// a job request); "" and NeverTime give the zero time.
func ParseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q is not RFC 3339: %w", s, err)
	}
	if t.Year() <= 1 {
		return time.Time{}, nil
	}
	return t.UTC(), nil
}

// zonelessLayout is RFC 3339 without the zone designator, which IoT Hub has
// been seen to send; such times are UTC.
const zonelessLayout = "2006-01-02T15:04:05.999999999"

// ReadTime reads one of IoT Hub's timestamps tolerantly: RFC 3339, or
// RFC 3339 without a zone (taken as UTC). ok is false for an empty, unset
// (year 1) or unreadable one.
func ReadTime(s string) (t time.Time, ok bool) {
	if s == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		if t, err = time.Parse(zonelessLayout, s); err != nil {
			return time.Time{}, false
		}
	}
	if t.Year() <= 1 {
		return time.Time{}, false
	}
	return t.UTC(), true
}

func readTime(s string) time.Time {
	t, _ := ReadTime(s)
	return t
}

func decodeJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// ValidJobID checks IoT Hub's jobId rules: 1 to MaxJobIDLength ASCII
// letters, digits and '-'.
func ValidJobID(id string) error {
	if id == "" {
		return errors.New("jobId is empty")
	}
	if len(id) > MaxJobIDLength {
		return fmt.Errorf("jobId is %d characters long, over the limit of %d", len(id), MaxJobIDLength)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("jobId %q is not valid UTF-8", id)
	}
	// By rune, so that a non-ASCII character is named as itself.
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("jobId %q contains %q (use ASCII letters, digits and '-')", id, c)
		}
	}
	return nil
}
