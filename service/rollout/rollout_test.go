package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/internal/servicetest"
)

func TestSplitByCondition(t *testing.T) {
	ids := service.SequentialIDs("device", 1, 2000)
	parts := splitByCondition(ids, MaxConditionLength)
	if len(parts) < 2 {
		t.Fatalf("%d parts", len(parts))
	}
	var joined []string
	for _, p := range parts {
		if n := len(service.IDListCondition(p)); n > MaxConditionLength {
			t.Errorf("part of %d ids renders %d characters", len(p), n)
		}
		joined = append(joined, p...)
	}
	if !reflect.DeepEqual(joined, ids) {
		t.Error("parts do not add up to the ids in order")
	}
	if got := splitByCondition([]string{"a", "b"}, MaxConditionLength); len(got) != 1 {
		t.Errorf("small list split into %d", len(got))
	}
	// An id longer than the limit still gets a part of its own.
	long := strings.Repeat("x", 50)
	if got := splitByCondition([]string{"a", long, "b"}, 40); len(got) != 3 {
		t.Errorf("parts %v", got)
	}
}

func TestResultErr(t *testing.T) {
	dev := func(id string, o Outcome, f FailureKind) Device {
		d := Device{DeviceID: id, Outcome: o, Failure: f, Reason: "why " + id}
		if f == FailureDeviceStatus {
			d.Status, d.Payload = 500, json.RawMessage(`{"e":1}`)
		}
		return d
	}
	mk := func(ds ...Device) *Result {
		r := &Result{Devices: ds}
		for _, d := range ds {
			r.Counts.add(d.Outcome)
		}
		return r
	}
	ok := dev("ok", OutcomeSucceeded, "")
	if err := mk(ok, ok).Err(); err != nil {
		t.Errorf("all confirmed: %v", err)
	}
	unconf := dev("u", OutcomeUnconfirmed, "")
	off := dev("o", OutcomeOffline, "")
	tout := dev("t", OutcomeFailed, FailureMethodTimeout)
	refused := dev("r", OutcomeFailed, FailureDeviceStatus)
	gone := dev("g", OutcomeFailed, FailureNotFound)
	other := dev("x", OutcomeFailed, FailureJob)
	skipped := dev("s", OutcomeSkipped, "")

	check := func(name string, err error, is error, notIs ...error) {
		t.Helper()
		if is == nil {
			if err == nil {
				t.Errorf("%s: nil error", name)
			}
		} else if !errors.Is(err, is) {
			t.Errorf("%s: %v does not match %v", name, err, is)
		}
		for _, n := range notIs {
			if errors.Is(err, n) {
				t.Errorf("%s: %v matches %v", name, err, n)
			}
		}
	}
	check("unconfirmed", mk(ok, unconf).Err(), service.ErrRebootNotConfirmed)
	check("offline beats unconfirmed", mk(unconf, off).Err(), service.ErrDeviceNotOnline, service.ErrRebootNotConfirmed)
	check("timeout beats offline", mk(off, tout, unconf).Err(), service.ErrMethodTimeout, service.ErrDeviceNotOnline)
	check("not found", mk(gone, unconf).Err(), service.ErrDeviceNotFound, service.ErrRebootNotConfirmed)
	check("other beats unconfirmed", mk(other, unconf).Err(), nil, service.ErrRebootNotConfirmed)
	check("skipped only", mk(ok, skipped).Err(), nil, service.ErrRebootNotConfirmed)

	err := mk(unconf, off, tout, refused, gone, other, ok).Err()
	var dse *service.DeviceStatusError
	if !errors.As(err, &dse) || dse.Status != 500 || string(dse.Payload) != `{"e":1}` {
		t.Errorf("device status beats all: %v", err)
	}
	if !strings.Contains(err.Error(), `6 of 7 devices not rebooted (4 failed, 1 offline, 1 unconfirmed, 0 skipped)`) ||
		!strings.Contains(err.Error(), `device "r"`) {
		t.Errorf("message: %v", err)
	}
	r := mk(refused, skipped)
	r.Stopped, r.StopReason = true, "wave 1 of 2: too many failures"
	if err := r.Err(); !strings.Contains(err.Error(), "rollout stopped: wave 1 of 2: too many failures") {
		t.Errorf("stopped: %v", err)
	}
}

// fakeJobsHub is a scripted hub for FleetReboot: it answers the baseline
// and confirmation queries from a twin table, creates jobs whose rows come
// from a function, and records the requests.
type fakeJobsHub struct {
	mu        sync.Mutex
	rebootAt  map[string]any // current reported.rebootTime per device (nil: absent)
	rows      func(jobID string, ids []string) []iothub.DeviceJob
	jobs      map[string]*iothub.JobResponse
	conds     map[string]string
	cancelled []string
	queries   []string
	// afterCreate runs (without the lock) once a job is created.
	afterCreate func(jobID string, ids []string)
	// holdJobs keeps jobs running until released.
	holdJobs bool
}

func (f *fakeJobsHub) handler(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		switch {
		case r.Method == "POST" && r.URL.Path == "/devices/query":
			var body struct{ Query string }
			json.NewDecoder(r.Body).Decode(&body)
			f.queries = append(f.queries, body.Query)
			q := body.Query
			var items []any
			switch {
			case strings.Contains(q, "FROM devices.jobs"):
				id := q[strings.Index(q, "jobId = '")+9 : len(q)-1]
				for _, row := range f.rows(id, idsOf(f.conds[id])) {
					items = append(items, row)
				}
			case strings.Contains(q, "deviceId IN ["):
				for _, id := range idsOf(q[strings.Index(q, "WHERE ")+6:]) {
					if rt, ok := f.rebootAt[id]; ok {
						items = append(items, map[string]any{"deviceId": id, "rebootTime": rt})
					}
				}
			default: // the baseline: every device, in reverse order
				ids := make([]string, 0, len(f.rebootAt))
				for id := range f.rebootAt {
					ids = append(ids, id)
				}
				slicesSortDesc(ids)
				for _, id := range ids {
					m := map[string]any{"deviceId": id}
					if rt := f.rebootAt[id]; rt != nil {
						m["rebootTime"] = rt
					}
					items = append(items, m)
				}
			}
			if items == nil {
				items = []any{}
			}
			f.mu.Unlock()
			writeJSON(w, 200, items)
		case r.Method == "PUT" && strings.HasPrefix(r.URL.Path, "/jobs/v2/"):
			var req struct {
				JobID               string
				Type                string
				QueryCondition      string
				StartTime           string
				CloudToDeviceMethod *iothub.JobMethod
			}
			json.NewDecoder(r.Body).Decode(&req)
			id := strings.TrimPrefix(r.URL.Path, "/jobs/v2/")
			if req.JobID != id || req.Type != iothub.JobTypeDeviceMethod || req.CloudToDeviceMethod == nil ||
				req.CloudToDeviceMethod.MethodName != service.RebootMethod || req.StartTime == "" {
				f.mu.Unlock()
				t.Errorf("job request %+v", req)
				writeJSON(w, 400, iothub.RegistryErrorBody(iothub.CodeArgumentInvalid, "bad job", time.Now()))
				return
			}
			status := iothub.JobCompleted
			if f.holdJobs {
				status = iothub.JobRunning
			}
			ids := idsOf(req.QueryCondition)
			j := &iothub.JobResponse{JobID: id, Type: req.Type, Status: status, QueryCondition: req.QueryCondition,
				MaxExecutionTimeInSeconds: 3600, DeviceJobStatistics: iothub.JobStatistics{DeviceCount: len(ids), SucceededCount: len(ids)}}
			f.jobs[id], f.conds[id] = j, req.QueryCondition
			after := f.afterCreate
			f.mu.Unlock()
			if after != nil {
				after(id, ids)
			}
			writeJSON(w, 200, j)
		case r.Method == "GET" && strings.HasPrefix(r.URL.Path, "/jobs/v2/"):
			j := f.jobs[strings.TrimPrefix(r.URL.Path, "/jobs/v2/")]
			f.mu.Unlock()
			if j == nil {
				writeJSON(w, 404, iothub.RegistryErrorBody(iothub.CodeJobNotFound, "no job", time.Now()))
				return
			}
			writeJSON(w, 200, j)
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/cancel"):
			id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/jobs/v2/"), "/cancel")
			f.cancelled = append(f.cancelled, id)
			j := f.jobs[id]
			j.Status = iothub.JobCancelled
			f.mu.Unlock()
			writeJSON(w, 200, j)
		default:
			f.mu.Unlock()
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, 400)
		}
	}
}

// idsOf reads the ids of "deviceId IN ['a', 'b']".
func idsOf(cond string) []string {
	i, j := strings.Index(cond, "["), strings.LastIndex(cond, "]")
	if i < 0 || j < i {
		return nil
	}
	var ids []string
	for _, f := range strings.Split(cond[i+1:j], ", ") {
		ids = append(ids, strings.ReplaceAll(strings.Trim(f, "'"), `\'`, `'`))
	}
	return ids
}

func slicesSortDesc(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] > s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func completedRow(jobID, id string, status int, payload string) iothub.DeviceJob {
	return iothub.DeviceJob{DeviceID: id, JobID: jobID, JobType: iothub.JobTypeDeviceMethod, Status: iothub.RowCompleted,
		Outcome: &iothub.DeviceJobOutcome{DeviceMethodResponse: &iothub.DeviceMethodResponse{Status: status, Payload: json.RawMessage(payload)}}}
}

func failedRow(jobID, id string, code int, status string) iothub.DeviceJob {
	return iothub.DeviceJob{DeviceID: id, JobID: jobID, JobType: iothub.JobTypeDeviceMethod, Status: status,
		Error: &iothub.DeviceJobError{Code: fmt.Sprint(code), Description: "row says " + iothub.ErrorName(code)}}
}

// TestRunOutcomes drives one wave over a scripted hub and checks
// how each kind of job row and rebootTime settles a device.
func TestRunOutcomes(t *testing.T) {
	f := &fakeJobsHub{
		rebootAt: map[string]any{
			"ok":        "2026-01-01T00:00:00Z",
			"fresh":     nil, // no rebootTime yet: any new value confirms
			"numeric":   float64(1),
			"refused":   "2026-01-01T00:00:00Z",
			"refused2":  "2026-01-01T00:00:00Z", // answered 409 although its rebootTime moves
			"off":       "2026-01-01T00:00:00Z",
			"slow":      "2026-01-01T00:00:00Z",
			"late":      "2026-01-01T00:00:00Z", // timed out, but reboots: succeeded
			"timeout":   "2026-01-01T00:00:00Z",
			"gone":      "2026-01-01T00:00:00Z",
			"norow":     "2026-01-01T00:00:00Z",
			"canceled":  "2026-01-01T00:00:00Z",
			"restarted": "2026-01-01T00:00:00Z",
		},
		jobs: map[string]*iothub.JobResponse{}, conds: map[string]string{},
	}
	f.rows = func(jobID string, ids []string) []iothub.DeviceJob {
		return []iothub.DeviceJob{
			completedRow(jobID, "ok", 200, `{}`),
			completedRow(jobID, "fresh", 200, `{}`),
			completedRow(jobID, "numeric", 200, `null`),
			completedRow(jobID, "refused", 500, `{"error":"disk"}`),
			completedRow(jobID, "refused2", 409, `{"error":"busy"}`),
			failedRow(jobID, "off", iothub.CodeDeviceNotOnline, iothub.RowFailed),
			completedRow(jobID, "slow", 200, `{}`),
			failedRow(jobID, "late", iothub.CodeGatewayTimeout, iothub.RowFailed),
			failedRow(jobID, "timeout", iothub.CodeGatewayTimeout, iothub.RowFailed),
			failedRow(jobID, "gone", iothub.CodeDeviceNotFound, iothub.RowFailed),
			failedRow(jobID, "canceled", iothub.CodeServerError, iothub.RowCanceled),
			failedRow(jobID, "restarted", iothub.CodeServiceUnavailable, iothub.RowFailed),
		}
	}
	f.afterCreate = func(string, []string) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, id := range []string{"ok", "fresh", "refused2", "late"} {
			f.rebootAt[id] = "2026-06-01T00:00:00Z"
		}
		f.rebootAt["numeric"] = float64(2)
	}
	c := fakeHubClient(t, f.handler(t))
	var stages []Stage
	res, err := Run(servicetest.Context(t), c, Options{
		Condition: "tags.x = 1", JobIDPrefix: "t", PollInterval: time.Millisecond, WaitTimeout: 50 * time.Millisecond,
		Progress: func(p Progress) { stages = append(stages, p.Stage) },
	})
	var dse *service.DeviceStatusError
	if !errors.As(err, &dse) || dse.Status != 409 && dse.Status != 500 {
		t.Fatalf("err = %v", err)
	}
	want := map[string]struct {
		o Outcome
		f FailureKind
	}{
		"ok": {OutcomeSucceeded, ""}, "fresh": {OutcomeSucceeded, ""}, "numeric": {OutcomeSucceeded, ""},
		"refused": {OutcomeFailed, FailureDeviceStatus}, "refused2": {OutcomeFailed, FailureDeviceStatus},
		"off": {OutcomeOffline, ""}, "slow": {OutcomeUnconfirmed, ""}, "late": {OutcomeSucceeded, ""},
		"timeout": {OutcomeFailed, FailureMethodTimeout}, "gone": {OutcomeFailed, FailureNotFound},
		"norow": {OutcomeFailed, FailureNotFound}, "canceled": {OutcomeFailed, FailureJob},
		"restarted": {OutcomeFailed, FailureJob},
	}
	prev := ""
	for _, d := range res.Devices {
		if d.DeviceID <= prev {
			t.Errorf("devices not in deviceId order: %s after %s", d.DeviceID, prev)
		}
		prev = d.DeviceID
		w := want[d.DeviceID]
		if d.Outcome != w.o || d.Failure != w.f {
			t.Errorf("%s: %s/%s (%s), want %s/%s", d.DeviceID, d.Outcome, d.Failure, d.Reason, w.o, w.f)
		}
		if d.Wave != 1 || d.JobID != "t-w1" {
			t.Errorf("%s: wave %d job %q", d.DeviceID, d.Wave, d.JobID)
		}
	}
	byID := map[string]Device{}
	for _, d := range res.Devices {
		byID[d.DeviceID] = d
	}
	if d := byID["numeric"]; d.PreviousRebootTime != "1" || d.RebootTime != "2" {
		t.Errorf("numeric rebootTime %+v", d)
	}
	if d := byID["fresh"]; d.HasPreviousTime || !d.HasRebootTime {
		t.Errorf("fresh %+v", d)
	}
	if d := byID["refused"]; d.Status != 500 || !strings.Contains(d.Reason, `{"error":"disk"}`) {
		t.Errorf("refused %+v", d)
	}
	if d := byID["off"]; d.ErrorCode != iothub.CodeDeviceNotOnline || !strings.Contains(d.Reason, "row says DeviceNotOnline") {
		t.Errorf("offline %+v", d)
	}
	if d := byID["slow"]; !strings.Contains(d.Reason, "no new rebootTime") {
		t.Errorf("slow %+v", d)
	}
	if res.Counts != (Counts{Total: 13, Succeeded: 4, Failed: 7, Offline: 1, Unconfirmed: 1}) {
		t.Errorf("counts %+v", res.Counts)
	}
	if w := res.Waves[0]; w.JobStatus != iothub.JobCompleted || w.FailureRate != 9.0/13 || w.Size != 13 {
		t.Errorf("wave %+v", w)
	}
	if stages[0] != StageBaseline || stages[1] != StageWaveStarted || stages[len(stages)-1] != StageWaveDone {
		t.Errorf("stages %v", stages)
	}
	// Confirmation queries name at most ConfirmBatch devices; once the rows
	// are read, only the devices still waiting.
	var last string
	for _, q := range f.queries {
		if strings.Contains(q, "FROM devices WHERE deviceId IN") {
			if n := len(idsOf(q)); n > ConfirmBatch {
				t.Errorf("confirmation query names %d devices", n)
			}
			last = q
		}
	}
	if got := idsOf(last[strings.Index(last, "WHERE"):]); !reflect.DeepEqual(got, []string{"restarted", "slow", "timeout"}) {
		t.Errorf("last confirmation asked for %v", got)
	}
}

func TestRunInterruptCancelsJob(t *testing.T) {
	f := &fakeJobsHub{
		rebootAt: map[string]any{"a": nil, "b": nil},
		jobs:     map[string]*iothub.JobResponse{}, conds: map[string]string{},
		rows:     func(string, []string) []iothub.DeviceJob { return nil },
		holdJobs: true,
	}
	c := fakeHubClient(t, f.handler(t))
	ctx, cancel := context.WithCancel(servicetest.Context(t))
	defer cancel()
	polls := 0
	res, err := Run(ctx, c, Options{
		Condition: "tags.x = 1", JobIDPrefix: "int", PollInterval: time.Millisecond,
		Waves: []Step{{Count: 1}, {Percent: 100}},
		Progress: func(p Progress) {
			if p.Stage == StageWavePolled {
				if polls++; polls == 3 {
					cancel()
				}
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !reflect.DeepEqual(f.cancelled, []string{"int-w1"}) {
		t.Errorf("cancelled %v", f.cancelled)
	}
	if !res.Interrupted || !res.Stopped || res.Counts != (Counts{Total: 2, Unconfirmed: 1, Skipped: 1}) {
		t.Errorf("result: interrupted %v stopped %v counts %+v", res.Interrupted, res.Stopped, res.Counts)
	}
	if res.Waves[0].JobStatus != iothub.JobCancelled || res.Devices[0].Reason != "interrupted before the reboot was confirmed" {
		t.Errorf("wave %+v device %+v", res.Waves[0], res.Devices[0])
	}
}

func TestOptionsRefused(t *testing.T) {
	var requests atomic.Int32
	c := fakeHubClient(t, func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, "no", 500)
	})
	if _, err := Run(servicetest.Context(t), c, Options{Condition: " "}); err == nil {
		t.Error("empty condition accepted")
	}
	if _, err := Run(servicetest.Context(t), c, Options{Condition: "x = 1", JobIDPrefix: "bad prefix"}); err == nil {
		t.Error("bad prefix accepted")
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests sent", n)
	}
	if p := DefaultJobIDPrefix(time.Date(2026, 11, 25, 20, 5, 45, 123456789, time.UTC)); p != "dmctl-reboot-20261125T200545123Z" {
		t.Errorf("prefix %s", p)
	}
}
