package faults_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/cli"
)

// Exit codes of the README's table that these tests expect.
const (
	exitOK      = 0
	exitOffline = 5 // device or module offline (not connected)
)

// reboot runs `dmctl service reboot --device id` in-process with the
// service connection string through the service proxy, and returns its
// exit code and stderr.
func (r *rig) reboot(ctx context.Context, t *testing.T, id string) (int, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := cli.Main(ctx, []string{"dmctl", "service", "reboot",
		"--connection-string", r.serviceCS(t).Secret(),
		"--ca-file", r.hub.CAFile(),
		"--device", id,
		"--response-timeout", "5s",
		"--wait-timeout", "30s",
		"--poll-interval", "250ms",
	}, strings.NewReader(""), &stdout, &stderr)
	return code, stderr.String()
}

// A 5 s partition (every byte dropped both ways, connections left open):
// the devices notice through the MQTT keep-alive, retry while it lasts and
// are back within their backoff cap once it ends; `service reboot` during
// the partition exits 5 (device offline) and succeeds after it.
func TestPartition(t *testing.T) {
	r := newRig(t)
	const (
		keepAlive      = 2 * time.Second
		maxBackoff     = 3 * time.Second // --max-backoff
		connectTimeout = 2 * time.Second
		partition      = 5 * time.Second
	)
	cfg := mqtt.Config{KeepAlive: keepAlive, MaxBackoff: maxBackoff, ConnectTimeout: connectTimeout}
	var devs []*runningDevice
	for i := 1; i <= 3; i++ {
		devs = append(devs, r.startDevice(t, fmt.Sprintf("part-%d", i), cfg))
	}

	start := time.Now()
	if err := r.dev.Partition(); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		e := d.rec.Wait(t, device.EventDisconnected, 1, 4*keepAlive)
		t.Logf("%s: lost its connection %v into the partition (%s)", d.id, e.Time.Sub(start).Round(time.Millisecond), e.Reason)
		ctx := timeout(t, 4*keepAlive)
		if err := r.hub.WaitConnected(ctx, d.id, false); err != nil {
			t.Fatalf("the hub still had %s connected %v into the partition", d.id, time.Since(start).Round(time.Millisecond))
		}
	}

	code, stderr := r.reboot(timeout(t, 30*time.Second), t, devs[0].id)
	if code != exitOffline {
		t.Fatalf("service reboot during the partition: exit %d, want %d (device offline); stderr:\n%s", code, exitOffline, stderr)
	}
	if time.Since(start) >= partition {
		t.Fatalf("the partition was meant to last %v, but the checks inside it took %v", partition, time.Since(start))
	}
	time.Sleep(partition - time.Since(start)) // the rest of the partition
	if err := r.dev.Heal(timeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()

	// An attempt under way when the partition ends lost its TLS hello and
	// waits out its connect timeout; then the next one comes at most
	// maxBackoff later. Generous slack for a loaded machine.
	bound := connectTimeout + maxBackoff + 5*time.Second
	for _, d := range devs {
		e := d.rec.Wait(t, device.EventConnected, 2, bound+5*time.Second)
		back := e.Time.Sub(healed)
		t.Logf("%s: back %v after the partition ended (%d failed attempts during it)",
			d.id, back.Round(time.Millisecond), d.rec.Count(device.EventConnectFailed))
		if back > bound {
			t.Errorf("%s reconnected %v after the partition, more than connect timeout + max backoff (%v) + 5 s", d.id, back, connectTimeout+maxBackoff)
		}
		d.rec.Wait(t, device.EventSubscribed, 2, 10*time.Second)
	}

	code, stderr = r.reboot(timeout(t, 60*time.Second), t, devs[0].id)
	if code != exitOK {
		t.Fatalf("service reboot after the partition: exit %d, want 0; stderr:\n%s", code, stderr)
	}
	devs[0].rec.Wait(t, device.EventRebooted, 1, 10*time.Second)
}
