package firmware

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/internal/iothub"
)

// fakeHub keeps twins in memory, evaluates queries and target conditions
// with the hub's query language, and moves each device that has a desired
// firmware one step along its script every time its twin is read by a
// progress query.
type fakeHub struct {
	mu      sync.Mutex
	twins   map[string]map[string]any
	scripts map[string][]string // statuses a device goes through; the default ends current
	step    map[string]int
	configs []iothub.Configuration
	// onCreate, if set, sees the twins as each configuration is created.
	onCreate   func(cfg iothub.Configuration, twins map[string]map[string]any)
	failCreate error
	// overridden devices keep their desired firmware: another
	// configuration of higher priority, overrider, applies there (and
	// their twins say so), the campaign's is only targeted.
	overridden map[string]bool
	overrider  string
}

func newFakeHub(n int, oldVersion string) *fakeHub {
	h := &fakeHub{twins: map[string]map[string]any{}, scripts: map[string][]string{}, step: map[string]int{}}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("sim-%03d", i)
		h.twins[id] = map[string]any{
			"deviceId": id,
			"tags":     map[string]any{"site": "lab"},
			"properties": map[string]any{
				"desired":  map[string]any{},
				"reported": map[string]any{"firmware": map[string]any{"currentFwVersion": oldVersion, "fwUpdateStatus": "current"}},
			},
		}
	}
	return h
}

var defaultScript = []string{"downloading", "verifying", "applying", "rebooting", "current"}

func (h *fakeHub) CreateConfiguration(ctx context.Context, cfg iothub.Configuration) (iothub.Configuration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failCreate != nil {
		return iothub.Configuration{}, h.failCreate
	}
	q, err := query.Parse("SELECT * FROM devices WHERE " + cfg.TargetCondition)
	if err != nil {
		return iothub.Configuration{}, fmt.Errorf("bad target condition: %w", err)
	}
	if n := len(cfg.Metrics.Queries); n > 5 {
		return iothub.Configuration{}, fmt.Errorf("%d custom metrics: a configuration has at most 5", n)
	}
	for _, mq := range cfg.Metrics.Queries {
		// the local parser may not know IoT Hub's [[id]] escape: the
		// same path written as ['id'] checks the rest of the query.
		mq = strings.NewReplacer(".[[", "['", "]]", "']").Replace(mq)
		if _, err := query.Parse(mq); err != nil {
			return iothub.Configuration{}, fmt.Errorf("bad metric query %q: %w", mq, err)
		}
	}
	if h.onCreate != nil {
		h.onCreate(cfg, h.twins)
	}
	for _, t := range h.twins {
		if !q.Match(t) {
			continue
		}
		statuses, _ := t["configurations"].(map[string]any)
		if statuses == nil {
			statuses = map[string]any{}
			t["configurations"] = statuses
		}
		if h.overridden[t["deviceId"].(string)] {
			statuses[cfg.ID] = map[string]any{"status": iothub.ConfigurationTargeted}
			if h.overrider != "" {
				statuses[h.overrider] = map[string]any{"status": iothub.ConfigurationApplied}
			}
			continue
		}
		statuses[cfg.ID] = map[string]any{"status": iothub.ConfigurationApplied}
		t["properties"].(map[string]any)["desired"].(map[string]any)["firmware"] = cfg.Content.DeviceContent["properties.desired.firmware"]
	}
	h.configs = append(h.configs, cfg)
	return cfg, nil
}

func (h *fakeHub) Query(ctx context.Context, qs string, pageSize int, fn func(json.RawMessage) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	q, err := query.Parse(qs)
	if err != nil {
		return err
	}
	h.mu.Lock()
	ids := make([]string, 0, len(h.twins))
	for id := range h.twins {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var docs []map[string]any
	for _, id := range ids {
		if t := h.twins[id]; q.Match(t) {
			docs = append(docs, t)
		}
	}
	if strings.Contains(qs, "AS firmware") {
		for _, t := range docs {
			h.advance(t)
		}
	}
	rows, err := q.Project(docs)
	var raws []json.RawMessage
	for _, r := range rows {
		b, _ := json.Marshal(r)
		raws = append(raws, b)
	}
	h.mu.Unlock()
	if err != nil {
		return err
	}
	for _, r := range raws {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// advance moves a device with a new desired firmware one step.
func (h *fakeHub) advance(t map[string]any) {
	props := t["properties"].(map[string]any)
	des, _ := props["desired"].(map[string]any)["firmware"].(map[string]any)
	if des == nil {
		return
	}
	id := t["deviceId"].(string)
	script, ok := h.scripts[id]
	if !ok {
		script = defaultScript
	}
	k := h.step[id]
	if k >= len(script) {
		return
	}
	h.step[id] = k + 1
	rep := props["reported"].(map[string]any)
	old, _ := rep["firmware"].(map[string]any)
	fw := map[string]any{"currentFwVersion": old["currentFwVersion"], "fwUpdateStatus": script[k], "pendingFwVersion": des["fwVersion"], "step": k}
	if script[k] == "current" {
		fw["currentFwVersion"] = des["fwVersion"]
		delete(fw, "pendingFwVersion")
	}
	if script[k] == "error" || script[k] == "rolledback" {
		fw["fwUpdateSubstatus"] = "checksum mismatch"
	}
	rep["firmware"] = fw
}

func (h *fakeHub) created() []iothub.Configuration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]iothub.Configuration(nil), h.configs...)
}
