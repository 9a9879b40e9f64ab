package faults_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/faults"
	"github.com/dmctl/dmctl/service"
)

// degrade adds 200 ms ± 50 ms of latency, a 32 KB/s bandwidth limit and a
// slicer (chunks of 1..31 bytes, 50 µs apart) to both directions of p.
func degrade(t *testing.T, p *faults.Proxy) {
	t.Helper()
	for _, dir := range []string{faults.Upstream, faults.Downstream} {
		for _, tx := range []faults.Toxic{
			{Name: "latency_" + dir, Type: "latency", Stream: dir, Attributes: map[string]any{"latency": 200, "jitter": 50}},
			{Name: "bandwidth_" + dir, Type: "bandwidth", Stream: dir, Attributes: map[string]any{"rate": 32}},
			{Name: "slicer_" + dir, Type: "slicer", Stream: dir, Attributes: map[string]any{"average_size": 16, "size_variation": 15, "delay": 50}},
		} {
			if err := p.Add(tx); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// On a slow, sliced, jittery network the device connects, answers direct
// methods, reports properties and receives desired patches, and the service
// invokes, reads and writes twins: every answer is right, only slower.
func TestDegradedNetwork(t *testing.T) {
	r := newRig(t)
	degrade(t, r.dev)
	degrade(t, r.svc)
	client := r.service(t)

	start := time.Now()
	d := r.startDevice(t, "slow-1", mqtt.Config{})
	t.Logf("connected and subscribed through the degraded proxy in %v", time.Since(start).Round(time.Millisecond))

	ctx := timeout(t, 90*time.Second)
	for n := 1; n <= 3; n++ {
		probe(ctx, t, client, d.id, n)
	}

	// Reported properties: acknowledged by the hub, then visible to the
	// service.
	for n := 1; n <= 3; n++ {
		// 4 KB each: many slices, an eighth of a second of bandwidth.
		patch := fmt.Appendf(nil, `{"seq":%d,"blob":%q}`, n, strings.Repeat("x", 4096))
		if err := d.conn.Report(ctx, patch); err != nil {
			t.Fatalf("report seq %d: %v", n, err)
		}
	}
	tw, err := client.Twin(ctx, d.id)
	if err != nil {
		t.Fatalf("read twin: %v", err)
	}
	if got := tw.Properties.Reported["seq"]; got != float64(3) {
		t.Fatalf("twin reported seq = %v, want 3 (the last acknowledged patch)", got)
	}

	// Desired properties: the device applies the version the service wrote.
	for i, mode := range []string{"eco", "turbo"} {
		desired, _ := json.Marshal(map[string]string{"mode": mode})
		tw, err := client.UpdateTwin(ctx, d.id, service.TwinPatch{Desired: desired}, "*")
		if err != nil {
			t.Fatalf("update desired mode=%s: %v", mode, err)
		}
		v, ok := tw.Properties.Desired["$version"].(float64)
		if !ok {
			t.Fatalf("updated twin has no desired $version: %v", tw.Properties.Desired)
		}
		e := d.rec.WaitFor(t, fmt.Sprintf("desired event #%d with $version %v", i+1, v), 1, 30*time.Second,
			func(e device.Event) bool { return e.Kind == device.EventDesired && e.Version == int64(v) })
		if e.Version != int64(v) {
			t.Fatalf("device applied desired $version %d, want %v", e.Version, v)
		}
	}
	if n := d.rec.Count(device.EventDisconnected); n != 0 {
		t.Fatalf("the device disconnected %d times on a slow but working network, want 0", n)
	}
}
