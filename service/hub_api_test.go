package service_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/internal/servicetest"
)

func TestHubJobsAPI(t *testing.T) {
	h, c := servicetest.HubClient(t)
	ctx := servicetest.Context(t)
	h.CreateDevice(t, "j1")
	h.CreateDevice(t, "j2")

	// A job scheduled an hour ahead can be listed and cancelled.
	later, err := c.CreateJob(ctx, service.JobRequest{
		JobID:          "later",
		Type:           iothub.JobTypeUpdateTwin,
		QueryCondition: "deviceId IN ['j1', 'j2']",
		UpdateTwin:     &service.TwinPatch{Tags: json.RawMessage(`{"wave":1}`)},
		StartTime:      time.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	if later.Status != iothub.JobScheduled || later.Type != iothub.JobTypeUpdateTwin {
		t.Errorf("created %+v", later)
	}
	if _, err := c.CreateJob(ctx, service.JobRequest{JobID: "later", Type: iothub.JobTypeUpdateTwin, QueryCondition: "deviceId = 'j1'",
		UpdateTwin: &service.TwinPatch{Tags: json.RawMessage(`{"x":1}`)}}); !errors.Is(err, service.ErrJobAlreadyExists) {
		t.Errorf("duplicate: %v", err)
	}

	// A twin job that runs now completes on both devices.
	now, err := c.CreateJob(ctx, service.JobRequest{
		JobID: "now", Type: iothub.JobTypeUpdateTwin, QueryCondition: "deviceId IN ['j1', 'j2']",
		UpdateTwin: &service.TwinPatch{Desired: json.RawMessage(`{"interval":7}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	for !iothub.JobTerminal(now.Status) {
		select {
		case <-ctx.Done():
			t.Fatalf("job %q still %s at the test's deadline: %v", now.JobID, now.Status, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if now, err = c.Job(ctx, "now"); err != nil {
			t.Fatal(err)
		}
	}
	if now.Status != iothub.JobCompleted || now.Stats() != (iothub.JobStatistics{DeviceCount: 2, SucceededCount: 2}) {
		t.Errorf("finished job %+v %+v", now, now.Stats())
	}
	if tw, err := c.Twin(ctx, "j2"); err != nil || fmt.Sprint(tw.Properties.Desired["interval"]) != "7" {
		t.Errorf("twin after job: %v %v", tw, err)
	}

	all, err := c.Jobs(ctx, service.JobFilter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("list: %v %v", all, err)
	}
	sched, err := c.Jobs(ctx, service.JobFilter{Type: iothub.JobTypeUpdateTwin, Status: iothub.JobScheduled})
	if err != nil || len(sched) != 1 || sched[0].JobID != "later" {
		t.Errorf("list scheduled: %+v %v", sched, err)
	}
	cancelled, err := c.CancelJob(ctx, "later")
	if err != nil || cancelled.Status != iothub.JobCancelled {
		t.Fatalf("cancel: %+v %v", cancelled, err)
	}
	if none, err := c.Jobs(ctx, service.JobFilter{Status: iothub.JobScheduled}); err != nil || len(none) != 0 {
		t.Errorf("scheduled after cancel: %+v %v", none, err)
	}
	if _, err := c.Job(ctx, "nope"); !errors.Is(err, service.ErrJobNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	if _, err := c.CancelJob(ctx, "nope"); !errors.Is(err, service.ErrJobNotFound) {
		t.Errorf("cancel unknown job: %v", err)
	}
}

func TestHubCreateDevices(t *testing.T) {
	_, c := servicetest.HubClient(t)
	ctx := servicetest.Context(t)
	if _, err := c.CreateDevice(ctx, "bulk-0003"); err != nil {
		t.Fatal(err)
	}
	ids := service.SequentialIDs("bulk", 1, 12)
	res := c.CreateDevices(ctx, ids, 4)
	var failed []string
	for i, r := range res {
		if r.DeviceID != ids[i] {
			t.Errorf("result %d is %s, want %s", i, r.DeviceID, ids[i])
		}
		if r.Err != nil {
			failed = append(failed, r.DeviceID)
			if !errors.Is(r.Err, service.ErrDeviceAlreadyExists) {
				t.Errorf("%s: %v", r.DeviceID, r.Err)
			}
			continue
		}
		if _, err := c.DeviceConnectionString(r.Device, service.PrimaryKey); err != nil {
			t.Errorf("%s: %v", r.DeviceID, err)
		}
	}
	if !slices.Equal(failed, []string{"bulk-0003"}) {
		t.Errorf("failed %v", failed)
	}
	ds, err := c.Devices(ctx, 0)
	if err != nil || len(ds) != 12 {
		t.Errorf("registry holds %d devices, %v", len(ds), err)
	}
}
