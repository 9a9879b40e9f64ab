package api

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

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
	if p := s.cachedPrincipal(h); p != nil {
		return p, ""
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
	s.tokens.put(h, verifiedToken{policy: pol.Name, primary: pol.PrimaryKey, secondary: pol.SecondaryKey, expiry: tok.Expiry})
	return &principal{policy: pol.Name, rights: pol.Rights}, ""
}

// cachedPrincipal is verify for a token that already passed it: the same
// text, signed with keys the policy still has, not expired. Rights are
// read from the policy as it is now. nil sends the token through the full
// check.
func (s *server) cachedPrincipal(h string) *principal {
	v, ok := s.tokens.get(h)
	if !ok || v.expiry.Before(s.now()) {
		return nil
	}
	pol, err := s.cfg.Store.Policy(v.policy)
	if err != nil || pol.PrimaryKey != v.primary || pol.SecondaryKey != v.secondary {
		return nil
	}
	return &principal{policy: pol.Name, rights: pol.Rights}
}

// maxCachedTokens bounds the token cache; it starts over when full.
const maxCachedTokens = 256

// tokenCache remembers the SAS tokens that passed verification, so that a
// client reusing its token (the service client does, for up to an hour)
// costs no parse and no HMAC per request. Entries are only ever added
// after a full verification and are checked again against the policy's
// current keys and the expiry on every use.
type tokenCache struct {
	mu sync.Mutex
	m  map[string]verifiedToken
}

type verifiedToken struct {
	policy             string
	primary, secondary string // the policy's keys when the token was verified
	expiry             time.Time
}

func (c *tokenCache) get(tok string) (verifiedToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[tok]
	return v, ok
}

func (c *tokenCache) put(tok string, v verifiedToken) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedTokens {
		c.m = make(map[string]verifiedToken)
	}
	c.m[tok] = v
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
