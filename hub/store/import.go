package store

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// Error codes of a bulk registry entry (DeviceRegistryOperationError.ErrorCode):
// IoT Hub's symbolic names.
const (
	ImportErrArgumentInvalid            = "ArgumentInvalid"
	ImportErrDeviceAlreadyExists        = "DeviceAlreadyExists"
	ImportErrDeviceNotFound             = "DeviceNotFound"
	ImportErrModuleAlreadyExists        = "ModuleAlreadyExistsOnDevice"
	ImportErrModuleNotFound             = "ModuleNotFound"
	ImportErrPreconditionFailed         = "PreconditionFailed"
	ImportErrDeviceDefinedMultipleTimes = "DeviceDefinedMultipleTimes"
)

// ImportMode returns the canonical import mode for m, matched
// case-insensitively (the Node service SDK sends "Update" and "Delete"),
// and whether it is one Import applies.
func ImportMode(m string) (string, bool) {
	for _, c := range []string{iothub.ImportCreate, iothub.ImportUpdate, iothub.ImportUpdateIfMatchETag,
		iothub.ImportDelete, iothub.ImportDeleteIfMatchETag} {
		if strings.EqualFold(m, c) {
			return c, true
		}
	}
	return "", false
}

// Import applies a bulk registry request: every entry creates, updates or
// deletes one device (or, with ModuleID set, one module) as its ImportMode
// says, in request order, so that an entry sees the entries before it. An
// entry that cannot be applied is reported in the result's Errors and the
// others still apply; IsSuccessful is true only when none failed.
//
// All applied entries are committed in one bbolt transaction (one fsync for
// the whole request) and published together after it; when the commit
// fails nothing is applied and the error is returned. Deleting a device
// deletes its modules.
func (s *Store) Import(ops []iothub.ExportImportDevice) (iothub.BulkRegistryOperationResult, error) {
	now := s.now().UTC()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return iothub.BulkRegistryOperationResult{}, ErrClosed
	}
	b := &batch{s: s, now: now, cur: s.recs, mods: s.mods, next: map[string]*record{}}
	s.mu.RUnlock()
	// s.recs and s.mods only change under wmu, which is held: reading them
	// here without mu is safe.

	res := iothub.BulkRegistryOperationResult{
		Errors:   []iothub.DeviceRegistryOperationError{},
		Warnings: []iothub.DeviceRegistryOperationWarning{},
	}
	seen := map[string]bool{}
	for _, op := range ops {
		mode, _ := ImportMode(op.ImportMode)
		fail := func(code, format string, args ...any) {
			res.Errors = append(res.Errors, iothub.DeviceRegistryOperationError{
				DeviceID: op.ID, ModuleID: op.ModuleID, ErrorCode: code,
				ErrorStatus: fmt.Sprintf(format, args...), Operation: mode,
			})
		}
		if mode == "" {
			fail(ImportErrArgumentInvalid, "importMode %q is not one of create, update, updateIfMatchETag, delete, deleteIfMatchETag", op.ImportMode)
			continue
		}
		key := op.ID
		if op.ModuleID != "" {
			key = ModuleKey(op.ID, op.ModuleID)
		}
		if seen[key] {
			if op.ModuleID != "" {
				fail(ImportErrDeviceDefinedMultipleTimes, "Module '%s' of device '%s' appears more than once in the request.", op.ModuleID, op.ID)
			} else {
				fail(ImportErrDeviceDefinedMultipleTimes, "Device '%s' appears more than once in the request.", op.ID)
			}
			continue
		}
		seen[key] = true
		if code, msg := b.apply(mode, key, op); code != "" {
			fail(code, "%s", msg)
		}
	}
	res.IsSuccessful = len(res.Errors) == 0
	if err := b.commit(); err != nil {
		return iothub.BulkRegistryOperationResult{}, err
	}
	return res, nil
}

// batch is the registry as a bulk request sees it while it runs: the
// published records overlaid with the request's own changes.
type batch struct {
	s    *Store
	now  time.Time
	cur  map[string]*entry  // published state (read-only)
	mods []string           // published module keys (read-only)
	next map[string]*record // changed keys: the new record, nil when deleted
	keys []string           // changed keys in first-change order
}

func (b *batch) lookup(key string) *record {
	if r, ok := b.next[key]; ok {
		return r
	}
	if e := b.cur[key]; e != nil {
		return e.rec
	}
	return nil
}

func (b *batch) set(key string, r *record) {
	if _, ok := b.next[key]; !ok {
		b.keys = append(b.keys, key)
	}
	b.next[key] = r
}

// moduleKeys returns the module keys of device id in the batch's view.
func (b *batch) moduleKeys(id string) []string {
	var out []string
	for _, k := range moduleKeys(b.mods, id) {
		if b.lookup(k) != nil {
			out = append(out, k)
		}
	}
	prefix := id + "/"
	for _, k := range b.keys {
		if _, published := b.cur[k]; !published && strings.HasPrefix(k, prefix) && b.next[k] != nil {
			out = append(out, k)
		}
	}
	return out
}

// apply applies one entry; it returns an error code and text when the
// entry cannot be applied.
func (b *batch) apply(mode, key string, op iothub.ExportImportDevice) (code, msg string) {
	isModule := op.ModuleID != ""
	if err := ValidDeviceID(op.ID); err != nil {
		return ImportErrArgumentInvalid, validationText(err)
	}
	if isModule {
		if err := ValidModuleID(op.ModuleID); err != nil {
			return ImportErrArgumentInvalid, validationText(err)
		}
		if b.lookup(op.ID) == nil {
			return ImportErrDeviceNotFound, fmt.Sprintf("Device '%s' not found.", op.ID)
		}
	}
	cur := b.lookup(key)
	missing := func() (string, string) {
		if isModule {
			return ImportErrModuleNotFound, fmt.Sprintf("Module '%s' not found on device '%s'.", op.ModuleID, op.ID)
		}
		return ImportErrDeviceNotFound, fmt.Sprintf("Device '%s' not found.", op.ID)
	}
	ifMatch := "*"
	if mode == iothub.ImportUpdateIfMatchETag || mode == iothub.ImportDeleteIfMatchETag {
		if strings.TrimSpace(op.ETag) == "" {
			return ImportErrArgumentInvalid, fmt.Sprintf("importMode %s needs the identity's eTag", mode)
		}
		ifMatch = op.ETag
	}
	switch mode {
	case iothub.ImportCreate:
		if cur != nil {
			if isModule {
				return ImportErrModuleAlreadyExists, fmt.Sprintf("A module with ID '%s' is already registered on device '%s'.", op.ModuleID, op.ID)
			}
			return ImportErrDeviceAlreadyExists, fmt.Sprintf("A device with ID '%s' is already registered.", op.ID)
		}
		r := newRecord(key, op.ModuleID, b.now)
		if err := applyIdentity(r, importIdentity(op), b.now, true); err != nil {
			return ImportErrArgumentInvalid, validationText(err)
		}
		b.set(key, r)
	case iothub.ImportUpdate, iothub.ImportUpdateIfMatchETag:
		if cur == nil {
			return missing()
		}
		if !ETagMatches(ifMatch, identityETag(cur.IdentityVer)) {
			return ImportErrPreconditionFailed, fmt.Sprintf("eTag %q does not match the identity's eTag %q.", op.ETag, identityETag(cur.IdentityVer))
		}
		r := cur.clone()
		if err := applyIdentity(r, importIdentity(op), b.now, false); err != nil {
			return ImportErrArgumentInvalid, validationText(err)
		}
		r.IdentityVer++
		b.set(key, r)
	case iothub.ImportDelete, iothub.ImportDeleteIfMatchETag:
		if cur == nil {
			return missing()
		}
		if !ETagMatches(ifMatch, identityETag(cur.IdentityVer)) {
			return ImportErrPreconditionFailed, fmt.Sprintf("eTag %q does not match the identity's eTag %q.", op.ETag, identityETag(cur.IdentityVer))
		}
		if !isModule {
			for _, k := range b.moduleKeys(op.ID) {
				b.set(k, nil)
			}
		}
		b.set(key, nil)
	}
	return "", ""
}

// importIdentity is the identity an entry writes; a module's is always
// enabled.
func importIdentity(op iothub.ExportImportDevice) iothub.Device {
	if op.ModuleID != "" {
		return moduleAsDevice(iothub.Module{DeviceID: op.ID, Authentication: op.Authentication})
	}
	return iothub.Device{
		DeviceID:       op.ID,
		Status:         op.Status,
		StatusReason:   op.StatusReason,
		Authentication: op.Authentication,
		Capabilities:   op.Capabilities,
		DeviceScope:    op.DeviceScope,
		ParentScopes:   op.ParentScopes,
	}
}

// newRecord is the record of a new identity with an empty twin.
func newRecord(key, moduleID string, now time.Time) *record {
	return &record{
		ID:              key,
		Mod:             moduleID,
		GenerationID:    newGenerationID(),
		ConnState:       stateDisconnected,
		TwinVersion:     1,
		Tags:            map[string]any{},
		Desired:         &node{Kids: map[string]*node{}, At: now, Ver: 1},
		DesiredVersion:  1,
		Reported:        &node{Kids: map[string]*node{}, At: now},
		ReportedVersion: 1,
	}
}

func validationText(err error) string {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Msg
	}
	return err.Error()
}

// commit writes the batch's changes in one transaction and publishes them.
// The caller holds wmu.
func (b *batch) commit() error {
	if len(b.keys) == 0 {
		return nil
	}
	s := b.s
	entries := make(map[string]*entry, len(b.keys))
	touched := map[string]time.Time{}
	for _, k := range b.keys {
		r := b.next[k]
		if r == nil {
			continue
		}
		if old := b.cur[k]; old != nil {
			// An update: carry the pending activity time into the write,
			// as every durable change does; the twin sections are
			// unchanged, and so is the device-side document.
			s.tmu.Lock()
			t := s.touched[k]
			s.tmu.Unlock()
			if t.After(r.LastActivity) {
				r.LastActivity = t
				touched[k] = t
			}
			entries[k] = &entry{rec: r, devTwin: old.devTwin}
			continue
		}
		e, err := newEntry(r)
		if err != nil {
			return err
		}
		entries[k] = e
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketDevices)
		for _, k := range b.keys {
			if r := b.next[k]; r != nil {
				if err := putRecord(tx, r); err != nil {
					return err
				}
				continue
			}
			if err := bk.Delete([]byte(k)); err != nil {
				return fmt.Errorf("store: delete %q: %w", k, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: bulk registry write: %w", err)
	}
	s.mu.Lock()
	ids, mods := s.ids, s.mods
	for _, k := range b.keys {
		_, existed := b.cur[k]
		isModule := strings.Contains(k, "/")
		switch e := entries[k]; {
		case e != nil:
			s.recs[k] = e
			if !existed {
				if isModule {
					mods = insertID(mods, k)
				} else {
					ids = insertID(ids, k)
				}
			}
		case existed:
			delete(s.recs, k)
			if isModule {
				mods = removeID(mods, k)
			} else {
				ids = removeID(ids, k)
			}
		}
	}
	s.ids, s.mods = ids, mods
	s.mu.Unlock()
	for _, k := range b.keys {
		if b.next[k] == nil {
			s.takeTouched(k)
		}
	}
	s.tmu.Lock()
	for k, t := range touched {
		if s.touched[k].Equal(t) {
			delete(s.touched, k)
		}
	}
	s.tmu.Unlock()
	return nil
}
