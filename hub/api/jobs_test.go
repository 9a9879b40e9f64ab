package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/rs/zerolog"
)

// fakeJobs records what the handlers pass and answers with err when set.
type fakeJobs struct {
	mu      sync.Mutex
	err     error
	created []iothub.JobResponse
}

func (f *fakeJobs) Create(ctx context.Context, j iothub.JobResponse) (iothub.JobResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return iothub.JobResponse{}, f.err
	}
	f.created = append(f.created, j)
	j.Status = iothub.JobQueued
	return j, nil
}

func (f *fakeJobs) Get(ctx context.Context, id string) (iothub.JobResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return iothub.JobResponse{}, f.err
}

func (f *fakeJobs) Cancel(ctx context.Context, id string) (iothub.JobResponse, error) {
	return f.Get(ctx, id)
}

func (f *fakeJobs) List(ctx context.Context, jobType, status string) ([]iothub.JobResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return nil, f.err
}

func (f *fakeJobs) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeJobs) last() iothub.JobResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.created[len(f.created)-1]
}

func newJobsEnv(t *testing.T, jobs hubapi.Jobs) *env {
	t.Helper()
	e := newEnv(t)
	e.srv.Close() // replaced by a server with a jobs engine
	e.srv.Client().CloseIdleConnections()
	srv := httptest.NewServer(New(Config{
		Store:   e.store,
		Devices: e.dev,
		Jobs:    jobs,
		Hosts:   func() []string { return []string{hubHost} },
		Log:     zerolog.New(e.logBuf),
	}))
	e.srv = srv // closed by newEnv's cleanup
	return e
}

func TestJobRequestDecoding(t *testing.T) {
	f := &fakeJobs{}
	e := newJobsEnv(t, f)
	owner := e.token("iothubowner")
	r := e.do("PUT", "/jobs/v2/j1", owner, `{"jobId":"j1","type":"scheduleDeviceMethod","cloudToDeviceMethod":{"methodName":"m","payload":[1],"timeoutInSeconds":42,"connectTimeoutInSeconds":5},"startTime":"2030-01-01T00:00:00.000Z","maxExecutionTimeInSeconds":600,"queryCondition":"deviceId = 'a'"}`)
	if r.status != 200 {
		t.Fatalf("PUT: %s", r)
	}
	j := f.last()
	m := j.CloudToDeviceMethod
	if j.JobID != "j1" || j.MaxExecutionTimeInSeconds != 600 || j.StartTime.Year() != 2030 || j.QueryCondition != "deviceId = 'a'" ||
		m == nil || m.MethodName != "m" || m.ResponseTimeoutInSeconds != 42 || m.ConnectTimeoutInSeconds != 5 || string(m.Payload) != "[1]" {
		t.Errorf("job passed to the engine = %+v, method %+v", j, m)
	}
	wantStyleA(t, e.do("PUT", "/jobs/v2/j2", owner, `{"type":"scheduleDeviceMethod","startTime":"soon"}`), 400, "ArgumentInvalid")

	for err, want := range map[error]struct {
		status int
		name   string
	}{
		&store.ValidationError{Code: 400004, Msg: "no"}: {400, "ArgumentInvalid"},
		fmt.Errorf("x: %w", store.ErrJobExists):         {409, "JobAlreadyExists"},
		fmt.Errorf("x: %w", store.ErrJobNotFound):       {404, "JobNotFound"},
		store.ErrClosed:            {503, "ServiceUnavailable"},
		errors.New("disk on fire"): {500, "ServerError"},
	} {
		f.setErr(err)
		wantStyleA(t, e.do("PUT", "/jobs/v2/j3", owner, `{"type":"scheduleUpdateTwin","updateTwin":{"tags":{"a":1}},"queryCondition":"true"}`), want.status, want.name)
		wantStyleA(t, e.do("GET", "/jobs/v2/j3", owner, ""), want.status, want.name)
		wantStyleA(t, e.do("POST", "/jobs/v2/j3/cancel", owner, ""), want.status, want.name)
		wantStyleA(t, e.do("GET", "/jobs/v2/query", owner, ""), want.status, want.name)
	}
}

func TestJobRowsQuery(t *testing.T) {
	e := newEnv(t) // no jobs engine: rows are read from the store
	owner := e.token("iothubowner")
	q := func(text string, hdr ...string) response {
		b, _ := json.Marshal(map[string]string{"query": text})
		return e.do("POST", "/devices/query", owner, string(b), hdr...)
	}
	r := q("SELECT * FROM devices.jobs")
	if r.status != 200 || string(r.body) != "[]" || r.header.Get("x-ms-item-type") != "deviceJob" {
		t.Fatalf("no rows: %s %v", r, r.header)
	}
	for _, id := range []string{"j1", "j2"} {
		j := iothub.JobResponse{JobID: id, Type: iothub.JobTypeUpdateTwin, Status: iothub.JobRunning}
		if err := e.store.CreateJob(j); err != nil {
			t.Fatal(err)
		}
	}
	err := e.store.WriteJob(nil, []iothub.DeviceJob{
		{DeviceID: "d1", JobID: "j1", JobType: iothub.JobTypeUpdateTwin, Status: iothub.RowCompleted},
		{DeviceID: "d2", JobID: "j1", JobType: iothub.JobTypeUpdateTwin, Status: iothub.RowFailed, Error: &iothub.DeviceJobError{Code: "404001", Description: "gone"}},
		{DeviceID: "d1", JobID: "j2", JobType: iothub.JobTypeUpdateTwin, Status: iothub.RowPending},
	})
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	r = q("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'j1'")
	if err := json.Unmarshal(r.body, &rows); err != nil || len(rows) != 2 || rows[1]["deviceId"] != "d2" {
		t.Fatalf("rows of j1: %s", r)
	}
	r = q("SELECT * FROM devices.jobs WHERE devices.jobs.status = 'pending' OR devices.jobs.error.code = '404001'")
	rows = nil
	if err := json.Unmarshal(r.body, &rows); err != nil || len(rows) != 2 || rows[0]["jobId"] != "j1" || rows[1]["jobId"] != "j2" {
		t.Fatalf("filtered rows: %s", r)
	}
	r = q("SELECT * FROM devices.jobs WHERE deviceId = 'd1'", "x-ms-max-item-count", "1")
	if r.header.Get("x-ms-continuation") == "" {
		t.Fatalf("first page: %s %v", r, r.header)
	}
	r = q("SELECT * FROM devices.jobs WHERE deviceId = 'd1'", "x-ms-max-item-count", "1", "x-ms-continuation", r.header.Get("x-ms-continuation"))
	rows = nil
	if err := json.Unmarshal(r.body, &rows); err != nil || len(rows) != 1 || rows[0]["jobId"] != "j2" || r.header.Get("x-ms-continuation") != "" {
		t.Fatalf("second page: %s %v", r, r.header)
	}
}
