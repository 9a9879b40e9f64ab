package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// queryDoc is the query document of one record, rendered with the given
// lastActivityTime (the only field that changes without a write).
type queryDoc struct {
	at  time.Time
	doc map[string]any
}

// ForEachTwinDoc calls fn with the query document of every twin in device id
// order until fn returns false. It works on a snapshot taken at the start.
//
// A query document is the twin's service view (what Twin returns) as a
// client decodes it: the JSON object decoded by encoding/json with
// UseNumber. Documents are cached per stored version and shared between
// callers: fn must not modify them or anything they contain.
func (s *Store) ForEachTwinDoc(fn func(doc map[string]any) bool) error {
	return s.ForEachTwinDocAfter("", fn)
}

// ForEachTwinDocAfter is ForEachTwinDoc for the twins whose device id sorts
// after the given one (byte order), so that a scan can resume where an
// earlier one stopped.
func (s *Store) ForEachTwinDocAfter(after string, fn func(doc map[string]any) bool) error {
	return s.forEachDoc(func() []string {
		ids := s.ids
		if after != "" {
			i, found := slices.BinarySearch(ids, after)
			if found {
				i++
			}
			ids = ids[i:]
		}
		return ids
	}, fn)
}

// forEachDoc calls fn with the query documents of the records whose keys
// pick returns (it runs under the read lock and returns a sorted key list
// of the store's), from one snapshot, until fn returns false.
func (s *Store) forEachDoc(pick func() []string, fn func(doc map[string]any) bool) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	keys := pick()
	entries := make([]*entry, 0, len(keys))
	for _, k := range keys {
		entries = append(entries, s.recs[k])
	}
	s.mu.RUnlock()
	for _, e := range entries {
		doc, err := s.queryDoc(e)
		if err != nil {
			return err
		}
		if !fn(doc) {
			break
		}
	}
	return nil
}

// TwinDocs returns the query documents (see ForEachTwinDoc) of the twins
// of ids, in the order of ids, from one snapshot. Unknown ids are skipped.
// The documents are shared: callers must not modify them.
func (s *Store) TwinDocs(ids []string) ([]map[string]any, error) {
	entries, err := s.snapshot(ids)
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(entries))
	for _, e := range entries {
		doc, err := s.queryDoc(e)
		if err != nil {
			return nil, err
		}
		out = append(out, doc)
	}
	return out, nil
}

// snapshot returns the published entries of ids (unknown ones skipped) under
// one read lock.
func (s *Store) snapshot(ids []string) ([]*entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	out := make([]*entry, 0, len(ids))
	for _, id := range ids {
		if e := s.recs[id]; e != nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// queryDoc returns e's query document, rendering it on first use. When only
// the pending activity time changed since it was rendered, the cached
// document is copied shallowly with the new lastActivityTime.
func (s *Store) queryDoc(e *entry) (map[string]any, error) {
	at := s.lastActivity(e.rec)
	c := e.qdoc.Load()
	if c != nil && c.at.Equal(at) {
		return c.doc, nil
	}
	var doc map[string]any
	if c != nil {
		doc = maps.Clone(c.doc)
		doc["lastActivityTime"] = iothub.FormatTime(at)
	} else {
		t := s.twin(e.rec)
		t.LastActivityTime = iothub.FormatTime(at)
		b, err := json.Marshal(t)
		if err != nil {
			return nil, fmt.Errorf("store: render twin %q: %w", e.rec.ID, err)
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(&doc); err != nil {
			return nil, fmt.Errorf("store: render twin %q: %w", e.rec.ID, err)
		}
	}
	e.qdoc.Store(&queryDoc{at: at, doc: doc})
	return doc, nil
}
