package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// Configuration errors; callers match them with errors.Is.
var (
	ErrConfigurationNotFound = errors.New("store: configuration not found")
	ErrConfigurationExists   = errors.New("store: configuration already exists")
)

// Configuration limits IoT Hub documents.
const (
	MaxConfigurationIDLength = 128
	MaxLabelLength           = 128
	MaxCustomMetrics         = 5
)

var bucketConfigs = []byte("configurations")

// configRecord is the stored form of a configuration. Metric results are
// not stored: the configuration engine recomputes them.
type configRecord struct {
	Config iothub.Configuration `json:"config"`
	Ver    int64                `json:"ver"`
	Seq    int64                `json:"seq"` // creation order, for priority ties
}

// configState is the store's configuration set, loaded on first use.
type configState struct {
	mu      sync.Mutex
	loaded  bool
	recs    map[string]*configRecord
	seq     int64
	results map[string]configResults
}

type configResults struct {
	system, custom map[string]int64
}

func (s *Store) configs() *configState { return &s.cfg }

// loadConfigs reads the configurations bucket once; the caller holds cs.mu.
func (s *Store) loadConfigs(cs *configState) error {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if cs.loaded {
		return nil
	}
	recs := map[string]*configRecord{}
	var seq int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketConfigs)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r configRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("configuration %q: %w", k, err)
			}
			recs[r.Config.ID] = &r
			seq = max(seq, r.Seq)
			return nil
		})
	})
	if err != nil {
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return ErrClosed
		}
		return fmt.Errorf("store: load configurations: %w", err)
	}
	cs.recs, cs.seq, cs.loaded = recs, seq, true
	cs.results = map[string]configResults{}
	return nil
}

func (s *Store) putConfig(r *configRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode configuration %q: %w", r.Config.ID, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketConfigs).Put([]byte(r.Config.ID), b) })
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("store: write configuration %q: %w", r.Config.ID, err)
	}
	return nil
}

// ValidConfigurationID checks a configuration id: 1 to 128 characters,
// lowercase ASCII letters, digits and - : + % _ # * ? ! ( ) , = @ ; $ '.
func ValidConfigurationID(id string) error {
	if id == "" {
		return invalid("the configuration id is empty")
	}
	if len(id) > MaxConfigurationIDLength {
		return invalid("the configuration id is longer than %d characters", MaxConfigurationIDLength)
	}
	for _, c := range []byte(id) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && !strings.ContainsRune("-:+%_#*?!(),=@;$'", rune(c)) {
			return invalid("the configuration id %q holds %q: use lowercase letters, digits and - : + %% _ # * ? ! ( ) , = @ ; $ '", id, c)
		}
	}
	return nil
}

func validLabel(what, v string) error {
	if v == "" || len(v) > MaxLabelLength {
		return invalid("label %s %q must be 1 to %d characters", what, v, MaxLabelLength)
	}
	for _, c := range []byte(v) {
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !alnum && !strings.ContainsRune("-:.+%_#*?!(),=@;'", rune(c)) {
			return invalid("label %s %q holds %q: use ASCII letters, digits and - : . + %% _ # * ? ! ( ) , = @ ; '", what, v, c)
		}
	}
	return nil
}

// DesiredPatch turns configuration content (twin paths such as
// "properties.desired.firmware" to values) into a desired-properties
// patch. "properties.desired" itself must hold an object, merged whole.
func DesiredPatch(content map[string]any) (map[string]any, error) {
	patch := map[string]any{}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range content {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		v := content[k]
		rest, ok := strings.CutPrefix(k, "properties.desired")
		switch {
		case ok && rest == "":
			m, isObj := v.(map[string]any)
			if !isObj {
				return nil, invalid("content path %q must hold a JSON object", k)
			}
			patch = mergeMap(patch, m)
			continue
		case !ok || !strings.HasPrefix(rest, ".") || rest == ".":
			return nil, invalid("content path %q is not under properties.desired (write \"properties.desired.<name>\")", k)
		}
		segs := strings.Split(rest[1:], ".")
		if slices.Contains(segs, "") {
			return nil, invalid("content path %q has an empty segment", k)
		}
		var nested any = v
		for i := len(segs) - 1; i >= 0; i-- {
			nested = map[string]any{segs[i]: nested}
		}
		patch = mergeMap(patch, nested.(map[string]any))
	}
	patch = withoutSystem(patch)
	if err := checkObject("desired", patch, 0, ""); err != nil {
		return nil, err
	}
	if err := checkSize("configuration content", patch, MaxPropertiesSize); err != nil {
		return nil, err
	}
	return patch, nil
}

// checkConfiguration validates what a client may write.
func checkConfiguration(c *iothub.Configuration) error {
	if err := ValidConfigurationID(c.ID); err != nil {
		return err
	}
	for k, v := range c.Labels {
		if strings.HasPrefix(k, "$") {
			return invalid("label name %q: names starting with $ are reserved", k)
		}
		if err := validLabel("name", k); err != nil {
			return err
		}
		if err := validLabel("value", v); err != nil {
			return err
		}
	}
	if c.Priority < 0 {
		return invalid("priority must be 0 or more, not %d", c.Priority)
	}
	if strings.TrimSpace(c.TargetCondition) == "" {
		return invalid("targetCondition is required (\"*\" targets every twin)")
	}
	ct := c.Content
	if len(ct.DeviceContent) > 0 && len(ct.ModuleContent) > 0 {
		return invalid("content holds both deviceContent and moduleContent: a configuration targets devices or modules, not both")
	}
	if len(ct.DeviceContent) == 0 && len(ct.ModuleContent) == 0 && len(ct.ModulesContent) == 0 {
		return invalid("content is empty: give content.deviceContent or content.moduleContent")
	}
	for _, m := range []map[string]any{ct.DeviceContent, ct.ModuleContent} {
		if _, err := DesiredPatch(m); err != nil {
			return err
		}
	}
	if c.Metrics != nil && len(c.Metrics.Queries) > MaxCustomMetrics {
		return invalid("%d custom metrics: a configuration has at most %d", len(c.Metrics.Queries), MaxCustomMetrics)
	}
	if c.Metrics != nil {
		for name, q := range c.Metrics.Queries {
			if name == "" || strings.TrimSpace(q) == "" {
				return invalid("custom metric %q needs a name and a query", name)
			}
		}
	}
	return nil
}

// cloneConfig copies every map of c, so that stored configurations share
// nothing with callers.
func cloneConfig(c iothub.Configuration) iothub.Configuration {
	c.Labels = maps.Clone(c.Labels)
	cp := func(m map[string]any) map[string]any {
		if m == nil {
			return nil
		}
		return copyValue(m).(map[string]any)
	}
	c.Content = iothub.ConfigurationContent{
		DeviceContent:  cp(c.Content.DeviceContent),
		ModuleContent:  cp(c.Content.ModuleContent),
		ModulesContent: cp(c.Content.ModulesContent),
	}
	if c.Metrics != nil {
		c.Metrics = &iothub.ConfigurationMetrics{Queries: maps.Clone(c.Metrics.Queries)}
	}
	c.SystemMetrics = nil
	return c
}

// systemQueries are the queries the system metrics count, as IoT Hub
// lists them.
func systemQueries(c iothub.Configuration) map[string]string {
	sel := "SELECT deviceId FROM devices"
	if len(c.Content.ModuleContent) > 0 {
		sel = "SELECT deviceId, moduleId FROM devices.modules"
	}
	targeted := sel
	if cond := strings.TrimSpace(c.TargetCondition); cond != "*" {
		targeted += " WHERE " + cond
	}
	return map[string]string{
		iothub.MetricTargetedCount: targeted,
		iothub.MetricAppliedCount:  sel + " WHERE configurations.[[" + c.ID + "]].status = '" + iothub.ConfigurationApplied + "'",
	}
}

// render returns the client view of r with the latest metric results.
func (cs *configState) render(r *configRecord) iothub.Configuration {
	c := cloneConfig(r.Config)
	c.ETag = identityETag(r.Ver)
	res := cs.results[c.ID]
	c.SystemMetrics = &iothub.ConfigurationMetrics{
		Results: map[string]int64{iothub.MetricTargetedCount: res.system[iothub.MetricTargetedCount], iothub.MetricAppliedCount: res.system[iothub.MetricAppliedCount]},
		Queries: systemQueries(c),
	}
	custom := &iothub.ConfigurationMetrics{Results: map[string]int64{}, Queries: map[string]string{}}
	if r.Config.Metrics != nil {
		for name, q := range r.Config.Metrics.Queries {
			custom.Queries[name] = q
			custom.Results[name] = res.custom[name]
		}
	}
	c.Metrics = custom
	return c
}

// CreateConfiguration stores a new configuration (ErrConfigurationExists;
// a *ValidationError with 403002 IotHubQuotaExceeded past
// iothub.MaxConfigurations). Metric results start at zero.
func (s *Store) CreateConfiguration(c iothub.Configuration) (iothub.Configuration, error) {
	c = cloneConfig(c)
	if err := checkConfiguration(&c); err != nil {
		return iothub.Configuration{}, err
	}
	cs := s.configs()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := s.loadConfigs(cs); err != nil {
		return iothub.Configuration{}, err
	}
	if cs.recs[c.ID] != nil {
		return iothub.Configuration{}, fmt.Errorf("%w: %q", ErrConfigurationExists, c.ID)
	}
	if len(cs.recs) >= iothub.MaxConfigurations {
		return iothub.Configuration{}, &ValidationError{Code: iothub.CodeQuotaExceeded,
			Msg: fmt.Sprintf("the hub holds %d configurations, the most it can", iothub.MaxConfigurations)}
	}
	now := iothub.FormatTime(s.now().UTC())
	c.CreatedTimeUtc, c.LastUpdatedTimeUtc = now, now
	c.ETag, c.SystemMetrics = "", nil
	if c.SchemaVersion == "" {
		c.SchemaVersion = "1.0"
	}
	r := &configRecord{Config: c, Ver: 1, Seq: cs.seq + 1}
	if err := s.putConfig(r); err != nil {
		return iothub.Configuration{}, err
	}
	cs.seq++
	cs.recs[c.ID] = r
	return cs.render(r), nil
}

// UpdateConfiguration changes an existing configuration. ifMatch is "",
// "*" or its etag (ErrPrecondition). Only labels, priority, the target
// condition and the metrics may change: other content is a
// *ValidationError, as IoT Hub allows only those after creation.
func (s *Store) UpdateConfiguration(c iothub.Configuration, ifMatch string) (iothub.Configuration, error) {
	c = cloneConfig(c)
	if err := checkConfiguration(&c); err != nil {
		return iothub.Configuration{}, err
	}
	cs := s.configs()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := s.loadConfigs(cs); err != nil {
		return iothub.Configuration{}, err
	}
	cur := cs.recs[c.ID]
	if cur == nil {
		return iothub.Configuration{}, fmt.Errorf("%w: %q", ErrConfigurationNotFound, c.ID)
	}
	if !ETagMatches(ifMatch, identityETag(cur.Ver)) {
		return iothub.Configuration{}, fmt.Errorf("%w: configuration %q has etag %q", ErrPrecondition, c.ID, identityETag(cur.Ver))
	}
	if !sameContent(cur.Config.Content, c.Content) {
		return iothub.Configuration{}, invalid("the content of configuration %q cannot change after creation: only labels, priority, targetCondition and metrics can (delete it and create a new one)", c.ID)
	}
	n := cur.Config
	n.Labels, n.Priority, n.TargetCondition = c.Labels, c.Priority, c.TargetCondition
	n.Metrics = nil
	if c.Metrics != nil {
		n.Metrics = &iothub.ConfigurationMetrics{Queries: c.Metrics.Queries}
	}
	if c.SchemaVersion != "" {
		n.SchemaVersion = c.SchemaVersion
	}
	n.LastUpdatedTimeUtc = iothub.FormatTime(s.now().UTC())
	r := &configRecord{Config: n, Ver: cur.Ver + 1, Seq: cur.Seq}
	if err := s.putConfig(r); err != nil {
		return iothub.Configuration{}, err
	}
	cs.recs[c.ID] = r
	return cs.render(r), nil
}

// sameContent compares content as JSON, so that numbers decoded
// differently compare equal.
func sameContent(a, b iothub.ConfigurationContent) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		return false
	}
	var va, vb any
	if json.Unmarshal(ja, &va) != nil || json.Unmarshal(jb, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// Configuration returns one configuration (ErrConfigurationNotFound).
func (s *Store) Configuration(id string) (iothub.Configuration, error) {
	cs := s.configs()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := s.loadConfigs(cs); err != nil {
		return iothub.Configuration{}, err
	}
	r := cs.recs[id]
	if r == nil {
		return iothub.Configuration{}, fmt.Errorf("%w: %q", ErrConfigurationNotFound, id)
	}
	return cs.render(r), nil
}

// Configurations returns up to top configurations (all when top <= 0) in
// id order.
func (s *Store) Configurations(top int) ([]iothub.Configuration, error) {
	all, err := s.ConfigurationsByCreation()
	if err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	if top > 0 && len(all) > top {
		all = all[:top]
	}
	return all, nil
}

// ConfigurationsByCreation returns every configuration, oldest first.
func (s *Store) ConfigurationsByCreation() ([]iothub.Configuration, error) {
	cs := s.configs()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := s.loadConfigs(cs); err != nil {
		return nil, err
	}
	recs := make([]*configRecord, 0, len(cs.recs))
	for _, r := range cs.recs {
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Seq < recs[j].Seq })
	out := make([]iothub.Configuration, 0, len(recs))
	for _, r := range recs {
		out = append(out, cs.render(r))
	}
	return out, nil
}

// DeleteConfiguration removes a configuration (ErrConfigurationNotFound,
// ErrPrecondition). Twins keep the desired properties it wrote; the
// configuration engine removes its status from them.
func (s *Store) DeleteConfiguration(id, ifMatch string) error {
	cs := s.configs()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err := s.loadConfigs(cs); err != nil {
		return err
	}
	cur := cs.recs[id]
	if cur == nil {
		return fmt.Errorf("%w: %q", ErrConfigurationNotFound, id)
	}
	if !ETagMatches(ifMatch, identityETag(cur.Ver)) {
		return fmt.Errorf("%w: configuration %q has etag %q", ErrPrecondition, id, identityETag(cur.Ver))
	}
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketConfigs).Delete([]byte(id)) })
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("store: delete configuration %q: %w", id, err)
	}
	delete(cs.recs, id)
	delete(cs.results, id)
	return nil
}

// SetConfigurationResults records the metric results the configuration
// engine computed for configuration id (kept in memory; an unknown id is
// ignored). The maps must not be modified afterwards.
func (s *Store) SetConfigurationResults(id string, system, custom map[string]int64) {
	cs := s.configs()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.loaded && cs.recs[id] != nil {
		cs.results[id] = configResults{system: system, custom: custom}
	}
}
