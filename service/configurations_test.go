package service

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestConfigurationRequests(t *testing.T) {
	stored := iothub.Configuration{ID: "fw/1", Priority: 10, TargetCondition: "tags.site='lab'", ETag: "MQ==",
		Content:       iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.firmware": map[string]any{"fwVersion": "2.0"}}},
		SystemMetrics: &iothub.ConfigurationMetrics{Results: map[string]int64{iothub.MetricTargetedCount: 3}}}
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "DELETE":
			w.WriteHeader(204)
		case r.URL.Path == "/configurations/testQueries":
			writeJSON(w, 200, `{"targetConditionError":"","customMetricQueryErrors":{"bad":"syntax error"}}`)
		case r.URL.Path == "/configurations":
			writeJSON(w, 200, []iothub.Configuration{stored, {ID: "other"}})
		default:
			writeJSON(w, 200, stored)
		}
	})
	ctx := testContext(t)
	cfg := iothub.Configuration{ID: "fw/1", Priority: 10, TargetCondition: "tags.site='lab'", ETag: "ignored",
		Labels:  map[string]string{"campaign": "spring"},
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.firmware": map[string]any{"fwVersion": "2.0"}}},
		Metrics: &iothub.ConfigurationMetrics{Queries: map[string]string{"current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus='current'"}}}
	cfgBody := `{"id":"fw/1","labels":{"campaign":"spring"},"content":{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.0"}}},"targetCondition":"tags.site='lab'","priority":10,"metrics":{"results":null,"queries":{"current":"SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus='current'"}}}`
	type call struct {
		name, method, rawPath, query, ifMatch string
		body                                  string // "" when the call sends none
		run                                   func() error
	}
	calls := []call{
		{"create", "PUT", "/configurations/fw%2F1", "", "", cfgBody, func() error {
			got, err := c.CreateConfiguration(ctx, cfg)
			if err == nil && (got.ETag != "MQ==" || got.SystemMetrics.Results[iothub.MetricTargetedCount] != 3) {
				t.Errorf("create returned %+v, want the hub's copy", got)
			}
			return err
		}},
		{"update", "PUT", "/configurations/fw%2F1", "", `"MQ=="`, cfgBody, func() error { _, err := c.UpdateConfiguration(ctx, cfg, "MQ=="); return err }},
		{"update forced", "PUT", "/configurations/fw%2F1", "", `"*"`, cfgBody, func() error { _, err := c.UpdateConfiguration(ctx, cfg, "*"); return err }},
		{"get", "GET", "/configurations/fw%2F1", "", "", "", func() error {
			got, err := c.Configuration(ctx, "fw/1")
			if err == nil && got.TargetCondition != "tags.site='lab'" {
				t.Errorf("get returned %+v", got)
			}
			return err
		}},
		{"list", "GET", "/configurations", "5", "", "", func() error {
			got, err := c.Configurations(ctx, 5)
			if err == nil && (len(got) != 2 || got[1].ID != "other") {
				t.Errorf("list returned %+v", got)
			}
			return err
		}},
		{"list all", "GET", "/configurations", "", "", "", func() error { _, err := c.Configurations(ctx, 0); return err }},
		{"delete", "DELETE", "/configurations/fw%2F1", "", `"AAE="`, "", func() error { return c.DeleteConfiguration(ctx, "fw/1", "AAE=") }},
		{"delete forced", "DELETE", "/configurations/fw%2F1", "", `"*"`, "", func() error { return c.DeleteConfiguration(ctx, "fw/1", "") }},
		{"test queries", "POST", "/configurations/testQueries", "", "", `{"targetCondition":"tags.a=1","customMetricQueries":{"bad":"SELEC"}}`, func() error {
			got, err := c.TestConfigurationQueries(ctx, iothub.ConfigurationQueriesTestInput{TargetCondition: "tags.a=1", CustomMetricQueries: map[string]string{"bad": "SELEC"}})
			if err == nil && got.CustomMetricQueryErrors["bad"] != "syntax error" {
				t.Errorf("test queries returned %+v", got)
			}
			return err
		}},
	}
	for i, cl := range calls {
		if err := cl.run(); err != nil {
			t.Errorf("%s: %v", cl.name, err)
			continue
		}
		reqs := rec.all()
		if len(reqs) != i+1 {
			t.Fatalf("%s: %d requests in all, want %d", cl.name, len(reqs), i+1)
		}
		r := reqs[i]
		path := r.RawPath
		if path == "" {
			path = r.Path
		}
		if r.Method != cl.method || path != cl.rawPath {
			t.Errorf("%s: sent %s %s, want %s %s", cl.name, r.Method, path, cl.method, cl.rawPath)
		}
		if got := strings.Join(r.Query["top"], ","); got != cl.query {
			t.Errorf("%s: top=%q, want %q", cl.name, got, cl.query)
		}
		if got := r.Header.Get("If-Match"); got != cl.ifMatch {
			t.Errorf("%s: If-Match %q, want %q", cl.name, got, cl.ifMatch)
		}
		if got := strings.TrimSpace(string(r.Body)); got != cl.body {
			t.Errorf("%s: body\n%s\nwant\n%s", cl.name, got, cl.body)
		}
	}
}

func TestConfigurationErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		body any // the hub's 404/409 body
	}{
		{"no code", `{"Message":"ErrorCode:ConfigurationNotFound;no such configuration"}`},
		{"device code", iothub.RegistryErrorBody(iothub.CodeDeviceNotFound, "not found", time.Now())},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				switch r.Method {
				case "PUT":
					writeJSON(w, 409, iothub.RegistryErrorBody(iothub.CodeDeviceAlreadyExists, "exists", time.Now()))
				default:
					writeJSON(w, 404, tc.body)
				}
			})
			ctx := testContext(t)
			_, err := c.Configuration(ctx, "nope")
			if !errors.Is(err, ErrConfigurationNotFound) || errors.Is(err, ErrDeviceNotFound) {
				t.Errorf("get of a missing configuration: %v", err)
			}
			if err != nil && !strings.Contains(err.Error(), `configuration "nope"`) || !strings.Contains(err.Error(), "configuration not found") {
				t.Errorf("get error text: %v", err)
			}
			if n := rec.count(); n != 1 {
				t.Errorf("a 404 was asked %d times", n)
			}
			if err := c.DeleteConfiguration(ctx, "nope", ""); !errors.Is(err, ErrConfigurationNotFound) {
				t.Errorf("delete of a missing configuration: %v", err)
			}
			_, err = c.CreateConfiguration(ctx, iothub.Configuration{ID: "dup"})
			if !errors.Is(err, ErrConfigurationExists) || errors.Is(err, ErrDeviceAlreadyExists) || errors.Is(err, ErrConfigurationNotFound) {
				t.Errorf("create of an existing configuration: %v", err)
			}
			if err != nil && !strings.Contains(err.Error(), "configuration already exists") {
				t.Errorf("create error text: %v", err)
			}
		})
	}
	// A device's 404 is not a configuration's.
	dev := &APIError{Status: 404, Code: iothub.CodeDeviceNotFound, Name: "DeviceNotFound"}
	if errors.Is(dev, ErrConfigurationNotFound) {
		t.Error("a missing device matches ErrConfigurationNotFound")
	}
}

func TestConfigurationRetries(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 503, iothub.RegistryErrorBody(iothub.CodeServiceUnavailable, "down", time.Now()))
	})
	ctx := testContext(t)
	ops := []struct {
		name string
		want int // requests sent for one call
		run  func() error
	}{
		{"get", 4, func() error { _, err := c.Configuration(ctx, "a"); return err }},
		{"list", 4, func() error { _, err := c.Configurations(ctx, 0); return err }},
		{"test queries", 4, func() error {
			_, err := c.TestConfigurationQueries(ctx, iothub.ConfigurationQueriesTestInput{TargetCondition: "*"})
			return err
		}},
		{"create", 1, func() error { _, err := c.CreateConfiguration(ctx, iothub.Configuration{ID: "a"}); return err }},
		{"update", 1, func() error { _, err := c.UpdateConfiguration(ctx, iothub.Configuration{ID: "a"}, ""); return err }},
		{"delete", 1, func() error { return c.DeleteConfiguration(ctx, "a", "") }},
	}
	for _, op := range ops {
		before := rec.count()
		if err := op.run(); !errors.Is(err, &APIError{Status: 503}) {
			t.Errorf("%s: err = %v, want the 503", op.name, err)
		}
		if n := rec.count() - before; n != op.want {
			t.Errorf("%s on 503: sent %d times, want %d", op.name, n, op.want)
		}
	}
}

func TestConfigurationEmptyID(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, "{}") })
	ctx := testContext(t)
	for name, run := range map[string]func() error{
		"create": func() error { _, err := c.CreateConfiguration(ctx, iothub.Configuration{}); return err },
		"update": func() error { _, err := c.UpdateConfiguration(ctx, iothub.Configuration{}, ""); return err },
		"get":    func() error { _, err := c.Configuration(ctx, ""); return err },
		"delete": func() error { return c.DeleteConfiguration(ctx, "", "") },
	} {
		if err := run(); err == nil || !strings.Contains(err.Error(), "empty configuration id") {
			t.Errorf("%s with no id: %v", name, err)
		}
	}
	if rec.count() != 0 {
		t.Errorf("%d requests sent for empty ids", rec.count())
	}
}
