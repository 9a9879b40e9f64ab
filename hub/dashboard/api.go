package dashboard

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// apiTokenTTL is how long the token of one forwarded request is valid.
const apiTokenTTL = 5 * time.Minute

// forwardAPI serves /api/<path> with the hub's REST handler, as the owner
// policy: the browser's cookies and CSRF header are removed and a fresh SAS
// token of iothubowner is the request's Authorization, so that every REST
// rule (rights, etags, sizes, UTF-8) applies as to any service.
func (s *Server) forwardAPI(w http.ResponseWriter, r *http.Request, _ *session) {
	p, err := s.cfg.Store.Policy(OwnerPolicy)
	if err != nil {
		http.Error(w, "cannot read the owner policy", http.StatusInternalServerError)
		return
	}
	tok, err := sas.Sign(p.PrimaryKey, s.cfg.Hostname, OwnerPolicy, s.now().Add(apiTokenTTL))
	if err != nil {
		http.Error(w, "cannot sign a token", http.StatusInternalServerError)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/api")
	if r.URL.RawPath != "" {
		r2.URL.RawPath = strings.TrimPrefix(r.URL.RawPath, "/api")
	}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Header.Del("Cookie")
	r2.Header.Del("X-CSRF-Token")
	r2.Header.Set("Authorization", tok)
	s.cfg.API.ServeHTTP(w, r2)
}

type secretAnswer struct {
	ConnectionString string `json:"connectionString,omitempty"`
	Error            string `json:"error,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// deviceSecret answers POST /secrets/devices/{id}[/modules/{mid}] with the
// identity's primary connection string.
func (s *Server) deviceSecret(w http.ResponseWriter, r *http.Request, _ *session) {
	id, mid := r.PathValue("id"), r.PathValue("mid")
	var auth *iothub.Authentication
	if mid == "" {
		d, err := s.cfg.Store.Device(id)
		if err != nil {
			s.secretError(w, err)
			return
		}
		auth = d.Authentication
	} else {
		m, err := s.cfg.Store.Module(id, mid)
		if err != nil {
			s.secretError(w, err)
			return
		}
		auth = m.Authentication
	}
	if auth == nil || auth.Type != iothub.AuthSAS || auth.SymmetricKey == nil || auth.SymmetricKey.PrimaryKey == "" {
		typ := "none"
		if auth != nil {
			typ = auth.Type
		}
		writeJSON(w, http.StatusOK, secretAnswer{Error: "This identity authenticates with " + typ + " (X.509 or no key): it has no connection string with a key; it connects with its certificate."})
		return
	}
	cs := "HostName=" + s.cfg.HostPort() + ";DeviceId=" + id
	if mid != "" {
		cs += ";ModuleId=" + mid
	}
	cs += ";SharedAccessKey=" + auth.SymmetricKey.PrimaryKey
	writeJSON(w, http.StatusOK, secretAnswer{ConnectionString: cs})
}

func (s *Server) secretError(w http.ResponseWriter, err error) {
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrModuleNotFound) {
		writeJSON(w, http.StatusNotFound, secretAnswer{Error: "no such device or module"})
		return
	}
	s.log.Error().Err(err).Msg("dashboard: read identity")
	writeJSON(w, http.StatusInternalServerError, secretAnswer{Error: "cannot read the identity"})
}

// hubSecret answers POST /secrets/hub with the owner connection string.
func (s *Server) hubSecret(w http.ResponseWriter, r *http.Request, _ *session) {
	cs := ""
	if s.cfg.OwnerConnectionString != nil {
		cs = s.cfg.OwnerConnectionString()
	}
	if cs == "" {
		writeJSON(w, http.StatusInternalServerError, secretAnswer{Error: "cannot read the owner policy"})
		return
	}
	writeJSON(w, http.StatusOK, secretAnswer{ConnectionString: cs})
}
