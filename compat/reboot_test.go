package compat

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dmctlDevice is a running `dmctl device run`.
type dmctlDevice struct{ *proc }

// startDmctlDevice runs `dmctl device run` for the device with connection
// string cs and waits until it says it is connected and the hub agrees.
func startDmctlDevice(t *testing.T, ctx context.Context, dmctl, id, cs, rebootDelay string, extra ...string) *dmctlDevice {
	t.Helper()
	argv := append([]string{dmctl, "device", "run", "--connection-string", cs, "--reboot-delay", rebootDelay, "--ca-file", env.caFile}, extra...)
	p := startProc(t, ctx, "dmctl device run "+id, []string{"DMCTL_LOG_LEVEL=debug", "DMCTL_LOG_FORMAT=json"}, argv...)
	if _, err := p.waitLine(ctx, "the connected line", func(l string) bool { return strings.TrimSpace(l) != "" }); err != nil {
		t.Fatalf("dmctl device run never printed its connected line: %v", err)
	}
	if err := waitConnected(ctx, id, true); err != nil {
		t.Fatalf("dmctl device run said it is connected, the hub disagrees: %v", err)
	}
	return &dmctlDevice{p}
}

// stop ends the device with SIGTERM and checks it exits 0.
func (d *dmctlDevice) stop(t *testing.T, ctx context.Context) {
	t.Helper()
	if d.hasExited() {
		t.Errorf("dmctl device run exited before it was stopped:\n%s", d.stderrText())
		return
	}
	if err := d.signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM to dmctl device run: %v", err)
		return
	}
	code, err := d.wait(ctx)
	if err != nil || code != 0 {
		t.Errorf("dmctl device run after SIGTERM: exit code %d (%v), want 0", code, err)
	}
}

// rebootJSON is `dmctl service reboot -o json`.
type rebootJSON struct {
	Status             int             `json:"status"`
	Payload            json.RawMessage `json:"payload"`
	RebootTime         *string         `json:"rebootTime"`
	PreviousRebootTime *string         `json:"previousRebootTime"`
	Confirmed          *bool           `json:"confirmed"`
}

// dmctlReboot runs `dmctl service reboot --device id -o json` against the hub.
func dmctlReboot(t *testing.T, ctx context.Context, dmctl, id string) (runResult, rebootJSON) {
	t.Helper()
	r := runProc(t, ctx, "dmctl service reboot "+id, []string{"DMCTL_LOG_LEVEL=debug"},
		dmctl, "service", "reboot", "--device", id, "-o", "json", "--connection-string", env.dmctlServiceCS, "--ca-file", env.caFile)
	var out rebootJSON
	if r.code == 0 {
		if err := r.lastJSON(&out); err != nil {
			t.Fatalf("dmctl service reboot -o json: %v\n%s", err, r)
		}
	}
	return r, out
}

// checkConfirmed checks a successful `dmctl service reboot -o json` result.
func checkConfirmed(t *testing.T, r runResult, out rebootJSON) time.Time {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("dmctl service reboot: %s", r)
	}
	if out.Status != 200 {
		t.Errorf("status = %d, want 200", out.Status)
	}
	if out.Confirmed == nil || !*out.Confirmed {
		t.Errorf("confirmed = %v, want true", out.Confirmed)
	}
	if out.RebootTime == nil {
		t.Fatalf("no rebootTime in %s", r.stdout)
	}
	rt, err := time.Parse(time.RFC3339Nano, *out.RebootTime)
	if err != nil {
		t.Errorf("rebootTime %q is not RFC 3339: %v", *out.RebootTime, err)
	}
	if out.PreviousRebootTime != nil && *out.PreviousRebootTime == *out.RebootTime {
		t.Errorf("rebootTime %q equals previousRebootTime", *out.RebootTime)
	}
	return rt
}

// sameInstant reports whether two RFC 3339 strings name the same instant.
func sameInstant(a, b string) bool {
	ta, err1 := time.Parse(time.RFC3339Nano, a)
	tb, err2 := time.Parse(time.RFC3339Nano, b)
	return err1 == nil && err2 == nil && ta.Equal(tb)
}

// TestOfficialServiceRebootsDmctlDevice: azure-iothub invokes rebootDevice on
// `dmctl device run` and sees the new rebootTime in the twin.
func TestOfficialServiceRebootsDmctlDevice(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "device run")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdksvc-dmctldev")
	d := startDmctlDevice(t, ctx, dmctl, dev.id, dev.dmctlCS(), "2s")

	r := runProc(t, ctx, "reboot_with_sdk_service.js", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("reboot_with_sdk_service.js", "--device", dev.id)...)
	var out struct {
		OK                 bool            `json:"ok"`
		Status             int             `json:"status"`
		Payload            json.RawMessage `json:"payload"`
		PreviousRebootTime *string         `json:"previousRebootTime"`
		RebootTime         string          `json:"rebootTime"`
	}
	if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK {
		t.Fatalf("reboot through azure-iothub failed (%v):\n%s", err, r)
	}
	if out.Status != 200 {
		t.Errorf("rebootDevice status = %d, want 200 (payload %s)", out.Status, out.Payload)
	}
	if _, err := time.Parse(time.RFC3339Nano, out.RebootTime); err != nil {
		t.Errorf("reported rebootTime %q is not RFC 3339: %v", out.RebootTime, err)
	}
	if out.PreviousRebootTime != nil && *out.PreviousRebootTime == out.RebootTime {
		t.Errorf("rebootTime did not change: %q", out.RebootTime)
	}
	// The device came back after its reboot and stays connected.
	if err := waitConnected(ctx, dev.id, true); err != nil {
		t.Error(err)
	}
	d.stop(t, ctx)
}

// TestDmctlServiceRebootsOfficialDevice: `dmctl service reboot` confirms the
// reboot of an official-SDK device that reports rebootTime the way the
// device-management tutorial does.
func TestDmctlServiceRebootsOfficialDevice(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "service reboot")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "dmctlsvc-sdkdev")
	p := startProc(t, ctx, "device_sdk.js reboot", []string{"DEVICE_CONNECTION_STRING=" + dev.nodeCS()},
		nodeArgv("device_sdk.js", "--transport", "mqtt", "--mode", "reboot")...)
	if _, err := p.waitEvent(ctx, "ready", nil); err != nil {
		t.Fatalf("the official device never got ready: %v", err)
	}

	r, out := dmctlReboot(t, ctx, dmctl, dev.id)
	checkConfirmed(t, r, out)
	if !jsonEqual(out.Payload, []byte(`{"message":"rebooting"}`)) {
		t.Errorf("payload = %s, want the device's {\"message\":\"rebooting\"}", out.Payload)
	}
	ev, err := p.waitEvent(ctx, "rebooted", nil)
	if err != nil {
		t.Fatalf("the device never reported its reboot: %v", err)
	}
	if rt, _ := ev["rebootTime"].(string); out.RebootTime != nil && !sameInstant(rt, *out.RebootTime) {
		t.Errorf("dmctl printed rebootTime %q, the device reported %q", *out.RebootTime, rt)
	}
	p.closeStdin()
	if code, err := p.wait(ctx); err != nil || code != 0 {
		t.Errorf("device script exit code %d (%v), want 0", code, err)
	}
}

// TestDmctlServiceAndDeviceThroughHub: dmctl on both ends through the hub's
// MQTT/HTTPS port 8883, and the exit codes scripts rely on.
func TestDmctlServiceAndDeviceThroughHub(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "device run", "service reboot")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel) // the subtests run in parallel, after this function returns

	for _, tc := range []struct {
		name  string
		cs    func(registeredDevice) string
		extra []string
	}{
		{"reboot confirmed over mqtt", registeredDevice.dmctlCS, nil},
		// No port in HostName: MQTT over WebSockets goes to 443.
		{"reboot confirmed over mqtt-ws on 443", registeredDevice.nodeCS, []string{"--transport", "mqtt-ws"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dev := registerDevice(t, "dmctl-both")
			d := startDmctlDevice(t, ctx, dmctl, dev.id, tc.cs(dev), "2s", tc.extra...)
			before := getTwin(t, ctx, dev.id).Properties.Reported["rebootTime"]
			r, out := dmctlReboot(t, ctx, dmctl, dev.id)
			checkConfirmed(t, r, out)
			if out.PreviousRebootTime != nil && before != nil && !sameInstant(*out.PreviousRebootTime, before.(string)) {
				t.Errorf("previousRebootTime = %q, the twin had %v before the reboot", *out.PreviousRebootTime, before)
			}
			after, _ := getTwin(t, ctx, dev.id).Properties.Reported["rebootTime"].(string)
			if out.RebootTime != nil && !sameInstant(after, *out.RebootTime) {
				t.Errorf("dmctl printed rebootTime %q, the twin has %q", *out.RebootTime, after)
			}
			if err := waitConnected(ctx, dev.id, true); err != nil {
				t.Error(err)
			}
			d.stop(t, ctx)
		})
	}

	t.Run("offline device exits 5", func(t *testing.T) {
		t.Parallel()
		dev := registerDevice(t, "dmctl-offline")
		r, _ := dmctlReboot(t, ctx, dmctl, dev.id)
		if r.code != 5 {
			t.Errorf("dmctl service reboot on an offline device: %s\nwant exit code 5", r)
		}
	})

	t.Run("unknown device exits 4", func(t *testing.T) {
		t.Parallel()
		r, _ := dmctlReboot(t, ctx, dmctl, newID("dmctl-nosuch"))
		if r.code != 4 {
			t.Errorf("dmctl service reboot on an unknown device: %s\nwant exit code 4", r)
		}
	})
}
