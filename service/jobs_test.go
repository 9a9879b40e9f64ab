package service

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestJobRequestJSON(t *testing.T) {
	req := JobRequest{
		JobID: "j1", Type: iothub.JobTypeDeviceMethod, QueryCondition: "deviceId IN ['a']",
		CloudToDeviceMethod: &iothub.JobMethod{MethodName: RebootMethod, Payload: json.RawMessage(`{"delaySeconds":1}`), ResponseTimeoutInSeconds: 30},
		StartTime:           time.Date(2030, 1, 1, 0, 0, 0, 5e8, time.FixedZone("x", 3600)),
		MaxExecutionTime:    1500 * time.Millisecond,
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"jobId":"j1","type":"scheduleDeviceMethod","queryCondition":"deviceId IN ['a']","cloudToDeviceMethod":{"methodName":"rebootDevice","payload":{"delaySeconds":1},"responseTimeoutInSeconds":30},"startTime":"2029-12-31T23:00:00.500Z","maxExecutionTimeInSeconds":2}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	tw, _ := json.Marshal(JobRequest{JobID: "j2", Type: iothub.JobTypeUpdateTwin, QueryCondition: "x = 1",
		UpdateTwin: &TwinPatch{Desired: json.RawMessage(`{"a":1}`)}})
	if string(tw) != `{"jobId":"j2","type":"scheduleUpdateTwin","queryCondition":"x = 1","updateTwin":{"properties":{"desired":{"a":1}}}}` {
		t.Errorf("twin job %s", tw)
	}
}

func TestValidJobID(t *testing.T) {
	for _, ok := range []string{"a", "dmctl-reboot-20261125T200545123Z-w1", strings.Repeat("x", 64)} {
		if err := iothub.ValidJobID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a_b", "ä", strings.Repeat("x", 65)} {
		if iothub.ValidJobID(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestJobsClient(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "GET" && r.URL.Path == "/jobs/v2/query":
			// First page: the QueryResult envelope; second: a plain array.
			if r.Header.Get("x-ms-continuation") == "" {
				writeJSON(w, 200, `{"type":"jobResponse","items":[{"jobId":"a","type":"scheduleDeviceMethod","status":"completed"}],"continuationToken":"p2"}`)
				return
			}
			writeJSON(w, 200, `[{"jobId":"b","type":"scheduleUpdateTwin","status":"running","deviceJobStatistics":{"deviceCount":3,"failedCount":1,"succeededCount":1,"runningCount":1,"pendingCount":0}}]`)
		case r.Method == "GET" && r.URL.Path == "/jobs/v2/nope":
			writeJSON(w, 404, iothub.RegistryErrorBody(iothub.CodeJobNotFound, "no job", time.Now()))
		case r.Method == "PUT" && r.URL.Path == "/jobs/v2/dup":
			writeJSON(w, 409, iothub.MethodErrorBody(iothub.CodeJobAlreadyExists, "exists", time.Now()))
		case r.Method == "POST" && r.URL.Path == "/jobs/v2/b/cancel":
			writeJSON(w, 200, `{"jobId":"b","status":"cancelled"}`)
		default:
			http.Error(w, "unexpected", 400)
		}
	})
	ctx := testContext(t)
	jobs, err := c.Jobs(ctx, JobFilter{Type: iothub.JobTypeDeviceMethod, Status: iothub.JobRunning})
	if err != nil || len(jobs) != 2 || jobs[0].JobID != "a" || jobs[1].Stats().Finished() != 2 {
		t.Fatalf("jobs %+v %v", jobs, err)
	}
	first := rec.all()[0]
	if q := first.Query; q["jobType"][0] != iothub.JobTypeDeviceMethod || q["jobStatus"][0] != iothub.JobRunning || q["api-version"][0] != iothub.APIVersion {
		t.Errorf("query %v", q)
	}
	if rec.all()[1].Header.Get("x-ms-continuation") != "p2" {
		t.Error("continuation from the envelope not sent")
	}
	if _, err := c.Job(ctx, "nope"); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("get: %v", err)
	}
	before := rec.count()
	if _, err := c.CreateJob(ctx, JobRequest{JobID: "dup", Type: iothub.JobTypeDeviceMethod, QueryCondition: "x = 1"}); !errors.Is(err, ErrJobAlreadyExists) {
		t.Errorf("create: %v", err)
	}
	if rec.count()-before != 1 {
		t.Errorf("a refused create was sent %d times", rec.count()-before)
	}
	if _, err := c.CreateJob(ctx, JobRequest{JobID: "bad id"}); err == nil || rec.count()-before != 1 {
		t.Errorf("invalid id: %v", err)
	}
	j, err := c.CancelJob(ctx, "b")
	if err != nil || j.Status != iothub.JobCancelled || !iothub.JobTerminal(j.Status) {
		t.Errorf("cancel: %+v %v", j, err)
	}
	if _, ok := Time("0001-01-01T00:00:00Z"); ok {
		t.Error("unset time parsed")
	}
	if tm, ok := Time("2026-11-25T20:05:45.1234567Z"); !ok || tm.Nanosecond() != 123456700 {
		t.Errorf("time %v %v", tm, ok)
	}
}
