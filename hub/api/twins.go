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
	// The store tells the device of a desired change itself (OnDesired).
	t, _, err := op(s.cfg.Store, id, body, r.Header.Get("If-Match"))
	if err != nil {
		s.storeError(w, r, id, err)
		return
	}
	setETag(w, t.ETag)
	writeJSON(w, http.StatusOK, t)
}
