package api

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// Module identities live under their device: the store keys them
// "{deviceId}/{moduleId}" (store.ModuleKey). A device id never contains '/',
// so a device route whose id does contain one names no device; deviceID
// answers those with DeviceNotFound instead of letting the store resolve the
// id to a module.

// deviceID returns the {id} path value of a device route, or answers 404
// DeviceNotFound and returns false when it cannot be a device id.
func (s *server) deviceID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if strings.Contains(id, "/") {
		s.failCode(w, iothub.CodeDeviceNotFound, id)
		return "", false
	}
	return id, true
}

// moduleKey returns the store key of the module named by the {id} and {mid}
// path values after checking that the device exists: an unknown device is
// 404 DeviceNotFound, as on IoT Hub, before any module lookup.
func (s *server) moduleKey(w http.ResponseWriter, r *http.Request) (id, mid, key string, ok bool) {
	id, ok = s.deviceID(w, r)
	if !ok {
		return "", "", "", false
	}
	mid = r.PathValue("mid")
	if _, err := s.cfg.Store.Device(id); err != nil {
		s.storeError(w, r, id, err)
		return "", "", "", false
	}
	if strings.Contains(mid, "/") {
		s.failCode(w, iothub.CodeModuleNotFound, moduleNotFoundText(id, mid))
		return "", "", "", false
	}
	return id, mid, store.ModuleKey(id, mid), true
}

func moduleNotFoundText(id, mid string) string {
	return fmt.Sprintf("Module '%s' not found on device '%s'.", mid, id)
}

// putModule serves PUT /devices/{id}/modules/{mid}: create without If-Match,
// update with it.
func (s *server) putModule(w http.ResponseWriter, r *http.Request) {
	// A module id that cannot exist is bad input here, not a missing module.
	if err := store.ValidModuleID(r.PathValue("mid")); err != nil {
		s.storeError(w, r, r.PathValue("id"), err)
		return
	}
	id, mid, _, ok := s.moduleKey(w, r)
	if !ok {
		return
	}
	var m iothub.Module
	if !s.readJSON(w, r, &m) {
		return
	}
	if m.DeviceID == "" {
		m.DeviceID = id
	}
	if m.ModuleID == "" {
		m.ModuleID = mid
	}
	if m.DeviceID != id {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("deviceId %q in the body does not match %q in the path", m.DeviceID, id))
		return
	}
	if m.ModuleID != mid {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("moduleId %q in the body does not match %q in the path", m.ModuleID, mid))
		return
	}
	var (
		out iothub.Module
		err error
	)
	if ifMatch := r.Header.Get("If-Match"); ifMatch == "" {
		out, err = s.cfg.Store.CreateModule(m)
	} else {
		out, err = s.cfg.Store.UpdateModule(m, ifMatch)
	}
	if err != nil {
		s.moduleError(w, r, id, mid, err)
		return
	}
	setETag(w, out.ETag)
	writeJSON(w, http.StatusOK, out)
}

// getModule serves GET /devices/{id}/modules/{mid}.
func (s *server) getModule(w http.ResponseWriter, r *http.Request) {
	id, mid, _, ok := s.moduleKey(w, r)
	if !ok {
		return
	}
	m, err := s.cfg.Store.Module(id, mid)
	if err != nil {
		s.moduleError(w, r, id, mid, err)
		return
	}
	setETag(w, m.ETag)
	writeJSON(w, http.StatusOK, m)
}

// deleteModule serves DELETE /devices/{id}/modules/{mid}; a missing
// If-Match means "*".
func (s *server) deleteModule(w http.ResponseWriter, r *http.Request) {
	id, mid, key, ok := s.moduleKey(w, r)
	if !ok {
		return
	}
	if err := s.cfg.Store.DeleteModule(id, mid, r.Header.Get("If-Match")); err != nil {
		s.moduleError(w, r, id, mid, err)
		return
	}
	s.revoke(key)
	w.WriteHeader(http.StatusNoContent)
}

// listModules serves GET /devices/{id}/modules.
func (s *server) listModules(w http.ResponseWriter, r *http.Request) {
	id, ok := s.deviceID(w, r)
	if !ok {
		return
	}
	ms, err := s.cfg.Store.Modules(id)
	if err != nil {
		s.storeError(w, r, id, err)
		return
	}
	writeJSON(w, http.StatusOK, ms)
}

// revoke tells the device side that an identity (device id or module key)
// may have lost its right to be connected.
func (s *server) revoke(key string) {
	if s.cfg.Devices != nil {
		s.cfg.Devices.Revoke(key)
	}
}
