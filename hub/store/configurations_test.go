package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func fwConfig(id string, prio int) iothub.Configuration {
	return iothub.Configuration{
		ID:              id,
		Labels:          map[string]string{"campaign": "fw-2.0"},
		Priority:        prio,
		TargetCondition: "tags.group = 'a'",
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{
			"properties.desired.firmware": map[string]any{"fwVersion": "2.0"},
		}},
		Metrics: &iothub.ConfigurationMetrics{Queries: map[string]string{
			"current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus = 'current'",
		}},
	}
}

func TestConfigurationLifecycleSurvivesReopen(t *testing.T) {
	s, path := newStore(t)
	c, err := s.CreateConfiguration(fwConfig("fw-20", 10))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if c.ETag == "" || c.CreatedTimeUtc == "" || c.CreatedTimeUtc != c.LastUpdatedTimeUtc {
		t.Fatalf("created configuration lacks etag/times: %+v", c)
	}
	if _, err := s.CreateConfiguration(fwConfig("fw-20", 1)); !errors.Is(err, ErrConfigurationExists) {
		t.Fatalf("second create: %v, want ErrConfigurationExists", err)
	}
	upd := fwConfig("fw-20", 20)
	if _, err := s.UpdateConfiguration(upd, "wrong"); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("update with a stale etag: %v, want ErrPrecondition", err)
	}
	u, err := s.UpdateConfiguration(upd, c.ETag)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if u.Priority != 20 || u.ETag == c.ETag || u.CreatedTimeUtc != c.CreatedTimeUtc || u.LastUpdatedTimeUtc == c.LastUpdatedTimeUtc {
		t.Fatalf("update result: %+v (was %+v)", u, c)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path, newClock())
	defer s2.Close()
	got, err := s2.Configuration("fw-20")
	if err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	if got.Priority != 20 || got.ETag != u.ETag || got.Content.DeviceContent["properties.desired.firmware"] == nil {
		t.Fatalf("after reopen: %+v", got)
	}
	if err := s2.DeleteConfiguration("fw-20", "nope"); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("delete with a stale etag: %v", err)
	}
	if err := s2.DeleteConfiguration("fw-20", got.ETag); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Configuration("fw-20"); !errors.Is(err, ErrConfigurationNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s2.DeleteConfiguration("fw-20", ""); !errors.Is(err, ErrConfigurationNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestConfigurationContentIsImmutable(t *testing.T) {
	s, _ := newStore(t)
	c, err := s.CreateConfiguration(fwConfig("x", 1))
	if err != nil {
		t.Fatal(err)
	}
	c.Content.DeviceContent["properties.desired.firmware"] = map[string]any{"fwVersion": "3.0"}
	_, err = s.UpdateConfiguration(c, c.ETag)
	var ve *ValidationError
	if !errors.As(err, &ve) || !strings.Contains(ve.Msg, "cannot change after creation") {
		t.Fatalf("content change: %v, want a validation error", err)
	}
}

func TestConfigurationLimitAndValidation(t *testing.T) {
	s, _ := newStore(t)
	for i := range iothub.MaxConfigurations {
		if _, err := s.CreateConfiguration(fwConfig(fmt.Sprintf("c%d", i), 1)); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	_, err := s.CreateConfiguration(fwConfig("one-too-many", 1))
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Code != iothub.CodeQuotaExceeded {
		t.Fatalf("create past the limit: %v, want 403002", err)
	}
	bad := map[string]func(*iothub.Configuration){
		"uppercase id":    func(c *iothub.Configuration) { c.ID = "Fw" },
		"slash in id":     func(c *iothub.Configuration) { c.ID = "a/b" },
		"long id":         func(c *iothub.Configuration) { c.ID = strings.Repeat("a", 129) },
		"negative prio":   func(c *iothub.Configuration) { c.Priority = -1 },
		"no condition":    func(c *iothub.Configuration) { c.TargetCondition = " " },
		"no content":      func(c *iothub.Configuration) { c.Content = iothub.ConfigurationContent{} },
		"reported path":   func(c *iothub.Configuration) { c.Content.DeviceContent = map[string]any{"properties.reported.x": 1} },
		"tags path":       func(c *iothub.Configuration) { c.Content.DeviceContent = map[string]any{"tags.x": 1} },
		"desired not obj": func(c *iothub.Configuration) { c.Content.DeviceContent = map[string]any{"properties.desired": 1} },
		"both contents":   func(c *iothub.Configuration) { c.Content.ModuleContent = map[string]any{"properties.desired.y": 1} },
		"reserved label":  func(c *iothub.Configuration) { c.Labels = map[string]string{"$x": "y"} },
		"bad label char":  func(c *iothub.Configuration) { c.Labels = map[string]string{"a b": "y"} },
		"six metrics": func(c *iothub.Configuration) {
			c.Metrics.Queries = map[string]string{"a": "q", "b": "q", "c": "q", "d": "q", "e": "q", "f": "q"}
		},
		"empty metric":     func(c *iothub.Configuration) { c.Metrics.Queries = map[string]string{"a": ""} },
		"empty path piece": func(c *iothub.Configuration) { c.Content.DeviceContent = map[string]any{"properties.desired..x": 1} },
	}
	for name, mod := range bad {
		c := fwConfig("ok", 1)
		mod(&c)
		if _, err := s.UpdateConfiguration(c, ""); !errors.As(err, &ve) || ve.Code != iothub.CodeArgumentInvalid {
			t.Errorf("%s: %v, want 400004", name, err)
		}
	}
}

func TestDesiredPatchFromContent(t *testing.T) {
	p, err := DesiredPatch(map[string]any{
		"properties.desired.chiller-water.temperature": 66,
		"properties.desired":                           map[string]any{"a": 1},
		"properties.desired.firmware":                  map[string]any{"fwVersion": "2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `map[a:1 chiller-water:map[temperature:66] firmware:map[fwVersion:2]]`
	if fmt.Sprint(p) != want {
		t.Fatalf("patch %v, want %s", p, want)
	}
}

func TestApplyConfigurationsShowsStatusAndNotifies(t *testing.T) {
	s, path := newStore(t)
	mustCreate(t, s, "d1")
	var got []string
	s.OnDesired(func(id string, v int64, patch []byte) { got = append(got, fmt.Sprintf("%s %d %s", id, v, patch)) })
	failed, err := s.ApplyConfigurations([]TwinConfigUpdate{
		{ID: "d1", Configs: map[string]string{"fw": iothub.ConfigurationApplied}, Desired: map[string]any{"fw": "2"}},
		{ID: "gone", Configs: map[string]string{"fw": iothub.ConfigurationApplied}},
	})
	if err != nil || failed != nil {
		t.Fatalf("apply: %v %v", failed, err)
	}
	if len(got) != 1 || got[0] != `d1 2 {"$version":2,"fw":"2"}` {
		t.Fatalf("desired notifications: %q", got)
	}
	tw, _ := s.Twin("d1")
	if tw.Configurations["fw"].Status != iothub.ConfigurationApplied || tw.Properties.Desired["fw"] != "2" {
		t.Fatalf("twin: %+v", tw)
	}
	_ = s.Close()
	s2 := openAt(t, path, newClock())
	defer s2.Close()
	tw, _ = s2.Twin("d1")
	if tw.Configurations["fw"].Status != iothub.ConfigurationApplied {
		t.Fatalf("status lost on reopen: %+v", tw.Configurations)
	}
	if _, err := s2.ApplyConfigurations([]TwinConfigUpdate{{ID: "d1"}}); err != nil {
		t.Fatal(err)
	}
	if tw, _ = s2.Twin("d1"); tw.Configurations != nil || tw.Properties.Desired["fw"] != "2" {
		t.Fatalf("after clearing the status: %+v %v", tw.Configurations, tw.Properties.Desired)
	}
}
