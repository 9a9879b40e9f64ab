package compat

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// registerModule creates a module with hub-generated keys straight in the
// hub's store and returns its connection string without a port (as the
// official SDKs take it) and its primary key.
func registerModule(t *testing.T, deviceID, moduleID string) (nodeCS, key string) {
	t.Helper()
	m, err := env.hub.Store().CreateModule(iothub.Module{DeviceID: deviceID, ModuleID: moduleID,
		Authentication: &iothub.Authentication{Type: iothub.AuthSAS, SymmetricKey: &iothub.SymmetricKey{}}})
	if err != nil {
		t.Fatalf("registering module %s/%s: %v", deviceID, moduleID, err)
	}
	if m.Authentication == nil || m.Authentication.SymmetricKey == nil || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("registering module %s/%s: the store generated no primary key", deviceID, moduleID)
	}
	key = m.Authentication.SymmetricKey.PrimaryKey
	return "HostName=localhost;DeviceId=" + deviceID + ";ModuleId=" + moduleID + ";SharedAccessKey=" + key, key
}

// waitReported waits until the twin at path (/twins/{id} or
// /twins/{id}/modules/{mid}) has the reported property name and returns it.
func waitReported(ctx context.Context, path, name string) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, waitStep)
	defer cancel()
	for {
		status, body, err := rest(ctx, "GET", path, nil, nil)
		if err == nil && status == http.StatusOK {
			var tw iothub.Twin
			if err := json.Unmarshal(body, &tw); err == nil {
				if v, ok := tw.Properties.Reported[name]; ok {
					return v, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("GET %s never showed reported %s (last: HTTP %d %s %v): %w", path, name, status, body, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func moduleTwinPath(deviceID, moduleID string) string {
	return "/twins/" + url.PathEscape(deviceID) + "/modules/" + url.PathEscape(moduleID)
}

// TestDmctlServiceWithOfficialModule: dmctl service invoke --module and
// service twin show|update --module against the official ModuleClient.
func TestDmctlServiceWithOfficialModule(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "service invoke", "service twin show", "service twin update")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "dmctl-svc-mod")
	const moduleID = "sdkmodule"
	cs, _ := registerModule(t, dev.id, moduleID)
	p := startProc(t, ctx, "module_sdk.js", []string{"MODULE_CONNECTION_STRING=" + cs}, nodeArgv("module_sdk.js", "--report", "9")...)
	if _, err := p.waitEvent(ctx, "ready", nil); err != nil {
		t.Fatalf("the official ModuleClient never got ready: %v", err)
	}
	svc := []string{"--connection-string", env.dmctlServiceCS, "--ca-file", env.caFile}

	t.Run("service invoke --module", func(t *testing.T) {
		r := runProc(t, ctx, "dmctl service invoke --module", nil, append([]string{dmctl, "service", "invoke", "--device", dev.id,
			"--module", moduleID, "--method", "echo", "--payload", `{"from":"dmctl"}`, "-o", "json"}, svc...)...)
		var out struct {
			ModuleID string          `json:"moduleId"`
			Status   int             `json:"status"`
			Payload  json.RawMessage `json:"payload"`
		}
		if err := r.lastJSON(&out); err != nil || r.code != 0 {
			t.Fatalf("dmctl service invoke --module (%v): %s", err, r)
		}
		want := fmt.Sprintf(`{"echo":{"from":"dmctl"},"module":%q}`, moduleID)
		if out.Status != 200 || out.ModuleID != moduleID || !jsonEqual(out.Payload, []byte(want)) {
			t.Errorf("dmctl printed module %q status %d payload %s, want %s 200 %s", out.ModuleID, out.Status, out.Payload, moduleID, want)
		}
	})

	t.Run("service twin show --module", func(t *testing.T) {
		r := runProc(t, ctx, "dmctl service twin show --module", nil, append([]string{dmctl, "service", "twin", "show", "--device", dev.id,
			"--module", moduleID, "-o", "json"}, svc...)...)
		var tw iothub.Twin
		if err := r.lastJSON(&tw); err != nil || r.code != 0 {
			t.Fatalf("dmctl service twin show --module (%v): %s", err, r)
		}
		if tw.ModuleID != moduleID || tw.Properties.Reported["moduleCheck"] != 9.0 {
			t.Errorf("dmctl showed twin of module %q with reported %v, want %s with moduleCheck=9", tw.ModuleID, tw.Properties.Reported, moduleID)
		}
	})

	t.Run("service twin update --module reaches the ModuleClient", func(t *testing.T) {
		r := runProc(t, ctx, "dmctl service twin update --module", nil, append([]string{dmctl, "service", "twin", "update", "--device", dev.id,
			"--module", moduleID, "--desired", `{"fromDmctl":"yes"}`}, svc...)...)
		if r.code != 0 {
			t.Fatalf("dmctl service twin update --module: %s", r)
		}
		if _, err := p.waitEvent(ctx, "desired", func(m map[string]any) bool {
			patch, _ := m["patch"].(map[string]any)
			return patch["fromDmctl"] == "yes"
		}); err != nil {
			t.Errorf("dmctl's desired patch never reached the ModuleClient: %v", err)
		}
	})

	p.closeStdin()
	if code, err := p.wait(ctx); err != nil || code != 0 {
		t.Errorf("module script exit code %d (%v), want 0", code, err)
	}
}

// TestOfficialServiceWithDmctlModule: azure-iothub invokes methods on
// dmctl device run connected as a module.
func TestOfficialServiceWithDmctlModule(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "device run")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdk-svc-dmctlmod")
	const moduleID = "dmctlmodule"
	_, key := registerModule(t, dev.id, moduleID)
	cs := "HostName=localhost:8883;DeviceId=" + dev.id + ";ModuleId=" + moduleID + ";SharedAccessKey=" + key
	d := startDmctlDevice(t, ctx, dmctl, store.ModuleKey(dev.id, moduleID), cs, "1s")
	defer d.stop(t, ctx)
	if env.hub.Connected(dev.id) {
		t.Errorf("the hub shows device %s connected; only its module is", dev.id)
	}
	svcEnv := []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS}

	var out struct {
		OK      bool            `json:"ok"`
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	r := runProc(t, ctx, "service_sdk.js invoke --module rebootDevice", svcEnv,
		nodeArgv("service_sdk.js", "invoke", "--device", dev.id, "--module", moduleID, "--method", "rebootDevice", "--payload", `{}`)...)
	if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK || out.Status != 200 {
		t.Fatalf("rebootDevice on dmctl's module (%v), want status 200:\n%s", err, r)
	}
	if _, err := waitReported(ctx, moduleTwinPath(dev.id, moduleID), "rebootTime"); err != nil {
		t.Errorf("dmctl's module never reported its rebootTime to the module twin: %v", err)
	}
	if _, ok := getTwin(t, ctx, dev.id).Properties.Reported["rebootTime"]; ok {
		t.Errorf("the module's rebootTime landed in the device twin")
	}

	r = runProc(t, ctx, "service_sdk.js invoke --module unknown", svcEnv,
		nodeArgv("service_sdk.js", "invoke", "--device", dev.id, "--module", moduleID, "--method", "compatNoSuchMethod", "--payload", `{}`)...)
	if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK || out.Status != 404 {
		t.Errorf("an unknown method on dmctl's module (%v), want status 404:\n%s", err, r)
	}
}

// TestOfficialServiceWithDmctlX509Device: dmctl device run logs in with a
// self-signed certificate (x509=true, --cert, --key) and a model id, and
// azure-iothub reboots it.
func TestOfficialServiceWithDmctlX509Device(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "device run")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := newID("dmctl-x509")
	c := newTestCert(t, t.TempDir(), id, certOpts{cn: id})
	registerX509Device(t, id, c.SHA1(), "")
	const modelID = "dtmi:dmctl:compat:x509;1"
	d := startDmctlDevice(t, ctx, dmctl, id, "HostName=localhost:8883;DeviceId="+id+";x509=true", "1s",
		"--cert", c.certFile, "--key", c.keyFile, "--model-id", modelID)
	defer d.stop(t, ctx)

	r := runProc(t, ctx, "service_sdk.js invoke rebootDevice", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("service_sdk.js", "invoke", "--device", id, "--method", "rebootDevice", "--payload", `{}`)...)
	var out struct {
		OK     bool `json:"ok"`
		Status int  `json:"status"`
	}
	if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK || out.Status != 200 {
		t.Fatalf("rebootDevice on dmctl's X.509 device (%v), want status 200:\n%s", err, r)
	}
	if _, err := waitReported(ctx, "/twins/"+url.PathEscape(id), "rebootTime"); err != nil {
		t.Errorf("dmctl's X.509 device never reported its rebootTime after reconnecting: %v", err)
	}
	if tw := getTwin(t, ctx, id); tw.ModelID != modelID {
		t.Errorf("twin modelId = %q, want %q (dmctl device run --model-id)", tw.ModelID, modelID)
	}
}
