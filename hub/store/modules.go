package store

import (
	"fmt"
	"slices"
	"strings"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// Modules: a module identity lives beside its device under the key
// "{deviceId}/{moduleId}" — the module's MQTT client id. Every twin method
// (Twin, PatchTwin, ReplaceTwin, DeviceTwin, PatchReported, SetConnected,
// SetModelID, Touch) takes either a device id or such a key. Devices, Count
// and the device queries never see modules; ForEachModuleTwinDoc does.

// ModuleKey is the store key (and MQTT client id) of a module.
func ModuleKey(deviceID, moduleID string) string { return iothub.ClientID(deviceID, moduleID) }

// ValidModuleID checks IoT Hub's module id rules, the same as a device id's.
func ValidModuleID(id string) error {
	if err := iothub.CheckID(id); err != nil {
		return invalid("moduleId %q %v", id, err)
	}
	return nil
}

// moduleKeys returns the module keys of device id from the sorted keys.
func moduleKeys(mods []string, id string) []string {
	prefix := id + "/"
	i, _ := slices.BinarySearch(mods, prefix)
	var out []string
	for ; i < len(mods) && strings.HasPrefix(mods[i], prefix); i++ {
		out = append(out, mods[i])
	}
	return out
}

// module renders the identity of a module record.
func (s *Store) module(r *record) iothub.Module {
	d := s.device(r)
	return iothub.Module{
		ModuleID:                   r.Mod,
		ManagedBy:                  r.ManagedBy,
		DeviceID:                   r.deviceID(),
		GenerationID:               d.GenerationID,
		ETag:                       d.ETag,
		ConnectionState:            d.ConnectionState,
		ConnectionStateUpdatedTime: d.ConnectionStateUpdatedTime,
		LastActivityTime:           d.LastActivityTime,
		CloudToDeviceMessageCount:  d.CloudToDeviceMessageCount,
		Authentication:             d.Authentication,
	}
}

func moduleAsDevice(m iothub.Module) iothub.Device {
	return iothub.Device{DeviceID: m.DeviceID, Status: statusEnabled, Authentication: m.Authentication}
}

// CreateModule registers module m.ModuleID on device m.DeviceID with a new
// module twin. Missing symmetric keys are generated. ErrNotFound if the
// device does not exist, ErrModuleExists if the module does.
func (s *Store) CreateModule(m iothub.Module) (iothub.Module, error) {
	if err := ValidDeviceID(m.DeviceID); err != nil {
		return iothub.Module{}, err
	}
	if err := ValidModuleID(m.ModuleID); err != nil {
		return iothub.Module{}, err
	}
	now := s.now().UTC()
	key := ModuleKey(m.DeviceID, m.ModuleID)
	r := newRecord(key, m.ModuleID, now)
	r.ManagedBy = m.ManagedBy
	if err := applyIdentity(r, moduleAsDevice(m), now, true); err != nil {
		return iothub.Module{}, err
	}
	e, err := newEntry(r)
	if err != nil {
		return iothub.Module{}, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	closed, dev, exists := s.closed, s.recs[m.DeviceID], s.recs[key] != nil
	s.mu.RUnlock()
	switch {
	case closed:
		return iothub.Module{}, ErrClosed
	case dev == nil:
		return iothub.Module{}, fmt.Errorf("%w: %q", ErrNotFound, m.DeviceID)
	case exists:
		return iothub.Module{}, fmt.Errorf("%w: %q on device %q", ErrModuleExists, m.ModuleID, m.DeviceID)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return putRecord(tx, r) }); err != nil {
		return iothub.Module{}, err
	}
	s.mu.Lock()
	s.recs[key] = e
	s.mods = insertID(s.mods, key)
	s.mu.Unlock()
	return s.module(r), nil
}

// UpdateModule changes the authentication and managedBy of an existing
// module. ifMatch is "", "*" or the module's etag (ErrPrecondition).
func (s *Store) UpdateModule(m iothub.Module, ifMatch string) (iothub.Module, error) {
	if err := ValidModuleID(m.ModuleID); err != nil {
		return iothub.Module{}, err
	}
	now := s.now().UTC()
	e, err := s.mutate(ModuleKey(m.DeviceID, m.ModuleID), func(r *record) error {
		if !ETagMatches(ifMatch, identityETag(r.IdentityVer)) {
			return fmt.Errorf("%w: module %q has etag %q", ErrPrecondition, r.ID, identityETag(r.IdentityVer))
		}
		if err := applyIdentity(r, moduleAsDevice(m), now, false); err != nil {
			return err
		}
		if m.ManagedBy != "" {
			r.ManagedBy = m.ManagedBy
		}
		r.IdentityVer++
		return nil
	})
	if err != nil {
		return iothub.Module{}, err
	}
	return s.module(e.rec), nil
}

// Module returns the identity of a module (ErrModuleNotFound).
func (s *Store) Module(deviceID, moduleID string) (iothub.Module, error) {
	e, err := s.get(ModuleKey(deviceID, moduleID))
	if err != nil {
		return iothub.Module{}, err
	}
	return s.module(e.rec), nil
}

// Modules lists the modules of a device in module id order (ErrNotFound if
// the device does not exist).
func (s *Store) Modules(deviceID string) ([]iothub.Module, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	if s.recs[deviceID] == nil || strings.Contains(deviceID, "/") {
		s.mu.RUnlock()
		return nil, fmt.Errorf("%w: %q", ErrNotFound, deviceID)
	}
	keys := moduleKeys(s.mods, deviceID)
	recs := make([]*record, 0, len(keys))
	for _, k := range keys {
		recs = append(recs, s.recs[k].rec)
	}
	s.mu.RUnlock()
	out := make([]iothub.Module, 0, len(recs))
	for _, r := range recs {
		out = append(out, s.module(r))
	}
	return out, nil
}

// DeleteModule removes a module and its twin. ifMatch is "", "*" or the
// module's etag.
func (s *Store) DeleteModule(deviceID, moduleID, ifMatch string) error {
	key := ModuleKey(deviceID, moduleID)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur, err := s.get(key)
	if err != nil {
		return err
	}
	if !ETagMatches(ifMatch, identityETag(cur.rec.IdentityVer)) {
		return fmt.Errorf("%w: module %q has etag %q", ErrPrecondition, key, identityETag(cur.rec.IdentityVer))
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).Delete([]byte(key))
	}); err != nil {
		return fmt.Errorf("store: delete module %q: %w", key, err)
	}
	s.mu.Lock()
	delete(s.recs, key)
	s.mods = removeID(s.mods, key)
	s.mu.Unlock()
	s.takeTouched(key)
	return nil
}

// ModuleCount returns the number of registered modules.
func (s *Store) ModuleCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.mods)
}

// ForEachModuleTwinDoc is ForEachTwinDoc for module twins, in key order
// (device id, then module id); each document carries deviceId and moduleId.
func (s *Store) ForEachModuleTwinDoc(fn func(doc map[string]any) bool) error {
	return s.forEachDoc(func() []string { return s.mods }, fn)
}
