package api

import "net/http"

// deviceStatistics serves GET /statistics/devices.
func (s *server) deviceStatistics(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Store.RegistryStatistics()
	if err != nil {
		s.storeError(w, r, "", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// serviceStatistics serves GET /statistics/service.
func (s *server) serviceStatistics(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Store.ServiceStatistics()
	if err != nil {
		s.storeError(w, r, "", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
