package configs

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/rs/zerolog"
)

// DefaultInterval is how often the engine applies configurations. IoT Hub
// runs them when they are created and then every five minutes; the local
// hub within a second.
const DefaultInterval = time.Second

// applyBatch is how many twins one durable write updates.
const applyBatch = 1000

// Config configures an Engine.
type Config struct {
	Store    *store.Store
	Interval time.Duration  // default DefaultInterval
	Log      zerolog.Logger // default: the zero Logger writes nothing
}

// Engine applies configurations. Create it with New and run it with Run;
// Tick runs one pass.
type Engine struct {
	st       *store.Store
	interval time.Duration
	log      zerolog.Logger

	mu     sync.Mutex // serialises ticks; guards the fields below
	cache  map[string]*compiled
	failed map[string]string // "{twin}\x00{config}" -> error already logged
}

// compiled is a configuration ready to evaluate.
type compiled struct {
	cfg     iothub.Configuration
	order   int // creation order: later wins among equal priorities
	modules bool
	target  *query.Query
	patch   map[string]any
	metrics map[string]*query.Query
}

// New returns an engine over cfg.Store.
func New(cfg Config) *Engine {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	return &Engine{st: cfg.Store, interval: cfg.Interval, log: cfg.Log,
		cache: map[string]*compiled{}, failed: map[string]string{}}
}

// Run ticks every interval until ctx is done; it returns nil then. A tick
// that fails is logged and the next one tries again.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.interval)
	defer t.Stop()
	for {
		if _, err := e.Tick(ctx); err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return nil
			}
			e.log.Error().Err(err).Msg("configuration pass failed")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// TickStats describes one pass.
type TickStats struct {
	Configurations int
	Twins          int // twins evaluated
	Updated        int // twins whose status or desired properties were written
	Took           time.Duration
}

// Tick runs one pass over every configuration and twin.
func (e *Engine) Tick(ctx context.Context) (TickStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	start := time.Now()
	var st TickStats
	all, err := e.st.ConfigurationsByCreation()
	if err != nil {
		return st, err
	}
	var devCfgs, modCfgs []*compiled
	live := map[string]bool{}
	for i, c := range all {
		cc := e.compile(c, i)
		if cc == nil {
			continue
		}
		live[c.ID] = true
		if cc.modules {
			modCfgs = append(modCfgs, cc)
		} else {
			devCfgs = append(devCfgs, cc)
		}
	}
	for id := range e.cache {
		if !live[id] {
			delete(e.cache, id)
		}
	}
	st.Configurations = len(live)
	targeted, applied := map[string]int64{}, map[string]int64{}
	winners := map[string]string{} // twin -> configuration it applies
	var ups []store.TwinConfigUpdate
	scan := func(doc map[string]any, list []*compiled, modules bool) bool {
		st.Twins++
		id := twinKey(doc, modules)
		cur := statuses(doc)
		want := map[string]string{}
		var win *compiled
		for _, c := range list {
			if !c.target.Match(doc) {
				continue
			}
			want[c.cfg.ID] = iothub.ConfigurationTargeted
			targeted[c.cfg.ID]++
			if win == nil || c.cfg.Priority > win.cfg.Priority ||
				(c.cfg.Priority == win.cfg.Priority && c.order > win.order) {
				win = c
			}
		}
		var patch map[string]any
		if win != nil {
			want[win.cfg.ID] = iothub.ConfigurationApplied
			applied[win.cfg.ID]++
			winners[id] = win.cfg.ID
			if cur[win.cfg.ID] != iothub.ConfigurationApplied {
				patch = win.patch
			}
		}
		if patch != nil || !maps.Equal(cur, want) {
			if len(want) == 0 {
				want = nil
			}
			ups = append(ups, store.TwinConfigUpdate{ID: id, Configs: want, Desired: patch})
		}
		return ctx.Err() == nil
	}
	for _, side := range []struct {
		list    []*compiled
		modules bool
		each    func(func(map[string]any) bool) error
	}{{devCfgs, false, e.st.ForEachTwinDoc}, {modCfgs, true, e.st.ForEachModuleTwinDoc}} {
		if len(side.list) > 0 {
			if err := side.each(func(doc map[string]any) bool { return scan(doc, side.list, side.modules) }); err != nil {
				return st, err
			}
			continue
		}
		// Nothing targets this side's twins: only statuses left by deleted
		// configurations need clearing, and the records say which twins
		// carry them, so no twin document is rendered (an idle hub's twins
		// stay unrendered, not cached).
		keys, err := e.st.ConfiguredTwins(side.modules)
		if err != nil {
			return st, err
		}
		st.Twins += len(keys)
		for _, k := range keys {
			ups = append(ups, store.TwinConfigUpdate{ID: k})
		}
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	// In batches, so that other twin writers wait for one batch at most.
	failed := map[string]error{}
	for len(ups) > 0 {
		n := min(len(ups), applyBatch)
		f, err := e.st.ApplyConfigurations(ups[:n])
		if err != nil {
			return st, err
		}
		maps.Copy(failed, f)
		st.Updated += n - len(f)
		ups = ups[n:]
	}
	for twin, ferr := range failed {
		cfg := winners[twin]
		applied[cfg]--
		key := twin + "\x00" + cfg
		if e.failed[key] != ferr.Error() {
			e.failed[key] = ferr.Error()
			e.log.Warn().Str("twin", twin).Str("configuration", cfg).Err(ferr).Msg("configuration content cannot be applied")
		}
	}
	custom, err := e.countMetrics(ctx, devCfgs, modCfgs)
	if err != nil {
		return st, err
	}
	for _, list := range [][]*compiled{devCfgs, modCfgs} {
		for _, c := range list {
			e.st.SetConfigurationResults(c.cfg.ID, map[string]int64{
				iothub.MetricTargetedCount: targeted[c.cfg.ID],
				iothub.MetricAppliedCount:  applied[c.cfg.ID],
			}, custom[c.cfg.ID])
		}
	}
	st.Took = time.Since(start)
	e.log.Debug().Int("configurations", st.Configurations).Int("twins", st.Twins).Int("updated", st.Updated).
		Dur("took", st.Took).Msg("configuration pass")
	return st, nil
}

// compile returns the evaluable form of c, cached by etag; nil for a
// configuration that applies nothing here (an edge deployment's
// modulesContent only) or whose queries no longer parse.
func (e *Engine) compile(c iothub.Configuration, order int) *compiled {
	if cc := e.cache[c.ID]; cc != nil && cc.cfg.ETag == c.ETag {
		cc.cfg, cc.order = c, order
		return cc
	}
	modules := len(c.Content.ModuleContent) > 0
	content := c.Content.DeviceContent
	if modules {
		content = c.Content.ModuleContent
	}
	if len(content) == 0 {
		return nil
	}
	target, err := TargetQuery(c.TargetCondition, modules)
	if err != nil {
		e.log.Warn().Str("configuration", c.ID).Err(err).Msg("configuration target condition does not parse; not applied")
		return nil
	}
	patch, err := store.DesiredPatch(content)
	if err != nil {
		e.log.Warn().Str("configuration", c.ID).Err(err).Msg("configuration content is invalid; not applied")
		return nil
	}
	cc := &compiled{cfg: c, order: order, modules: modules, target: target, patch: patch, metrics: map[string]*query.Query{}}
	if c.Metrics != nil {
		for name, text := range c.Metrics.Queries {
			if q, err := MetricQuery(text); err == nil {
				cc.metrics[name] = q
			}
		}
	}
	e.cache[c.ID] = cc
	return cc
}

// countMetrics counts, for every custom metric query, the twins it selects
// now (after this pass's writes), in one scan per collection.
func (e *Engine) countMetrics(ctx context.Context, lists ...[]*compiled) (map[string]map[string]int64, error) {
	type metric struct {
		cfg, name string
		q         *query.Query
	}
	var dev, mod []metric
	out := map[string]map[string]int64{}
	for _, list := range lists {
		for _, c := range list {
			out[c.cfg.ID] = map[string]int64{}
			for name, q := range c.metrics {
				out[c.cfg.ID][name] = 0
				m := metric{cfg: c.cfg.ID, name: name, q: q}
				if q.Collection() == query.CollectionModules {
					mod = append(mod, m)
				} else {
					dev = append(dev, m)
				}
			}
		}
	}
	count := func(ms []metric) func(map[string]any) bool {
		return func(doc map[string]any) bool {
			for _, m := range ms {
				if m.q.Match(doc) {
					out[m.cfg][m.name]++
				}
			}
			return ctx.Err() == nil
		}
	}
	if len(dev) > 0 {
		if err := e.st.ForEachTwinDoc(count(dev)); err != nil {
			return nil, err
		}
	}
	if len(mod) > 0 {
		if err := e.st.ForEachModuleTwinDoc(count(mod)); err != nil {
			return nil, err
		}
	}
	return out, ctx.Err()
}

// twinKey is the store id of the twin doc renders.
func twinKey(doc map[string]any, modules bool) string {
	dev, _ := doc["deviceId"].(string)
	if !modules {
		return dev
	}
	mod, _ := doc["moduleId"].(string)
	return store.ModuleKey(dev, mod)
}

// statuses reads configurations.{id}.status of a twin document.
func statuses(doc map[string]any) map[string]string {
	m, _ := doc["configurations"].(map[string]any)
	out := make(map[string]string, len(m))
	for id, v := range m {
		if o, ok := v.(map[string]any); ok {
			if s, ok := o["status"].(string); ok {
				out[id] = s
			}
		}
	}
	return out
}
