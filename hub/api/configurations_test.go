package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

const fwConfigBody = `{"id":"fw-20","schemaVersion":"1.0","labels":{"campaign":"fw"},` +
	`"content":{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.0"}}},` +
	`"targetCondition":"tags.group = 'a'","priority":10,` +
	`"metrics":{"queries":{"current":"SELECT deviceId FROM devices WHERE properties.reported.firmware.fwUpdateStatus = 'current'"}}}`

func decodeConfig(t *testing.T, r response) iothub.Configuration {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("status %s, want 200", r)
	}
	var c iothub.Configuration
	if err := json.Unmarshal(r.body, &c); err != nil {
		t.Fatalf("body: %v (%s)", err, r.body)
	}
	return c
}

func TestConfigurationRoutes(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")
	const q = "?api-version=2021-04-12"

	c := decodeConfig(t, e.do("PUT", "/configurations/fw-20"+q, owner, fwConfigBody))
	if c.ID != "fw-20" || c.ETag == "" || c.CreatedTimeUtc == "" || c.Priority != 10 ||
		c.SystemMetrics == nil || c.Metrics == nil || c.Metrics.Queries["current"] == "" {
		t.Fatalf("created: %+v", c)
	}
	wantStyleA(t, e.do("PUT", "/configurations/fw-20"+q, owner, fwConfigBody), 409, "ConfigurationAlreadyExists")

	got := decodeConfig(t, e.do("GET", "/configurations/fw-20"+q, owner, ""))
	if got.ETag != c.ETag || got.TargetCondition != "tags.group = 'a'" {
		t.Fatalf("get: %+v", got)
	}
	wantStyleA(t, e.do("GET", "/configurations/nope"+q, owner, ""), 404, "ConfigurationNotFound")

	// Update: priority and target condition change; the etag moves.
	upd := strings.Replace(strings.Replace(fwConfigBody, `"priority":10`, `"priority":20`, 1), `'a'`, `'b'`, 1)
	wantStyleA(t, e.do("PUT", "/configurations/fw-20"+q, owner, upd, "If-Match", `"stale"`), 412, "PreconditionFailed")
	u := decodeConfig(t, e.do("PUT", "/configurations/fw-20"+q, owner, upd, "If-Match", `"`+c.ETag+`"`))
	if u.Priority != 20 || u.TargetCondition != "tags.group = 'b'" || u.ETag == c.ETag {
		t.Fatalf("update: %+v", u)
	}
	wantStyleA(t, e.do("PUT", "/configurations/ghost"+q, owner, strings.Replace(fwConfigBody, "fw-20", "ghost", 1), "If-Match", "*"), 404, "ConfigurationNotFound")
	changed := strings.Replace(upd, `"2.0"`, `"3.0"`, 1)
	if text := wantStyleA(t, e.do("PUT", "/configurations/fw-20"+q, owner, changed, "If-Match", "*"), 400, "ArgumentInvalid"); !strings.Contains(text, "cannot change after creation") {
		t.Errorf("content change answered %q", text)
	}

	// Bad input.
	for name, body := range map[string]string{
		"bad condition": strings.Replace(fwConfigBody, `tags.group = 'a'`, `tags.group = = 'a'`, 1),
		"bad metric":    strings.Replace(fwConfigBody, `SELECT deviceId FROM devices WHERE`, `SELEC x`, 1),
		"id mismatch":   strings.Replace(fwConfigBody, `"id":"fw-20"`, `"id":"other"`, 1),
		"no content":    `{"targetCondition":"*","content":{}}`,
	} {
		r := e.do("PUT", "/configurations/fw-20"+q, owner, body)
		if r.status != 400 {
			t.Errorf("%s: %s, want 400", name, r)
		}
	}
	wantStyleA(t, e.do("PUT", "/configurations/Upper"+q, owner, `{}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("PUT", "/configurations/x"+q, owner, `{"id":`), 400, "IotHubFormatError")

	// List with top.
	for i := range 3 {
		body := strings.Replace(fwConfigBody, "fw-20", fmt.Sprintf("more-%d", i), 1)
		decodeConfig(t, e.do("PUT", fmt.Sprintf("/configurations/more-%d", i)+q, owner, body))
	}
	var list []iothub.Configuration
	r := e.do("GET", "/configurations"+q+"&top=2", owner, "")
	if err := json.Unmarshal(r.body, &list); err != nil || r.status != 200 || len(list) != 2 {
		t.Fatalf("list top=2: %s", r)
	}
	r = e.do("GET", "/configurations"+q, owner, "")
	if err := json.Unmarshal(r.body, &list); err != nil || len(list) != 4 {
		t.Fatalf("list: %s", r)
	}
	wantStyleA(t, e.do("GET", "/configurations"+q+"&top=0", owner, ""), 400, "ArgumentInvalid")

	// Delete honours If-Match.
	wantStyleA(t, e.do("DELETE", "/configurations/fw-20"+q, owner, "", "If-Match", `"stale"`), 412, "PreconditionFailed")
	if r := e.do("DELETE", "/configurations/fw-20"+q, owner, "", "If-Match", `"`+u.ETag+`"`); r.status != 204 {
		t.Fatalf("delete: %s", r)
	}
	wantStyleA(t, e.do("DELETE", "/configurations/fw-20"+q, owner, ""), 404, "ConfigurationNotFound")
}

func TestConfigurationTestQueries(t *testing.T) {
	e := newEnv(t)
	r := e.do("POST", "/configurations/testQueries?api-version=2021-04-12", e.token("registryRead"),
		`{"targetCondition":"tags.a = = 1","customMetricQueries":{"ok":"SELECT deviceId FROM devices","bad":"SELEC"}}`)
	var out iothub.ConfigurationQueriesTestResponse
	if err := json.Unmarshal(r.body, &out); err != nil || r.status != 200 {
		t.Fatalf("testQueries: %s", r)
	}
	if out.TargetConditionError == "" || out.CustomMetricQueryErrors["bad"] == "" || out.CustomMetricQueryErrors["ok"] != "" {
		t.Errorf("testQueries answer: %+v", out)
	}
	r = e.do("POST", "/configurations/testQueries", e.token("registryRead"), `{"targetCondition":"tags.a = 1"}`)
	out = iothub.ConfigurationQueriesTestResponse{}
	if err := json.Unmarshal(r.body, &out); err != nil || out.TargetConditionError != "" || len(out.CustomMetricQueryErrors) != 0 {
		t.Errorf("valid queries: %s", r)
	}
}

func TestConfigurationRights(t *testing.T) {
	e := newEnv(t)
	if r := e.do("PUT", "/configurations/seed", e.token("iothubowner"), strings.Replace(fwConfigBody, "fw-20", "seed", 1)); r.status != 200 {
		t.Fatal(r)
	}
	routes := []struct {
		method, path, body string
		allowed            []string
		ok                 int
	}{
		{"GET", "/configurations/seed", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"GET", "/configurations", "", []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"POST", "/configurations/testQueries", `{"targetCondition":"*"}`, []string{"iothubowner", "registryRead", "registryReadWrite"}, 200},
		{"PUT", "/configurations/new-%s", fwConfigBody, []string{"iothubowner", "registryReadWrite"}, 200},
		{"DELETE", "/configurations/new-%s", "", []string{"iothubowner", "registryReadWrite"}, 204},
	}
	for _, rt := range routes {
		for _, p := range []string{"iothubowner", "service", "registryRead", "registryReadWrite", "device"} {
			path, body := rt.path, rt.body
			if strings.Contains(path, "%s") {
				id := strings.ToLower(p)
				path = fmt.Sprintf(path, id)
				body = strings.Replace(body, `"fw-20"`, `"new-`+id+`"`, 1)
			}
			r := e.do(rt.method, path, e.token(p), body)
			allowed := false
			for _, a := range rt.allowed {
				allowed = allowed || a == p
			}
			if allowed && r.status != rt.ok {
				t.Errorf("%s %s as %s: %s, want %d", rt.method, path, p, r, rt.ok)
			}
			if !allowed && r.status != 401 {
				t.Errorf("%s %s as %s: %s, want 401", rt.method, path, p, r)
			}
		}
	}
}
