// Package store keeps the local hub's state — shared access policies, the
// identity registry, device twins, jobs with their per-device rows, and
// automatic configurations — in a bbolt file.
//
// Every mutating method commits (and fsyncs) its bbolt transaction before it
// returns, so whatever the hub has acknowledged survives a crash. The only
// exception is Touch, which records activity in memory and is written out
// with the device's next durable change, by FlushActivity, or on Close.
//
// Twin documents are checked against IoT Hub's limits (protocol.md §4.8).
// Every violation, including a section over its size limit, is a
// *ValidationError with code 400004 (ArgumentInvalid, HTTP 400), as the real
// hub answers 400 for oversized twins; malformed JSON is 400006.
//
// Reads are served from an in-memory copy of the committed state: each device
// is held as an immutable snapshot that writers replace after their
// transaction has committed, so readers never wait for a disk write.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// Sentinel errors; callers match them with errors.Is.
var (
	ErrNotFound       = errors.New("store: device not found")
	ErrExists         = errors.New("store: device already exists")
	ErrModuleNotFound = errors.New("store: module not found")
	ErrModuleExists   = errors.New("store: module already exists")
	ErrPrecondition   = errors.New("store: etag does not match")
	ErrPolicyNotFound = errors.New("store: policy not found")
	ErrClosed         = errors.New("store: closed")
)

// ValidationError reports input the hub refuses. Code is an IoT Hub error
// code (iothub.Code*); the HTTP status is Code/1000. Msg never contains a key.
type ValidationError struct {
	Code int
	Msg  string
}

func (e *ValidationError) Error() string { return "store: invalid input: " + e.Msg }

func invalid(format string, args ...any) error {
	return &ValidationError{Code: iothub.CodeArgumentInvalid, Msg: fmt.Sprintf(format, args...)}
}

var (
	bucketPolicies = []byte("policies")
	bucketDevices  = []byte("devices")
	bucketMeta     = []byte("meta")
)

// schemaVersion is stored under meta/schema; Open refuses files written by a
// newer layout.
const schemaVersion = "1"

// Store is the hub's durable state. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	now func() time.Time

	policies map[string]Policy // read-only after Open

	wmu sync.Mutex // serialises writers: read snapshot, commit, publish

	mu     sync.RWMutex
	recs   map[string]*entry
	ids    []string // sorted device ids; replaced, never modified in place
	mods   []string // sorted module keys "{device}/{module}"; likewise
	closed bool

	tmu     sync.Mutex
	touched map[string]time.Time // activity not yet written to disk

	// dmu is held by every desired-properties write from before it commits
	// until onDesired has returned, so that each device is told of its
	// patches in $version order.
	dmu       sync.Mutex
	onDesired DesiredFunc // guarded by dmu

	cfg configState // automatic configurations (configurations.go)
}

// DesiredFunc is told of a desired-properties change of a device: patch is
// the body for $iothub/twin/PATCH/properties/desired/?$version=version.
// It runs while the store holds its desired-write lock, so it must not write
// desired properties itself, and it should not block for long.
type DesiredFunc func(deviceID string, version int64, patch []byte)

// OnDesired registers fn as the one subscriber to desired-property changes
// (the broker, which pushes them to connected devices); nil removes it.
// PatchTwin and ReplaceTwin call it after each write that changed desired
// properties, in $version order for every device.
func (s *Store) OnDesired(fn DesiredFunc) {
	s.dmu.Lock()
	s.onDesired = fn
	s.dmu.Unlock()
}

// writeDesired runs a twin write under the desired-write lock and tells the
// subscriber of the change it made, if any.
func (s *Store) writeDesired(id string, write func() (iothub.Twin, *DesiredChange, error)) (iothub.Twin, *DesiredChange, error) {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	t, change, err := write()
	if err == nil && change != nil && s.onDesired != nil {
		s.onDesired(id, change.Version, change.Patch)
	}
	return t, change, err
}

// entry is the published, immutable view of one device.
type entry struct {
	rec     *record
	devTwin []byte // device-side twin document, rendered once per change

	// qdoc caches the query document of rec (see TwinDocs). An entry is
	// replaced on every write, so the cache never outlives its record.
	qdoc atomic.Pointer[queryDoc]
}

// InUse reports whether a store at path is open in some process now: it
// holds the file's lock. A missing file is not in use.
func InUse(path string) bool {
	if _, err := os.Stat(path); err != nil {
		return false
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 100 * time.Millisecond})
	if err != nil {
		return errors.Is(err, bolt.ErrTimeout)
	}
	_ = db.Close()
	return false
}

// Open opens (creating if needed) the bbolt file at path. now is the clock
// (nil means time.Now). On first open the default policies are created with
// random keys; they are kept across restarts. Devices recorded as connected
// by a previous run are marked disconnected.
func Open(path string, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("store: create data folder: %w", err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("store: open %s: the file is locked (is another hub using this data folder?): %w", path, err)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{
		db:       db,
		now:      now,
		policies: map[string]Policy{},
		recs:     map[string]*entry{},
		touched:  map[string]time.Time{},
	}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) load() error {
	t := s.now().UTC()
	return s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return fmt.Errorf("store: init: %w", err)
		}
		if v := meta.Get([]byte("schema")); v == nil {
			if err := meta.Put([]byte("schema"), []byte(schemaVersion)); err != nil {
				return fmt.Errorf("store: init: %w", err)
			}
		} else if string(v) != schemaVersion {
			return fmt.Errorf("store: data file has schema %q, this hub understands %q", v, schemaVersion)
		}
		pb, err := tx.CreateBucketIfNotExists(bucketPolicies)
		if err != nil {
			return fmt.Errorf("store: init: %w", err)
		}
		for _, dp := range defaultPolicies {
			if pb.Get([]byte(dp.Name)) != nil {
				continue
			}
			p := Policy{Name: dp.Name, PrimaryKey: newKey(), SecondaryKey: newKey(), Rights: dp.Rights}
			b, err := json.Marshal(p)
			if err != nil {
				return err
			}
			if err := pb.Put([]byte(p.Name), b); err != nil {
				return fmt.Errorf("store: create policy %s: %w", p.Name, err)
			}
		}
		if err := pb.ForEach(func(k, v []byte) error {
			var p Policy
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("store: policy %q: %w", k, err)
			}
			s.policies[p.Name] = p
			return nil
		}); err != nil {
			return err
		}
		db, err := tx.CreateBucketIfNotExists(bucketDevices)
		if err != nil {
			return fmt.Errorf("store: init: %w", err)
		}
		var stale []*record
		if err := db.ForEach(func(k, v []byte) error {
			r, err := decodeRecord(v)
			if err != nil {
				return fmt.Errorf("store: device %q: %w", k, err)
			}
			if r.ConnState == stateConnected {
				r.ConnState = stateDisconnected
				r.ConnUpdated = t
				stale = append(stale, r)
			}
			e, err := newEntry(r)
			if err != nil {
				return fmt.Errorf("store: device %q: %w", k, err)
			}
			s.recs[r.ID] = e
			if r.Mod != "" {
				s.mods = append(s.mods, r.ID)
			} else {
				s.ids = append(s.ids, r.ID)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, r := range stale {
			if err := putRecord(tx, r); err != nil {
				return err
			}
		}
		sort.Strings(s.ids) // bbolt order is byte order already; keep the invariant explicit
		sort.Strings(s.mods)
		return nil
	})
}

// Close writes pending activity times and closes the file. Later calls fail
// with ErrClosed.
func (s *Store) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	flushErr := s.flushTouched()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return flushErr
}

// FlushActivity writes pending activity times (see Touch) to disk. The hub
// may call it periodically to bound what a crash can lose of them.
func (s *Store) FlushActivity() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	return s.flushTouched()
}

// flushTouched writes every pending activity time and publishes the
// updated records; the caller holds wmu.
func (s *Store) flushTouched() error {
	s.tmu.Lock()
	pending := maps.Clone(s.touched)
	s.tmu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	var entries []*entry
	for id, at := range pending {
		e := s.recs[id]
		if e == nil || !at.After(e.rec.LastActivity) {
			continue
		}
		r := e.rec.clone()
		r.LastActivity = at
		entries = append(entries, &entry{rec: r, devTwin: e.devTwin})
	}
	if err := s.putEntries(entries); err != nil {
		return fmt.Errorf("store: write activity times: %w", err)
	}
	// Forget what is now on disk, unless it was touched again meanwhile.
	s.tmu.Lock()
	for id, at := range pending {
		if s.touched[id].Equal(at) {
			delete(s.touched, id)
		}
	}
	s.tmu.Unlock()
	return nil
}

// get returns the published entry for id.
func (s *Store) get(id string) (*entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	e := s.recs[id]
	if e == nil {
		if dev, mod, ok := strings.Cut(id, "/"); ok {
			return nil, fmt.Errorf("%w: %q on device %q", ErrModuleNotFound, mod, dev)
		}
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return e, nil
}

// lastActivity is the later of the durable and the pending activity time.
func (s *Store) lastActivity(r *record) time.Time {
	s.tmu.Lock()
	t, ok := s.touched[r.ID]
	s.tmu.Unlock()
	if ok && t.After(r.LastActivity) {
		return t
	}
	return r.LastActivity
}

// takeTouched removes and returns the pending activity time of id.
func (s *Store) takeTouched(id string) time.Time {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	t := s.touched[id]
	delete(s.touched, id)
	return t
}

// mutate runs fn on a copy of device id's record, commits the result and
// publishes it. fn may return errSkip to leave the record unchanged.
func (s *Store) mutate(id string, fn func(r *record) error) (*entry, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur, err := s.get(id)
	if err != nil {
		return nil, err
	}
	r := cur.rec.clone()
	if err := fn(r); err != nil {
		if errors.Is(err, errSkip) {
			return cur, nil
		}
		return nil, err
	}
	s.tmu.Lock()
	touched := s.touched[id]
	s.tmu.Unlock()
	if touched.After(r.LastActivity) {
		r.LastActivity = touched
	}
	var e *entry
	if r.Desired == cur.rec.Desired && r.Reported == cur.rec.Reported &&
		r.DesiredVersion == cur.rec.DesiredVersion && r.ReportedVersion == cur.rec.ReportedVersion {
		e = &entry{rec: r, devTwin: cur.devTwin} // device view unchanged
	} else if e, err = newEntry(r); err != nil {
		return nil, err
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return putRecord(tx, r) }); err != nil {
		return nil, fmt.Errorf("store: write device %q: %w", id, err)
	}
	s.mu.Lock()
	s.recs[id] = e
	s.mu.Unlock()
	if !touched.IsZero() {
		s.tmu.Lock()
		if s.touched[id].Equal(touched) {
			delete(s.touched, id)
		}
		s.tmu.Unlock()
	}
	return e, nil
}

// mutateAll is mutate for many records in one transaction; ids not found,
// and records fn skips (errSkip), are left out. It only writes fields of
// the registry record (not the twin's desired or reported documents).
func (s *Store) mutateAll(ids []string, fn func(r *record) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var entries []*entry
	var touched []time.Time
	for _, id := range ids {
		cur, err := s.get(id)
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			continue // deleted meanwhile
		}
		r := cur.rec.clone()
		if err := fn(r); err != nil {
			if errors.Is(err, errSkip) {
				continue
			}
			return err
		}
		s.tmu.Lock()
		t := s.touched[id]
		s.tmu.Unlock()
		if t.After(r.LastActivity) {
			r.LastActivity = t
		}
		entries = append(entries, &entry{rec: r, devTwin: cur.devTwin})
		touched = append(touched, t)
	}
	if err := s.putEntries(entries); err != nil {
		return fmt.Errorf("store: write %d devices: %w", len(entries), err)
	}
	s.tmu.Lock()
	for i, e := range entries {
		if id := e.rec.ID; !touched[i].IsZero() && s.touched[id].Equal(touched[i]) {
			delete(s.touched, id)
		}
	}
	s.tmu.Unlock()
	return nil
}

// putEntries writes the records of entries in one transaction, then
// publishes the entries; the caller holds wmu.
func (s *Store) putEntries(entries []*entry) error {
	if len(entries) == 0 {
		return nil
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, e := range entries {
			if err := putRecord(tx, e.rec); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	s.mu.Lock()
	for _, e := range entries {
		s.recs[e.rec.ID] = e
	}
	s.mu.Unlock()
	return nil
}

var errSkip = errors.New("store: no change")

func putRecord(tx *bolt.Tx, r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encode device %q: %w", r.ID, err)
	}
	if err := tx.Bucket(bucketDevices).Put([]byte(r.ID), b); err != nil {
		return fmt.Errorf("store: write device %q: %w", r.ID, err)
	}
	return nil
}

func decodeRecord(b []byte) (*record, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var r record
	if err := d.Decode(&r); err != nil {
		return nil, err
	}
	if r.Desired == nil {
		r.Desired = &node{Kids: map[string]*node{}}
	}
	if r.Reported == nil {
		r.Reported = &node{Kids: map[string]*node{}}
	}
	if r.Tags == nil {
		r.Tags = map[string]any{}
	}
	return &r, nil
}

// insertID returns a copy of ids with id inserted in order.
func insertID(ids []string, id string) []string {
	i, _ := slices.BinarySearch(ids, id)
	out := make([]string, 0, len(ids)+1)
	out = append(out, ids[:i]...)
	out = append(out, id)
	return append(out, ids[i:]...)
}

// removeID returns a copy of ids without id.
func removeID(ids []string, id string) []string {
	i, ok := slices.BinarySearch(ids, id)
	if !ok {
		return ids
	}
	out := make([]string, 0, len(ids)-1)
	out = append(out, ids[:i]...)
	return append(out, ids[i+1:]...)
}
