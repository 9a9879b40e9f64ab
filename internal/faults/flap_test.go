package faults_test

import (
	"testing"
	"time"

	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/faults"
)

// Two connections reset in a row (the kept-alive one and the fresh one
// net/http opens for its own single replay): the service client's retries
// of idempotent calls must cover a dropped connection, not only 429/500/503.
func TestServiceRetriesTwinReadAcrossTwoResets(t *testing.T) {
	r := newRig(t)
	d := r.startDevice(t, "flap-1", mqtt.Config{})
	client := r.service(t)
	ctx := timeout(t, 60*time.Second)
	if _, err := client.Twin(ctx, d.id); err != nil {
		t.Fatalf("read twin on a clean path: %v", err)
	}
	if err := r.svc.Add(faults.Toxic{Name: "reset_twice", Type: faults.ResetFirstType, Stream: faults.Downstream,
		Attributes: map[string]any{"connections": 2}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Twin(ctx, d.id); err != nil {
		t.Fatalf("read twin with two connections reset: %v (an idempotent GET must be retried after a dropped connection)", err)
	}
}
