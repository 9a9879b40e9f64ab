package dashboard

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/store"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestServer(t *testing.T) (*Server, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st, err := store.Open(filepath.Join(t.TempDir(), "hub.db"), clk.now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	s, err := New(Config{Store: st, Events: events.New(16, clk.now), API: http.NotFoundHandler(), Hostname: "localhost", Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	return s, clk
}

func get(s *Server, path string, c *http.Cookie) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "https://localhost"+path, nil)
	if c != nil {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func loginCookie(t *testing.T, s *Server) *http.Cookie {
	t.Helper()
	w := get(s, "/login?token="+s.MintToken(), nil)
	if w.Code != http.StatusSeeOther {
		t.Fatalf("login: %d", w.Code)
	}
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			return c
		}
	}
	t.Fatal("no session cookie")
	return nil
}

func TestTokenExpires(t *testing.T) {
	s, clk := newTestServer(t)
	tok := s.MintToken()
	clk.add(TokenTTL)
	if w := get(s, "/login?token="+tok, nil); w.Code != http.StatusUnauthorized {
		t.Fatalf("token after %v: %d, want 401", TokenTTL, w.Code)
	}
	tok = s.MintToken()
	clk.add(TokenTTL - time.Second)
	if w := get(s, "/login?token="+tok, nil); w.Code != http.StatusSeeOther {
		t.Fatalf("token just before expiry: %d, want 303", w.Code)
	}
}

func TestOldestTokensGiveWay(t *testing.T) {
	s, _ := newTestServer(t)
	first := s.MintToken()
	for range MaxTokens {
		s.MintToken()
	}
	if w := get(s, "/login?token="+first, nil); w.Code != http.StatusUnauthorized {
		t.Fatalf("the oldest of %d tokens still works: %d", MaxTokens+1, w.Code)
	}
}

func TestSessionIdleExpiry(t *testing.T) {
	s, clk := newTestServer(t)
	c := loginCookie(t, s)
	clk.add(SessionIdle - time.Minute)
	if w := get(s, "/jobs", c); w.Code != http.StatusOK {
		t.Fatalf("session used within the idle limit: %d", w.Code)
	}
	clk.add(SessionIdle - time.Minute) // counted from the last use
	if w := get(s, "/jobs", c); w.Code != http.StatusOK {
		t.Fatalf("session used again within the idle limit: %d", w.Code)
	}
	clk.add(SessionIdle)
	if w := get(s, "/jobs", c); w.Code != http.StatusSeeOther {
		t.Fatalf("session idle for %v: %d, want 303", SessionIdle, w.Code)
	}
}

func TestSessionsAreBounded(t *testing.T) {
	s, clk := newTestServer(t)
	first := loginCookie(t, s)
	for range MaxSessions {
		clk.add(time.Second)
		loginCookie(t, s)
	}
	if n := len(s.auth.sessions); n != MaxSessions {
		t.Fatalf("%d sessions live, want at most %d", n, MaxSessions)
	}
	if w := get(s, "/jobs", first); w.Code != http.StatusSeeOther {
		t.Fatalf("the least recently used session survived: %d", w.Code)
	}
}
