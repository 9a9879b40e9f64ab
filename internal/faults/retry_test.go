package faults_test

import (
	"errors"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/faults"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// methodsReceived counts the device's method_received events for name.
func methodsReceived(d *runningDevice, name string) int {
	return len(d.rec.Matching(func(e device.Event) bool { return e.Kind == device.EventMethodReceived && e.Method == name }))
}

// One reset of the service's connection as the hub's answer comes back: a
// twin read (idempotent) is sent again and succeeds, a direct method is not
// sent again and fails, and the device received it exactly once.
func TestServiceRetriesIdempotentCallsOnly(t *testing.T) {
	r := newRig(t)
	d := r.startDevice(t, "retry-1", mqtt.Config{})
	client := r.service(t)
	ctx := timeout(t, 60*time.Second)

	// A first call leaves a kept-alive connection for the next one.
	if _, err := client.Twin(ctx, d.id); err != nil {
		t.Fatalf("read twin on a clean path: %v", err)
	}
	resetOnce := faults.Toxic{Name: "reset_once", Type: faults.ResetFirstType, Stream: faults.Downstream,
		Attributes: map[string]any{"connections": 1}}
	if err := r.svc.Add(resetOnce); err != nil {
		t.Fatal(err)
	}
	tw, err := client.Twin(ctx, d.id)
	if err != nil {
		t.Fatalf("read twin with its answer reset once: %v (an idempotent GET must be sent again)", err)
	}
	if tw.DeviceID != d.id {
		t.Fatalf("twin read after a reset is for %q, want %q", tw.DeviceID, d.id)
	}
	if err := r.svc.Remove(ctx, resetOnce.Name); err != nil {
		t.Fatal(err)
	}

	// The method: the request reaches the hub and the device; the answer's
	// connection is reset. The client must report the failure, not replay.
	if _, err := client.Twin(ctx, d.id); err != nil { // a kept-alive connection again
		t.Fatalf("read twin on a clean path: %v", err)
	}
	resetOnce.Name = "reset_answer"
	if err := r.svc.Add(resetOnce); err != nil {
		t.Fatal(err)
	}
	wait := 10
	_, err = client.InvokeMethod(ctx, d.id, iothub.MethodRequest{MethodName: "once", Payload: []byte(`{}`), ResponseTimeoutInSeconds: &wait})
	if err == nil {
		t.Fatal("a method call whose answer was reset succeeded; want the connection error")
	}
	var ae *service.APIError
	if errors.As(err, &ae) {
		t.Fatalf("a reset answer came back as a hub error %v; want the connection error", err)
	}
	t.Logf("method call with its answer reset: %v", err)
	if err := r.svc.Remove(ctx, resetOnce.Name); err != nil {
		t.Fatal(err)
	}
	// A call after it, answered: had the first been replayed, the replay
	// would have reached the device before this one.
	probe(ctx, t, client, d.id, 1)
	if n := methodsReceived(d, "once"); n != 1 {
		t.Fatalf("the device received the reset method call %d times, want exactly 1 (sent once, never replayed)", n)
	}
}
