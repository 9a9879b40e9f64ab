package service

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

var (
	// ErrJobNotFound matches IoT Hub error 404002.
	ErrJobNotFound = &APIError{Code: iothub.CodeJobNotFound}
	// ErrJobAlreadyExists matches IoT Hub error 409104.
	ErrJobAlreadyExists = &APIError{Code: iothub.CodeJobAlreadyExists}
)

// Time parses one of the hub's timestamps; ok is false for an empty, unset
// ("0001-01-01...") or unparsable one. Timestamps without a zone, which
// IoT Hub has been seen to send, are UTC.
func Time(s string) (t time.Time, ok bool) { return iothub.ReadTime(s) }

// JobRequest creates a job (PUT /jobs/v2/{jobId}). QueryCondition is the
// body of a WHERE clause over devices ("tags.site = 'lab'"). A zero
// StartTime starts the job now (the hub's clock); MaxExecutionTime 0 leaves
// the hub's default (one hour on IoT Hub).
type JobRequest struct {
	JobID               string
	Type                string // iothub.JobTypeDeviceMethod or iothub.JobTypeUpdateTwin
	QueryCondition      string
	CloudToDeviceMethod *iothub.JobMethod // for iothub.JobTypeDeviceMethod
	UpdateTwin          *TwinPatch        // for iothub.JobTypeUpdateTwin
	StartTime           time.Time
	MaxExecutionTime    time.Duration // whole seconds, rounded up
}

// MarshalJSON renders the request as the service SDKs send it.
func (r JobRequest) MarshalJSON() ([]byte, error) {
	// The SDKs leave out the method members they were not given.
	type method struct {
		MethodName               string          `json:"methodName"`
		Payload                  json.RawMessage `json:"payload,omitempty"`
		ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds,omitempty"`
		ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds,omitempty"`
	}
	type body struct {
		JobID                     string     `json:"jobId"`
		Type                      string     `json:"type"`
		QueryCondition            string     `json:"queryCondition"`
		CloudToDeviceMethod       *method    `json:"cloudToDeviceMethod,omitempty"`
		UpdateTwin                *TwinPatch `json:"updateTwin,omitempty"`
		StartTime                 string     `json:"startTime,omitempty"`
		MaxExecutionTimeInSeconds int64      `json:"maxExecutionTimeInSeconds,omitempty"`
	}
	b := body{
		JobID:          r.JobID,
		Type:           r.Type,
		QueryCondition: r.QueryCondition,
		UpdateTwin:     r.UpdateTwin,
	}
	if m := r.CloudToDeviceMethod; m != nil {
		b.CloudToDeviceMethod = (*method)(m)
	}
	if !r.StartTime.IsZero() {
		b.StartTime = r.StartTime.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	if r.MaxExecutionTime > 0 {
		b.MaxExecutionTimeInSeconds = int64(ceilSeconds(r.MaxExecutionTime))
	}
	return json.Marshal(b)
}

// CreateJob creates and schedules a job (PUT /jobs/v2/{jobId}). Not
// retried: a repeated create fails with ErrJobAlreadyExists.
func (c *Client) CreateJob(ctx context.Context, req JobRequest) (*iothub.JobResponse, error) {
	if err := iothub.ValidJobID(req.JobID); err != nil {
		return nil, fmt.Errorf("create job: %w", err)
	}
	resp, err := c.do(ctx, request{method: "PUT", path: "/jobs/v2/" + seg(req.JobID), body: req, retry: true, retryThrottledOnly: true})
	if err != nil {
		return nil, fmt.Errorf("create job %q: %w", req.JobID, err)
	}
	var j iothub.JobResponse
	if err := decode(resp, &j); err != nil {
		return nil, fmt.Errorf("create job %q: %w", req.JobID, err)
	}
	return &j, nil
}

// Job reads a job with its statistics (GET /jobs/v2/{jobId}); retried on
// 429/500/503.
func (c *Client) Job(ctx context.Context, jobID string) (*iothub.JobResponse, error) {
	resp, err := c.do(ctx, request{method: "GET", path: "/jobs/v2/" + seg(jobID), retry: true})
	if err != nil {
		return nil, fmt.Errorf("get job %q: %w", jobID, err)
	}
	var j iothub.JobResponse
	if err := decode(resp, &j); err != nil {
		return nil, fmt.Errorf("get job %q: %w", jobID, err)
	}
	return &j, nil
}

// CancelJob cancels a job that has not finished (POST
// /jobs/v2/{jobId}/cancel) and returns it; a finished job comes back
// unchanged. Retried on 429/500/503 (cancelling twice is harmless).
func (c *Client) CancelJob(ctx context.Context, jobID string) (*iothub.JobResponse, error) {
	resp, err := c.do(ctx, request{method: "POST", path: "/jobs/v2/" + seg(jobID) + "/cancel", retry: true})
	if err != nil {
		return nil, fmt.Errorf("cancel job %q: %w", jobID, err)
	}
	var j iothub.JobResponse
	if err := decode(resp, &j); err != nil {
		return nil, fmt.Errorf("cancel job %q: %w", jobID, err)
	}
	return &j, nil
}

// JobFilter selects jobs for Jobs; empty fields match any job.
type JobFilter struct {
	Type   string // iothub.JobTypeDeviceMethod or iothub.JobTypeUpdateTwin
	Status string // a job status
}

// Jobs lists jobs (GET /jobs/v2/query?jobType=&jobStatus=), all pages. The
// body of each page is a plain array; the QueryResult envelope
// ({"items": [...]}) some documents describe is accepted too.
func (c *Client) Jobs(ctx context.Context, f JobFilter) ([]iothub.JobResponse, error) {
	q := url.Values{}
	if f.Type != "" {
		q.Set("jobType", f.Type)
	}
	if f.Status != "" {
		q.Set("jobStatus", f.Status)
	}
	out := []iothub.JobResponse{}
	var cont string
	seen := map[string]bool{}
	for page := 1; ; page++ {
		h := map[string][]string{}
		if cont != "" {
			h["X-Ms-Continuation"] = []string{cont}
		}
		resp, err := c.do(ctx, request{method: "GET", path: "/jobs/v2/query", query: q, header: h, retry: true})
		if err != nil {
			return nil, fmt.Errorf("list jobs (page %d): %w", page, err)
		}
		items, next, err := decodeJobPage(resp)
		if err != nil {
			return nil, fmt.Errorf("list jobs (page %d): %w", page, err)
		}
		out = append(out, items...)
		if next == "" {
			return out, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("list jobs (page %d): the hub repeated continuation token %q", page, next)
		}
		seen[next] = true
		cont = next
	}
}

func decodeJobPage(resp *response) ([]iothub.JobResponse, string, error) {
	next := resp.header.Get("X-Ms-Continuation")
	var items []iothub.JobResponse
	if err := json.Unmarshal(resp.body, &items); err == nil {
		return items, next, nil
	}
	var env struct {
		Items             []iothub.JobResponse `json:"items"`
		ContinuationToken string               `json:"continuationToken"`
	}
	if err := decode(resp, &env); err != nil {
		return nil, "", err
	}
	if next == "" {
		next = env.ContinuationToken
	}
	return env.Items, next, nil
}

// DeviceJobs calls fn with every device row of a job, in the hub's order
// (SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '...'), all pages.
// fn returning ErrStopQuery ends the walk with nil.
func (c *Client) DeviceJobs(ctx context.Context, jobID string, fn func(iothub.DeviceJob) error) error {
	q := "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = " + QuoteString(jobID)
	err := c.Query(ctx, q, 1000, func(raw json.RawMessage) error {
		var row iothub.DeviceJob
		if err := json.Unmarshal(raw, &row); err != nil {
			return fmt.Errorf("decode device job row: %w", err)
		}
		return fn(row)
	})
	if err != nil {
		return fmt.Errorf("device rows of job %q: %w", jobID, err)
	}
	return nil
}

// QuoteString renders s as a string literal of the IoT Hub query language:
// single quotes, with backslash and single quote escaped.
func QuoteString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for _, r := range s {
		switch r {
		case '\\', '\'':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('\'')
	return b.String()
}

// IDListCondition is the condition "deviceId IN ['a', 'b', ...]".
func IDListCondition(ids []string) string {
	var b strings.Builder
	b.WriteString("deviceId IN [")
	for i, id := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(QuoteString(id))
	}
	b.WriteByte(']')
	return b.String()
}
