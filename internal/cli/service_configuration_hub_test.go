package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
)

// TestConfigurationAppliedByHub creates a configuration with dmctl and
// follows it on the local hub until it has been applied: show's system and
// custom metrics count the targeted twin, the twin carries the content and
// the configuration's status is queryable.
func TestConfigurationAppliedByHub(t *testing.T) {
	h := hubtest.NewServer(t, func(c *hub.Config) { c.ConfigurationInterval = 50 * time.Millisecond })
	for _, id := range []string{"lab-1", "office-1"} {
		h.CreateDevice(t, id)
	}
	site := map[string]string{"lab-1": "lab", "office-1": "office"}
	for id, s := range site {
		if code, _, errOut := runDmctl(t, h, "service", "twin", "update", "--device", id, "--tags", `{"site":"`+s+`"}`); code != 0 {
			t.Fatalf("tag %s: exit %d: %s", id, code, errOut)
		}
	}
	code, _, errOut := runDmctl(t, h, "service", "configuration", "create", "--id", "fw-lab", "--target-condition", "tags.site='lab'", "--priority", "5",
		"--content", `{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.0"}}}`,
		"--metrics", `{"queries":{"lab":"SELECT deviceId FROM devices WHERE tags.site = 'lab'"}}`)
	if code != 0 {
		t.Fatalf("create: exit %d: %s", code, errOut)
	}

	deadline := time.Now().Add(10 * time.Second)
	var cfg iothub.Configuration
	for {
		code, out, errOut := runDmctl(t, h, "service", "configuration", "show", "--id", "fw-lab", "-o", "json")
		if code != 0 {
			t.Fatalf("show: exit %d: %s", code, errOut)
		}
		if err := json.Unmarshal([]byte(out), &cfg); err != nil {
			t.Fatalf("show -o json: %v\n%s", err, out)
		}
		if cfg.SystemMetrics != nil && cfg.SystemMetrics.Results[iothub.MetricAppliedCount] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("configuration not applied to lab-1 within 10s: %+v", cfg.SystemMetrics)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := cfg.SystemMetrics.Results[iothub.MetricTargetedCount]; n != 1 {
		t.Errorf("targetedCount %d, want 1 (lab-1 only)", n)
	}
	if cfg.Metrics == nil || cfg.Metrics.Results["lab"] != 1 {
		t.Errorf("custom metric lab: %+v, want 1", cfg.Metrics)
	}

	_, out, _ := runDmctl(t, h, "service", "twin", "show", "--device", "lab-1", "-o", "json")
	if !strings.Contains(out, `"fwVersion": "2.0"`) {
		t.Errorf("lab-1's twin lacks the content:\n%s", out)
	}
	_, out, _ = runDmctl(t, h, "service", "twin", "show", "--device", "office-1", "-o", "json")
	if strings.Contains(out, "fwVersion") {
		t.Errorf("office-1 was not targeted but has the content:\n%s", out)
	}
	code, out, errOut = runDmctl(t, h, "service", "query", "SELECT deviceId FROM devices WHERE configurations.[[fw-lab]].status = 'Applied'")
	if code != 0 || !strings.Contains(out, "lab-1") || strings.Contains(out, "office-1") {
		t.Errorf("query on the configuration status: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runDmctl(t, h, "service", "configuration", "list")
	if code != 0 || !strings.Contains(out, "fw-lab") || !strings.Contains(out, "tags.site='lab'") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
}
