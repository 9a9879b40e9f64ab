package dashboard

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dmctl/dmctl/sas"
)

// Session and login limits.
const (
	// TokenTTL is how long an unused login token stays valid.
	TokenTTL = 24 * time.Hour
	// SessionIdle ends a session not used for this long.
	SessionIdle = 12 * time.Hour
	// MaxSessions bounds the live sessions; a new one beyond it ends the
	// one used least recently.
	MaxSessions = 64
	// MaxTokens bounds the unused login tokens; minting beyond it drops
	// the oldest.
	MaxTokens = 16
	// loginBurst failed logins are allowed at once, then one per
	// loginRefill (for the whole dashboard), else 429.
	loginBurst  = 5
	loginRefill = 2 * time.Second
	// maxLoginForm bounds the login form's body.
	maxLoginForm = 8 << 10
)

type token struct {
	value   string
	expires time.Time
}

type session struct {
	id       string
	csrf     string
	lastUsed time.Time
}

// authState holds the login tokens, the sessions and the failed-login
// budget.
type authState struct {
	now func() time.Time

	mu       sync.Mutex
	tokens   []token
	sessions map[string]*session
	budget   float64 // failed logins allowed now
	budgetAt time.Time
}

func newAuthState(now func() time.Time) *authState {
	return &authState{now: now, sessions: make(map[string]*session), budget: loginBurst, budgetAt: now()}
}

// randomString is n random bytes, base64url.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// MintToken returns a new one-time login token, valid for TokenTTL. It is a
// secret: print it on purpose only, never log it.
func (s *Server) MintToken() string {
	a := s.auth
	t := token{value: randomString(32), expires: a.now().Add(TokenTTL)}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokens = append(a.tokens, t)
	if len(a.tokens) > MaxTokens {
		a.tokens = slices.Delete(a.tokens, 0, len(a.tokens)-MaxTokens)
	}
	return t.value
}

// useToken consumes v if it is a valid unused token.
func (a *authState) useToken(v string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	found := -1
	for i, t := range a.tokens {
		// Every token is compared, in constant time, so that the time
		// taken says nothing about which one matched or how much.
		if subtle.ConstantTimeCompare([]byte(t.value), []byte(v)) == 1 && now.Before(t.expires) {
			found = i
		}
	}
	a.tokens = slices.DeleteFunc(a.tokens, func(t token) bool { return !now.Before(t.expires) })
	if found < 0 {
		return false
	}
	a.tokens = slices.DeleteFunc(a.tokens, func(t token) bool { return t.value == v })
	return true
}

// newSession starts a session, ending the least recently used one when
// there are MaxSessions already.
func (a *authState) newSession() *session {
	ss := &session{id: randomString(32), csrf: randomString(32), lastUsed: a.now()}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expireLocked()
	for len(a.sessions) >= MaxSessions {
		var oldest *session
		for _, x := range a.sessions {
			if oldest == nil || x.lastUsed.Before(oldest.lastUsed) {
				oldest = x
			}
		}
		delete(a.sessions, oldest.id)
	}
	a.sessions[ss.id] = ss
	return ss
}

func (a *authState) expireLocked() {
	now := a.now()
	for id, x := range a.sessions {
		if now.Sub(x.lastUsed) >= SessionIdle {
			delete(a.sessions, id)
		}
	}
}

// lookup returns the live session of id and marks it used.
func (a *authState) lookup(id string) (session, bool) {
	if id == "" {
		return session{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	x, ok := a.sessions[id]
	if !ok {
		return session{}, false
	}
	now := a.now()
	if now.Sub(x.lastUsed) >= SessionIdle {
		delete(a.sessions, id)
		return session{}, false
	}
	x.lastUsed = now
	return *x, true
}

func (a *authState) end(id string) {
	a.mu.Lock()
	delete(a.sessions, id)
	a.mu.Unlock()
}

// failedLogin takes one failed login from the budget; false when it is
// spent (the caller answers 429).
func (a *authState) failedLogin() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	a.budget = min(loginBurst, a.budget+float64(now.Sub(a.budgetAt))/float64(loginRefill))
	a.budgetAt = now
	if a.budget < 1 {
		return false
	}
	a.budget--
	return true
}

// loginAllowed reports whether a login attempt may be judged now.
func (a *authState) loginAllowed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	return a.budget+float64(now.Sub(a.budgetAt))/float64(loginRefill) >= 1
}

func (s *Server) setCookie(w http.ResponseWriter, ss *session) {
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: ss.id, Path: "/",
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
}

func (s *Server) currentSession(r *http.Request) (session, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return session{}, false
	}
	return s.auth.lookup(c.Value)
}

// csrfOK reports whether r carries the session's CSRF token (header
// X-CSRF-Token, or form field csrf of the dashboard's own forms; /api
// bodies belong to the REST API and are not read here).
func csrfOK(r *http.Request, ss session) bool {
	got := r.Header.Get("X-CSRF-Token")
	form := strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
	if got == "" && form && !strings.HasPrefix(r.URL.Path, "/api/") {
		r.Body = http.MaxBytesReader(nil, r.Body, maxLoginForm)
		got = r.PostFormValue("csrf")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.csrf)) == 1
}

// session guards a stream, API or action route: 401 without a session, 403
// without the CSRF token on a method other than GET and HEAD.
func (s *Server) session(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss, ok := s.currentSession(r)
		if !ok {
			http.Error(w, "no session: log in at /login", http.StatusUnauthorized)
			return
		}
		if !safeMethod(r.Method) && !csrfOK(r, ss) {
			http.Error(w, "missing or wrong CSRF token", http.StatusForbidden)
			return
		}
		h(w, r, &ss)
	})
}

// sessionPage guards an HTML page: without a session it redirects to the
// login page.
func (s *Server) sessionPage(h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss, ok := s.currentSession(r)
		if !ok {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		h(w, r, &ss)
	})
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("token")
	if tok == "" {
		s.renderLogin(w, http.StatusOK, "")
		return
	}
	if !s.auth.loginAllowed() {
		s.renderLogin(w, http.StatusTooManyRequests, "Too many failed logins: wait a few seconds and try again.")
		return
	}
	if !s.auth.useToken(tok) {
		s.auth.failedLogin()
		s.log.Warn().Msg("dashboard: login with an unknown, used or expired token")
		s.renderLogin(w, http.StatusUnauthorized, "This login link is not valid (each link works once, for 24 hours). Log in with the owner connection string, or restart the hub for a new link.")
		return
	}
	s.startSession(w, r)
}

func (s *Server) startSession(w http.ResponseWriter, r *http.Request) {
	ss := s.auth.newSession()
	s.setCookie(w, ss)
	s.log.Info().Msg("dashboard: session started")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	if !s.auth.loginAllowed() {
		s.renderLogin(w, http.StatusTooManyRequests, "Too many failed logins: wait a few seconds and try again.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginForm)
	cs := r.PostFormValue("connectionString")
	if err := s.checkOwner(cs); err != nil {
		s.auth.failedLogin()
		// What was typed is never logged: it may be a key.
		s.log.Warn().Msg("dashboard: login with a connection string refused")
		s.renderLogin(w, http.StatusUnauthorized, err.Error())
		return
	}
	s.startSession(w, r)
}

var errNotOwner = errors.New("That is not this hub's iothubowner connection string (get it with 'dmctl hub connection-string').")

// checkOwner accepts the hub's iothubowner connection string: the policy
// and key of the store's owner policy, and a host name the hub answers to.
func (s *Server) checkOwner(text string) error {
	if strings.TrimSpace(text) == "" {
		return errors.New("Paste the owner connection string (from 'dmctl hub connection-string').")
	}
	cs, err := sas.ParseService(text)
	if err != nil {
		return errNotOwner
	}
	if cs.SharedAccessKeyName != OwnerPolicy {
		return errors.New("Log in with the iothubowner policy's connection string: other policies do not grant everything the dashboard does.")
	}
	p, err := s.cfg.Store.Policy(OwnerPolicy)
	if err != nil {
		return errors.New("The hub cannot read its owner policy.")
	}
	// Either key of the policy, each compared in constant time.
	key := []byte(cs.SharedAccessKey)
	keyOK := subtle.ConstantTimeCompare(key, []byte(p.PrimaryKey)) |
		subtle.ConstantTimeCompare(key, []byte(p.SecondaryKey))
	if p.SecondaryKey == "" {
		keyOK = subtle.ConstantTimeCompare(key, []byte(p.PrimaryKey))
	}
	if keyOK != 1 || !s.answersTo(cs.Host()) {
		return errNotOwner
	}
	return nil
}

// answersTo reports whether host (no port) is one of the hub's names.
func (s *Server) answersTo(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	for _, h := range s.cfg.Hosts() {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, ss *session) {
	s.auth.end(ss.id)
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
