package api

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestQueryModules(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")
	if _, err := e.store.CreateDevice(iothub.Device{DeviceID: "d1", DeviceScope: "scope-1"}); err != nil {
		t.Fatal(err)
	}
	e.create("d2")
	if err := e.store.SetModelID("d1", "dtmi:example:Thermostat;1"); err != nil {
		t.Fatal(err)
	}
	e.createModule("d1", "m1")
	e.createModule("d1", "m2")
	e.createModule("d2", "m1")
	if _, err := e.store.PatchReported("d1/m1", []byte(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.PatchReported("d2/m1", []byte(`{"x":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := e.store.SetModelID("d1/m2", "dtmi:example:Filter;1"); err != nil {
		t.Fatal(err)
	}
	q := func(query string, hdr ...string) response {
		b, _ := json.Marshal(map[string]string{"query": query})
		return e.do("POST", "/devices/query?api-version=2021-04-12", owner, string(b), hdr...)
	}
	keys := func(t *testing.T, r response) []string {
		t.Helper()
		if r.status != 200 {
			t.Fatalf("query = %s", r)
		}
		var items []iothub.Twin
		if err := json.Unmarshal(r.body, &items); err != nil {
			t.Fatal(err)
		}
		out := []string{}
		for _, it := range items {
			k := it.DeviceID
			if it.ModuleID != "" {
				k += "/" + it.ModuleID
			}
			out = append(out, k)
		}
		return out
	}

	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"SELECT * FROM devices.modules", []string{"d1/m1", "d1/m2", "d2/m1"}},
		{"SELECT * FROM devices.modules WHERE moduleId = 'm1'", []string{"d1/m1", "d2/m1"}},
		{"SELECT * FROM devices.modules WHERE deviceId = 'd1'", []string{"d1/m1", "d1/m2"}},
		{"SELECT * FROM devices.modules WHERE deviceId IN ['d2'] AND moduleId = 'm1'", []string{"d2/m1"}},
		{"SELECT * FROM devices.modules WHERE properties.reported.x = 2", []string{"d2/m1"}},
		{"SELECT * FROM devices.modules WHERE properties.reported.x >= 1", []string{"d1/m1", "d2/m1"}},
		{"SELECT * FROM devices.modules WHERE modelId = 'dtmi:example:Filter;1'", []string{"d1/m2"}},
		{"SELECT * FROM devices.modules WHERE devices.modules.moduleId = 'm2'", []string{"d1/m2"}},
		{"SELECT * FROM devices.modules WHERE moduleId = 'none'", []string{}},
		// FROM devices stays devices only; modelId and deviceScope are
		// queryable on device twins.
		{"SELECT * FROM devices", []string{"d1", "d2"}},
		{"SELECT * FROM devices WHERE modelId = 'dtmi:example:Thermostat;1'", []string{"d1"}},
		{"SELECT * FROM devices WHERE deviceScope = 'scope-1'", []string{"d1"}},
		{"SELECT * FROM devices WHERE modelId = ''", []string{"d2"}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			r := q(tc.query)
			if got := keys(t, r); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if it := r.header.Get("x-ms-item-type"); it != "twin" {
				t.Errorf("x-ms-item-type = %q", it)
			}
		})
	}

	// Aggregates and projections are raw rows.
	r := q("SELECT COUNT() AS n FROM devices.modules")
	if r.status != 200 || string(r.body) != `[{"n":3}]` || r.header.Get("x-ms-item-type") != "raw" {
		t.Errorf("count = %s", r)
	}
	r = q("SELECT COUNT() AS n FROM devices.modules WHERE moduleId = 'm1'")
	if string(r.body) != `[{"n":2}]` {
		t.Errorf("filtered count = %s", r)
	}
	r = q("SELECT deviceId, moduleId, modelId FROM devices.modules WHERE deviceId = 'd1'")
	if string(r.body) != `[{"deviceId":"d1","modelId":"","moduleId":"m1"},{"deviceId":"d1","modelId":"dtmi:example:Filter;1","moduleId":"m2"}]` {
		t.Errorf("projection = %s", r)
	}
	r = q("SELECT moduleId, COUNT() AS n FROM devices.modules GROUP BY moduleId")
	if string(r.body) != `[{"moduleId":"m1","n":2},{"moduleId":"m2","n":1}]` {
		t.Errorf("group by = %s", r)
	}

	// Pages of module twins.
	r = q("SELECT * FROM devices.modules", "x-ms-max-item-count", "2")
	cont := r.header.Get("x-ms-continuation")
	if got := keys(t, r); !slices.Equal(got, []string{"d1/m1", "d1/m2"}) || cont == "" {
		t.Fatalf("page 1 = %v, continuation %q", got, cont)
	}
	r = q("SELECT * FROM devices.modules", "x-ms-max-item-count", "2", "x-ms-continuation", cont)
	if got := keys(t, r); !slices.Equal(got, []string{"d2/m1"}) || r.header.Get("x-ms-continuation") != "" {
		t.Errorf("page 2 = %v, continuation %q", got, r.header.Get("x-ms-continuation"))
	}
}
