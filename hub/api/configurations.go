package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/dmctl/dmctl/hub/configs"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// Automatic configurations (/configurations). PUT without If-Match
// creates (409 ConfigurationAlreadyExists when the id is taken); PUT with
// If-Match updates (404 ConfigurationNotFound, 412 on a stale etag). Only
// labels, priority, targetCondition and metrics change on update; other
// content is refused with 400. The target condition and metric queries are
// parsed before anything is stored (400 naming the query). GET and
// testQueries need RegistryRead or RegistryWrite; PUT and DELETE
// RegistryWrite. The configuration errors carry no numeric IoT Hub code the
// SDKs decode, so they are sent by name.

const (
	errConfigurationNotFound = "ConfigurationNotFound"
	errConfigurationExists   = "ConfigurationAlreadyExists"
)

// configError maps a store error about configuration id to its answer.
func (s *server) configError(w http.ResponseWriter, r *http.Request, id string, err error) {
	switch {
	case errors.Is(err, store.ErrConfigurationNotFound):
		s.fail(w, http.StatusNotFound, errConfigurationNotFound, fmt.Sprintf("Configuration '%s' not found.", id))
	case errors.Is(err, store.ErrConfigurationExists):
		s.fail(w, http.StatusConflict, errConfigurationExists, fmt.Sprintf("A configuration with ID '%s' already exists (update it with If-Match).", id))
	default:
		s.storeError(w, r, id, err)
	}
}

// putConfiguration serves PUT /configurations/{id}.
func (s *server) putConfiguration(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := store.ValidConfigurationID(id); err != nil {
		s.storeError(w, r, id, err)
		return
	}
	var c iothub.Configuration
	if !s.readJSON(w, r, &c) {
		return
	}
	if c.ID == "" {
		c.ID = id
	}
	if c.ID != id {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("id %q in the body does not match %q in the path", c.ID, id))
		return
	}
	if err := configs.Check(c); err != nil {
		s.failCode(w, iothub.CodeArgumentInvalid, err.Error())
		return
	}
	var (
		out iothub.Configuration
		err error
	)
	if ifMatch := r.Header.Get("If-Match"); ifMatch == "" {
		out, err = s.cfg.Store.CreateConfiguration(c)
	} else {
		out, err = s.cfg.Store.UpdateConfiguration(c, ifMatch)
	}
	if err != nil {
		s.configError(w, r, id, err)
		return
	}
	setETag(w, out.ETag)
	writeJSON(w, http.StatusOK, out)
}

// getConfiguration serves GET /configurations/{id}.
func (s *server) getConfiguration(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := s.cfg.Store.Configuration(id)
	if err != nil {
		s.configError(w, r, id, err)
		return
	}
	setETag(w, c.ETag)
	writeJSON(w, http.StatusOK, c)
}

// deleteConfiguration serves DELETE /configurations/{id}; a missing
// If-Match means "*".
func (s *server) deleteConfiguration(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.cfg.Store.DeleteConfiguration(id, r.Header.Get("If-Match")); err != nil {
		s.configError(w, r, id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listConfigurations serves GET /configurations?top=N (at most
// iothub.MaxConfigurations, the default).
func (s *server) listConfigurations(w http.ResponseWriter, r *http.Request) {
	top := iothub.MaxConfigurations
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > iothub.MaxConfigurations {
			s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("top must be an integer between 1 and %d", iothub.MaxConfigurations))
			return
		}
		top = n
	}
	cs, err := s.cfg.Store.Configurations(top)
	if err != nil {
		s.storeError(w, r, "", err)
		return
	}
	writeJSON(w, http.StatusOK, cs)
}

// testConfigurationQueries serves POST /configurations/testQueries: 200
// with the errors in the body (empty when the queries are valid).
func (s *server) testConfigurationQueries(w http.ResponseWriter, r *http.Request) {
	var in iothub.ConfigurationQueriesTestInput
	if !s.readJSON(w, r, &in) {
		return
	}
	writeJSON(w, http.StatusOK, configs.TestQueries(in))
}
