package api

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// putDevice serves PUT /devices/{id}: create without If-Match, update with it.
func (s *server) putDevice(w http.ResponseWriter, r *http.Request) {
	// The store refuses ids with '/' (400), so a module key cannot reach
	// a module's record here.
	id := r.PathValue("id")
	var d iothub.Device
	if !s.readJSON(w, r, &d) {
		return
	}
	if d.DeviceID == "" {
		d.DeviceID = id
	}
	if d.DeviceID != id {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("deviceId %q in the body does not match %q in the path", d.DeviceID, id))
		return
	}
	var (
		out iothub.Device
		err error
	)
	if ifMatch := r.Header.Get("If-Match"); ifMatch == "" {
		out, err = s.cfg.Store.CreateDevice(d)
	} else {
		out, err = s.cfg.Store.UpdateDevice(d, ifMatch)
	}
	if err != nil {
		s.storeError(w, r, id, err)
		return
	}
	// A device disabled by this update loses its connection at once, as
	// on IoT Hub, and so do its modules (Revoke of a device id checks its
	// connected modules too).
	s.revoke(id)
	setETag(w, out.ETag)
	writeJSON(w, http.StatusOK, out)
}

// getDevice serves GET /devices/{id}.
func (s *server) getDevice(w http.ResponseWriter, r *http.Request) {
	id, ok := s.deviceID(w, r)
	if !ok {
		return
	}
	d, err := s.cfg.Store.Device(id)
	if err != nil {
		s.storeError(w, r, id, err)
		return
	}
	setETag(w, d.ETag)
	writeJSON(w, http.StatusOK, d)
}

// deleteDevice serves DELETE /devices/{id}; a missing If-Match means "*".
func (s *server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	id, ok := s.deviceID(w, r)
	if !ok {
		return
	}
	// The delete takes the modules with it; revoking the device id
	// disconnects every connected module of it as well, including one
	// created since any listing.
	if err := s.cfg.Store.DeleteDevice(id, r.Header.Get("If-Match")); err != nil {
		s.storeError(w, r, id, err)
		return
	}
	s.revoke(id)
	w.WriteHeader(http.StatusNoContent)
}

// listDevices serves GET /devices?top=N (1–1000, default 1000).
func (s *server) listDevices(w http.ResponseWriter, r *http.Request) {
	top := store.MaxList
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxList {
			s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("top must be an integer between 1 and %d", store.MaxList))
			return
		}
		top = n
	}
	ds, err := s.cfg.Store.Devices(top)
	if err != nil {
		s.storeError(w, r, "", err)
		return
	}
	writeJSON(w, http.StatusOK, ds)
}
