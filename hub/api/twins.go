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

// getTwin serves GET /twins/{id}.
func (s *server) getTwin(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, err := s.cfg.Store.Twin(id)
	if err != nil {
		s.storeError(w, r, id, err)
		return
	}
	setETag(w, t.ETag)
	writeJSON(w, http.StatusOK, t)
}

// patchTwin serves PATCH /twins/{id}: tags and properties.desired are merged.
func (s *server) patchTwin(w http.ResponseWriter, r *http.Request) {
	s.writeTwin(w, r, (*store.Store).PatchTwin)
}

// replaceTwin serves PUT /twins/{id}: tags and properties.desired are replaced.
func (s *server) replaceTwin(w http.ResponseWriter, r *http.Request) {
	s.writeTwin(w, r, (*store.Store).ReplaceTwin)
}

type twinWrite func(*store.Store, string, iothub.Twin, string) (iothub.Twin, *store.DesiredChange, error)

func (s *server) writeTwin(w http.ResponseWriter, r *http.Request, op twinWrite) {
	id := r.PathValue("id")
	var body iothub.Twin
	if !s.readJSON(w, r, &body) {
		return
	}
	// Store and notify under the store's desired lock (shared with the jobs
	// engine) so that devices see desired patches in $version order.
	lock := s.cfg.Store.DesiredLock()
	lock.Lock()
	t, change, err := op(s.cfg.Store, id, body, r.Header.Get("If-Match"))
	if err == nil && change != nil && s.cfg.Devices != nil {
		s.cfg.Devices.NotifyDesired(id, change.Version, change.Patch)
	}
	lock.Unlock()
	if err != nil {
		s.storeError(w, r, id, err)
		return
	}
	setETag(w, t.ETag)
	writeJSON(w, http.StatusOK, t)
}
