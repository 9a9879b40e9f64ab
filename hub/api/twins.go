package api

import (
	"net/http"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

func setETag(w http.ResponseWriter, etag string) {
	if etag != "" {
		w.Header().Set("ETag", `"`+etag+`"`)
	}
}

// twinTarget names the twin of a request: the store key (device id or
// module key) and how a store error about it is answered. It answers the
// request itself and returns false when the path names no twin.
type twinTarget func(w http.ResponseWriter, r *http.Request) (key string, fail func(error), ok bool)

func (s *server) deviceTwin(w http.ResponseWriter, r *http.Request) (string, func(error), bool) {
	id, ok := s.deviceID(w, r)
	if !ok {
		return "", nil, false
	}
	return id, func(err error) { s.storeError(w, r, id, err) }, true
}

func (s *server) moduleTwin(w http.ResponseWriter, r *http.Request) (string, func(error), bool) {
	id, mid, key, ok := s.moduleKey(w, r)
	if !ok {
		return "", nil, false
	}
	return key, func(err error) { s.moduleError(w, r, id, mid, err) }, true
}

// getTwin serves GET /twins/{id}.
func (s *server) getTwin(w http.ResponseWriter, r *http.Request) { s.readTwin(w, r, s.deviceTwin) }

// patchTwin serves PATCH /twins/{id}: tags and properties.desired are merged.
func (s *server) patchTwin(w http.ResponseWriter, r *http.Request) {
	s.writeTwin(w, r, s.deviceTwin, (*store.Store).PatchTwin)
}

// replaceTwin serves PUT /twins/{id}: tags and properties.desired are replaced.
func (s *server) replaceTwin(w http.ResponseWriter, r *http.Request) {
	s.writeTwin(w, r, s.deviceTwin, (*store.Store).ReplaceTwin)
}

// getModuleTwin serves GET /twins/{id}/modules/{mid}.
func (s *server) getModuleTwin(w http.ResponseWriter, r *http.Request) {
	s.readTwin(w, r, s.moduleTwin)
}

// patchModuleTwin serves PATCH /twins/{id}/modules/{mid}.
func (s *server) patchModuleTwin(w http.ResponseWriter, r *http.Request) {
	s.writeTwin(w, r, s.moduleTwin, (*store.Store).PatchTwin)
}

// replaceModuleTwin serves PUT /twins/{id}/modules/{mid}.
func (s *server) replaceModuleTwin(w http.ResponseWriter, r *http.Request) {
	s.writeTwin(w, r, s.moduleTwin, (*store.Store).ReplaceTwin)
}

func (s *server) readTwin(w http.ResponseWriter, r *http.Request, target twinTarget) {
	key, fail, ok := target(w, r)
	if !ok {
		return
	}
	t, err := s.cfg.Store.Twin(key)
	if err != nil {
		fail(err)
		return
	}
	setETag(w, t.ETag)
	writeJSON(w, http.StatusOK, t)
}

type twinWrite func(*store.Store, string, iothub.Twin, string) (iothub.Twin, *store.DesiredChange, error)

func (s *server) writeTwin(w http.ResponseWriter, r *http.Request, target twinTarget, op twinWrite) {
	key, fail, ok := target(w, r)
	if !ok {
		return
	}
	var body iothub.Twin
	if !s.readJSON(w, r, &body) {
		return
	}
	// The store tells the device of a desired change itself (OnDesired).
	t, _, err := op(s.cfg.Store, key, body, r.Header.Get("If-Match"))
	if err != nil {
		fail(err)
		return
	}
	setETag(w, t.ETag)
	writeJSON(w, http.StatusOK, t)
}
