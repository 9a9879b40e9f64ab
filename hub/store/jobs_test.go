package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

func testJob(id string, created time.Time) iothub.JobResponse {
	return iothub.JobResponse{
		JobID: id, QueryCondition: "deviceId = 'd1'", CreatedTime: created, StartTime: created,
		MaxExecutionTimeInSeconds: 3600, Type: iothub.JobTypeDeviceMethod, Status: iothub.JobQueued,
		CloudToDeviceMethod: &iothub.JobMethod{MethodName: "reboot", Payload: json.RawMessage(`{"a":1}`), ResponseTimeoutInSeconds: 30},
	}
}

func TestJobsPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hub.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if jobs, err := s.Jobs(); err != nil || len(jobs) != 0 {
		t.Fatalf("Jobs on a new store = %v, %v", jobs, err)
	}
	if _, err := s.Job("x"); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("iothub.JobResponse(x): %v", err)
	}
	if rows, err := s.JobRows("x"); err != nil || len(rows) != 0 {
		t.Errorf("JobRows(x) = %v, %v", rows, err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Created out of id order: Jobs lists oldest first.
	for i, id := range []string{"b", "a", "c"} {
		if err := s.CreateJob(testJob(id, t0.Add(time.Duration(i)*time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateJob(testJob("a", t0)); !errors.Is(err, ErrJobExists) {
		t.Errorf("duplicate: %v", err)
	}
	var rows []iothub.DeviceJob
	for i := range 1100 {
		rows = append(rows, iothub.DeviceJob{DeviceID: fmt.Sprintf("d%04d", i), JobID: "a", JobType: iothub.JobTypeDeviceMethod, Status: iothub.RowPending})
	}
	j := testJob("a", t0.Add(time.Minute))
	j.Status = iothub.JobRunning
	j.DeviceJobStatistics.Add(iothub.RowPending, len(rows))
	if err := s.WriteJob(&j, rows); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteJob(nil, []iothub.DeviceJob{{DeviceID: "d0001", JobID: "b", Status: iothub.RowCompleted}}); err != nil {
		t.Fatal(err)
	}
	ghost := testJob("ghost", t0)
	if err := s.WriteJob(&ghost, nil); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("WriteJob of an unknown job: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(testJob("z", t0)); !errors.Is(err, ErrClosed) {
		t.Errorf("CreateJob after Close: %v", err)
	}

	s, err = Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	jobs, err := s.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.JobID)
	}
	if strings.Join(ids, ",") != "b,a,c" {
		t.Errorf("jobs order = %v", ids)
	}
	got, err := s.Job("a")
	if err != nil || got.Status != iothub.JobRunning || got.DeviceJobStatistics.PendingCount != 1100 {
		t.Errorf("job a = %+v, %v", got, err)
	}
	ar, err := s.JobRows("a")
	if err != nil || len(ar) != 1100 || ar[0].DeviceID != "d0000" || ar[1099].DeviceID != "d1099" {
		t.Fatalf("rows of a: %d, %v", len(ar), err)
	}
	var all []string
	if err := s.ForEachJobRow(func(r iothub.DeviceJob) bool {
		all = append(all, r.JobID+"/"+r.DeviceID)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(all) != 1101 || all[0] != "a/d0000" || all[1099] != "a/d1099" || all[1100] != "b/d0001" {
		t.Errorf("ForEachJobRow: %d rows, first %v last %v", len(all), all[0], all[len(all)-1])
	}
	n := 0
	_ = s.ForEachJobRow(func(iothub.DeviceJob) bool { n++; return n < 600 })
	if n != 600 {
		t.Errorf("ForEachJobRow did not stop: %d", n)
	}
}

func TestValidateTwinPatch(t *testing.T) {
	ok := iothub.Twin{Tags: map[string]any{"a": "b"}, Properties: iothub.TwinProperties{Desired: map[string]any{"x": json.Number("1"), "$version": 3}}}
	if err := ValidateTwinPatch(ok); err != nil {
		t.Error(err)
	}
	bad := iothub.Twin{Properties: iothub.TwinProperties{Desired: map[string]any{"a b": 1}}}
	var ve *ValidationError
	if err := ValidateTwinPatch(bad); !errors.As(err, &ve) {
		t.Errorf("bad key: %v", err)
	}
	big := iothub.Twin{Tags: map[string]any{"a": strings.Repeat("x", 4000), "b": strings.Repeat("x", 4000), "c": strings.Repeat("x", 1000)}}
	if err := ValidateTwinPatch(big); !errors.As(err, &ve) {
		t.Errorf("oversized tags: %v", err)
	}
}
