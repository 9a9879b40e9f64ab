package compat

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

// TestOfficialServiceSDK runs azure-iothub's registry, twin, query and error
// paths against the hub. It does not run in parallel: the unfiltered paged
// query must not see devices that other tests create meanwhile.
func TestOfficialServiceSDK(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("registry twin query errors", func(t *testing.T) {
		prefix := newID("svc")
		t.Cleanup(func() {
			if t.Failed() {
				dumpHubLog(t, prefix)
			}
		})
		r := runProc(t, ctx, "service_sdk.js checks", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
			nodeArgv("service_sdk.js", "checks", "--prefix", prefix)...)
		reportChecks(t, "service_sdk.js checks", r)
	})

	t.Run("invoke on dmctl's device: unknown method answered 404", func(t *testing.T) {
		dmctl := requireDmctl(t, "device run")
		dev := registerDevice(t, "svc-dmctl")
		d := startDmctlDevice(t, ctx, dmctl, dev.id, dev.dmctlCS(), "2s")
		defer d.stop(t, ctx)
		r := runProc(t, ctx, "service_sdk.js invoke", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
			nodeArgv("service_sdk.js", "invoke", "--device", dev.id, "--method", "compatNoSuchMethod", "--payload", `{"x":1}`)...)
		var out struct {
			OK      bool `json:"ok"`
			Status  int  `json:"status"`
			Payload struct {
				Method string `json:"method"`
			} `json:"payload"`
		}
		if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK {
			t.Fatalf("invoke failed (%v):\n%s", err, r)
		}
		if out.Status != 404 || out.Payload.Method != "compatNoSuchMethod" {
			t.Errorf("result = status %d payload %+v, want 404 naming the method", out.Status, out.Payload)
		}
	})
}

// reportChecks turns the {"ok","checks":[...]} output of service_sdk.js into
// one test error per failed check (and a log line per passed one).
func reportChecks(t *testing.T, name string, r runResult) {
	t.Helper()
	var out struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Name   string          `json:"name"`
			OK     bool            `json:"ok"`
			Detail json.RawMessage `json:"detail"`
			Error  json.RawMessage `json:"error"`
		} `json:"checks"`
	}
	if err := r.lastJSON(&out); err != nil {
		t.Fatalf("%s printed no result (%v):\n%s", name, err, r)
	}
	if len(out.Checks) == 0 {
		t.Fatalf("%s ran no checks:\n%s", name, r)
	}
	for _, c := range out.Checks {
		if c.OK {
			t.Logf("ok   %s %.300s", c.Name, c.Detail)
		} else {
			t.Errorf("FAIL %s: %s", c.Name, c.Error)
		}
	}
	if out.OK != (r.code == 0) {
		t.Errorf("%s exit code %d does not match ok=%v", name, r.code, out.OK)
	}
	if t.Failed() {
		t.Logf("%s stderr:\n%s", name, r.stderr)
	}
}

// TestOfficialServiceJobs runs azure-iothub's JobClient against the hub with
// an official-SDK device as the target.
func TestOfficialServiceJobs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdk-jobs")
	p := startProc(t, ctx, "device_sdk.js jobs target", []string{"DEVICE_CONNECTION_STRING=" + dev.nodeCS()},
		nodeArgv("device_sdk.js", "--transport", "mqtt")...)
	if _, err := p.waitEvent(ctx, "ready", nil); err != nil {
		t.Fatalf("the official device never got ready: %v", err)
	}
	prefix := newID("job")
	r := runProc(t, ctx, "service_sdk.js jobs", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("service_sdk.js", "jobs", "--device", dev.id, "--prefix", prefix)...)
	reportChecks(t, "service_sdk.js jobs", r)

	// What the device saw: the job's method call and desired patch.
	if _, err := p.waitEvent(ctx, "method", func(m map[string]any) bool {
		payload, _ := m["payload"].(map[string]any)
		return m["name"] == "echo" && payload["job"] == prefix+"-method"
	}); err != nil {
		t.Errorf("the method job never called the device: %v", err)
	}
	if _, err := p.waitEvent(ctx, "desired", func(m map[string]any) bool {
		patch, _ := m["patch"].(map[string]any)
		return patch["fromJob"] == prefix+"-twin"
	}); err != nil {
		t.Errorf("the twin-update job's desired patch never reached the device: %v", err)
	}
	p.closeStdin()
	if code, err := p.wait(ctx); err != nil || code != 0 {
		t.Errorf("device script exit code %d (%v), want 0", code, err)
	}
}
