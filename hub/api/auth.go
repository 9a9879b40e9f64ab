package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

type ctxKey struct{}

// principal is the authenticated caller of a request.
type principal struct {
	policy string
	rights store.Rights
}

const sasPrefix = "SharedAccessSignature "

// authenticate verifies the Authorization header of every request: a SAS
// token signed with a shared access policy key (skn), for the hub itself
// (empty audience path) and one of Config.Hosts, not expired. Device-key
// tokens are refused.
func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, reason := s.verify(r)
		if p == nil {
			s.log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Str("reason", reason).Msg("rest request refused")
			s.unauthorized(w)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, p)))
	})
}

// verify returns the caller, or nil and a reason safe to log.
func (s *server) verify(r *http.Request) (*principal, string) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, "no Authorization header"
	}
	if !strings.HasPrefix(h, sasPrefix) {
		return nil, "Authorization is not a SharedAccessSignature"
	}
	tok, err := sas.ParseToken(h)
	if err != nil {
		return nil, err.Error()
	}
	if tok.KeyName == "" {
		return nil, "token has no skn (device keys cannot call the service API)"
	}
	pol, err := s.cfg.Store.Policy(tok.KeyName)
	if err != nil {
		return nil, "unknown policy " + quote(tok.KeyName)
	}
	// The audience is checked against the names the hub answers to, never
	// against what the client says it called (Host header, TLS server name).
	var hosts []string
	if s.cfg.Hosts != nil {
		hosts = s.cfg.Hosts()
	}
	if _, err := sas.Verify(h, sas.Audience{Hosts: hosts, Path: ""}, s.now(), pol.PrimaryKey, pol.SecondaryKey); err != nil {
		return nil, "policy " + quote(pol.Name) + ": " + err.Error()
	}
	return &principal{policy: pol.Name, rights: pol.Rights}, ""
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return "\"" + s + "\""
}

func (s *server) unauthorized(w http.ResponseWriter) {
	s.failCode(w, iothub.CodeUnauthorized, "Unauthorized")
}

// require wraps h so that it runs only for callers holding at least one of
// the rights in need.
func (s *server) require(need store.Rights, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(ctxKey{}).(*principal)
		if p == nil || !p.rights.Any(need) {
			policy := ""
			if p != nil {
				policy = p.policy
			}
			s.log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Str("policy", policy).
				Stringer("need", need).Msg("rest request refused: missing right")
			s.unauthorized(w)
			return
		}
		h(w, r)
	})
}
