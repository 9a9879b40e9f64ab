package store

import (
	"errors"
	"fmt"
	"maps"

	bolt "go.etcd.io/bbolt"
)

// TwinConfigUpdate is one twin's change by the configuration engine.
type TwinConfigUpdate struct {
	ID      string            // device id, or ModuleKey for a module twin
	Configs map[string]string // the twin's configuration statuses from now on (nil: none)
	Desired map[string]any    // a desired-properties patch to merge first, or nil
}

// ApplyConfigurations commits every update in one transaction, then tells
// the OnDesired subscriber of each desired change, in $version order per
// twin. Twins deleted meanwhile are skipped. An update the twin's limits
// refuse (its desired properties would grow past 32 KB) is left out and
// reported in failed, by id; the others are applied.
func (s *Store) ApplyConfigurations(ups []TwinConfigUpdate) (failed map[string]error, err error) {
	if len(ups) == 0 {
		return nil, nil
	}
	s.dmu.Lock()
	defer s.dmu.Unlock()
	s.wmu.Lock()
	now := s.now().UTC()
	type done struct {
		e      *entry
		change *DesiredChange
	}
	var out []done
	for _, u := range ups {
		cur, gerr := s.get(u.ID)
		if errors.Is(gerr, ErrClosed) {
			s.wmu.Unlock()
			return failed, gerr
		}
		if gerr != nil {
			continue
		}
		r := cur.rec.clone()
		r.Configs = maps.Clone(u.Configs)
		var change *DesiredChange
		if len(u.Desired) > 0 {
			r.DesiredVersion++
			nd := merge(r.Desired, u.Desired, now, r.DesiredVersion)
			if cerr := checkSize("desired properties", nd.value(), MaxPropertiesSize); cerr != nil {
				if failed == nil {
					failed = map[string]error{}
				}
				failed[u.ID] = cerr
				continue
			}
			c, cerr := desiredChange(u.Desired, r.DesiredVersion)
			if cerr != nil {
				if failed == nil {
					failed = map[string]error{}
				}
				failed[u.ID] = cerr
				continue
			}
			r.Desired, change = nd, c
			r.TwinVersion++
		}
		var e *entry
		if change == nil {
			e = &entry{rec: r, devTwin: cur.devTwin}
		} else if e, err = newEntry(r); err != nil {
			s.wmu.Unlock()
			return failed, err
		}
		out = append(out, done{e: e, change: change})
	}
	if len(out) > 0 {
		err = s.db.Update(func(tx *bolt.Tx) error {
			for _, d := range out {
				if err := putRecord(tx, d.e.rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			s.wmu.Unlock()
			return failed, fmt.Errorf("store: write configuration statuses: %w", err)
		}
		s.mu.Lock()
		for _, d := range out {
			s.recs[d.e.rec.ID] = d.e
		}
		s.mu.Unlock()
	}
	s.wmu.Unlock()
	if s.onDesired != nil {
		for _, d := range out {
			if d.change != nil {
				s.onDesired(d.e.rec.ID, d.change.Version, d.change.Patch)
			}
		}
	}
	return failed, nil
}

// ConfiguredTwins returns the keys, sorted, of the device twins (modules
// false) or module twins (ModuleKeys) that carry configuration statuses. It
// reads the records and renders no twin document.
func (s *Store) ConfiguredTwins(modules bool) ([]string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	keys := s.ids
	if modules {
		keys = s.mods
	}
	var out []string
	for _, k := range keys {
		if e := s.recs[k]; e != nil && len(e.rec.Configs) > 0 {
			out = append(out, k)
		}
	}
	return out, nil
}
