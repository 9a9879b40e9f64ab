package compat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// TestOfficialModules: azure-iothub manages module identities and module
// twins, and invokes a method on the official ModuleClient, which reports
// properties and receives desired ones.
func TestOfficialModules(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdk-mod")
	prefix := newID("mod")
	svcEnv := []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS}

	r := runProc(t, ctx, "registry_sdk.js modules", svcEnv,
		nodeArgv("registry_sdk.js", "modules", "--device", dev.id, "--prefix", prefix)...)
	reportChecks(t, "registry_sdk.js modules", r)
	if t.Failed() {
		t.FailNow()
	}

	// The module the script left behind, as the hub stores it.
	moduleID := prefix + "-a"
	m, err := env.hub.Store().Module(dev.id, moduleID)
	if err != nil {
		t.Fatalf("module %s/%s after Registry.addModule: %v", dev.id, moduleID, err)
	}
	if m.Authentication == nil || m.Authentication.SymmetricKey == nil || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("module %s/%s has no primary key in the store", dev.id, moduleID)
	}
	cs := "HostName=localhost;DeviceId=" + dev.id + ";ModuleId=" + moduleID + ";SharedAccessKey=" + m.Authentication.SymmetricKey.PrimaryKey

	const report = 17
	p := startProc(t, ctx, "module_sdk.js", []string{"MODULE_CONNECTION_STRING=" + cs},
		nodeArgv("module_sdk.js", "--report", fmt.Sprint(report))...)
	ready, err := p.waitEvent(ctx, "ready", nil)
	if err != nil {
		t.Fatalf("the official ModuleClient never got ready (connect, subscribe, twin GET, reported PATCH): %v", err)
	}
	if desired, _ := ready["desired"].(map[string]any); desired["moduleDesired"] == nil {
		t.Errorf("the module's twin read lacks the desired property set by updateModuleTwin: %v", ready["desired"])
	}
	key := store.ModuleKey(dev.id, moduleID)
	if err := waitConnected(ctx, key, true); err != nil {
		t.Fatal(err)
	}
	if env.hub.Connected(dev.id) {
		t.Errorf("the hub shows device %s connected; only its module is", dev.id)
	}

	// The module twin as a plain REST client sees it.
	status, body, err := rest(ctx, "GET", moduleTwinPath(dev.id, moduleID), nil, nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET module twin: HTTP %d %s %v", status, body, err)
	}
	var tw iothub.Twin
	if err := json.Unmarshal(body, &tw); err != nil {
		t.Fatalf("GET module twin: %v in %s", err, body)
	}
	if tw.ModuleID != moduleID || tw.Properties.Reported["moduleCheck"] != float64(report) {
		t.Errorf("module twin of %q has reported %v, want %s with moduleCheck=%d", tw.ModuleID, tw.Properties.Reported, moduleID, report)
	}

	run := newID("run")
	r = runProc(t, ctx, "registry_sdk.js module-live", svcEnv,
		nodeArgv("registry_sdk.js", "module-live", "--device", dev.id, "--module", moduleID, "--report", fmt.Sprint(report), "--run", run)...)
	reportChecks(t, "registry_sdk.js module-live", r)

	if _, err := p.waitEvent(ctx, "method", func(m map[string]any) bool {
		payload, _ := m["payload"].(map[string]any)
		return m["name"] == "echo" && payload["run"] == run
	}); err != nil {
		t.Errorf("the ModuleClient never saw the service's echo call: %v", err)
	}
	if _, err := p.waitEvent(ctx, "desired", func(m map[string]any) bool {
		patch, _ := m["patch"].(map[string]any)
		return patch["fromService"] == run
	}); err != nil {
		t.Errorf("updateModuleTwin's desired patch never reached the ModuleClient: %v", err)
	}

	p.closeStdin()
	if code, err := p.wait(ctx); err != nil || code != 0 {
		t.Errorf("module script exit code %d (%v), want 0", code, err)
	}
	if err := waitConnected(ctx, key, false); err != nil {
		t.Error(err)
	}

	r = runProc(t, ctx, "registry_sdk.js module-remove", svcEnv,
		nodeArgv("registry_sdk.js", "module-remove", "--device", dev.id, "--module", moduleID)...)
	reportChecks(t, "registry_sdk.js module-remove", r)
	if _, err := env.hub.Store().Module(dev.id, moduleID); !errors.Is(err, store.ErrModuleNotFound) {
		t.Errorf("store after removeModule: %v, want ErrModuleNotFound", err)
	}
}

// TestOfficialModelID: a device client with setOptions({modelId}) (the
// model-id parameter of its MQTT username) shows the model id in its twin,
// and a query on modelId finds it.
func TestOfficialModelID(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdk-pnp")
	modelID := "dtmi:dmctl:compat:" + dev.id[len("sdk-pnp-"):] + ";1"
	r := runProc(t, ctx, "device_identity.js --model-id", []string{"DEVICE_CONNECTION_STRING=" + dev.nodeCS()},
		nodeArgv("device_identity.js", "--model-id", modelID, "--report", "5")...)
	var out struct {
		OK bool `json:"ok"`
	}
	if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK {
		t.Fatalf("the Plug and Play device failed (%v):\n%s", err, r)
	}
	if tw := getTwin(t, ctx, dev.id); tw.ModelID != modelID {
		t.Errorf("twin modelId = %q, want %q", tw.ModelID, modelID)
	}
	r = runProc(t, ctx, "registry_sdk.js model-query", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("registry_sdk.js", "model-query", "--device", dev.id, "--model-id", modelID)...)
	reportChecks(t, "registry_sdk.js model-query", r)
}

// TestOfficialDeviceScopes: deviceScope and parentScopes round-trip through
// azure-iothub's create, get, update and getTwin.
func TestOfficialDeviceScopes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prefix := newID("scope")
	t.Cleanup(func() {
		if t.Failed() {
			dumpHubLog(t, prefix)
		}
	})
	r := runProc(t, ctx, "registry_sdk.js scopes", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("registry_sdk.js", "scopes", "--prefix", prefix)...)
	reportChecks(t, "registry_sdk.js scopes", r)
}

// TestOfficialBulkRegistry: azure-iothub's addDevices, updateDevices and
// removeDevices (one POST /devices each) with getRegistryStatistics counting
// along. Not parallel: the counts must not move under other tests.
func TestOfficialBulkRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prefix := newID("bulk")
	t.Cleanup(func() {
		if t.Failed() {
			dumpHubLog(t, prefix)
		}
	})
	r := runProc(t, ctx, "registry_sdk.js bulk", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
		nodeArgv("registry_sdk.js", "bulk", "--prefix", prefix)...)
	reportChecks(t, "registry_sdk.js bulk", r)
}
