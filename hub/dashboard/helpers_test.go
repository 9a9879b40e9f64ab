package dashboard_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/dashboard"
	"github.com/rs/zerolog"
)

// env is a running hub with a dashboard and a client that trusts its CA,
// follows no redirect and keeps no cookies (each test sends its own).
type env struct {
	h      *hub.Server
	base   string // https://localhost:port
	client *http.Client
}

func newEnv(t testing.TB, mod ...func(*hub.Config)) *env {
	t.Helper()
	cfg := hub.Config{
		DataDir:   t.TempDir(),
		Listen:    []string{"127.0.0.1:0"},
		Hostname:  "localhost",
		Dashboard: "127.0.0.1:0",
		Log:       zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel),
	}
	for _, m := range mod {
		m(&cfg)
	}
	h, err := hub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		_ = h.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	u, err := url.Parse(h.DashboardURL())
	if err != nil || u.Host == "" {
		t.Fatalf("DashboardURL %q: %v", h.DashboardURL(), err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.CAPool()}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &env{
		h:    h,
		base: "https://" + u.Host,
		client: &http.Client{
			Transport:     tr,
			Timeout:       20 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// req describes one request to the dashboard.
type req struct {
	method, path string
	body         string
	contentType  string
	header       map[string]string
	cookie       *http.Cookie
}

func (e *env) do(t testing.TB, r req) (*http.Response, string) {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr, err := http.NewRequest(r.method, e.base+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if r.contentType != "" {
		hr.Header.Set("Content-Type", r.contentType)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	if r.cookie != nil {
		hr.AddCookie(r.cookie)
	}
	resp, err := e.client.Do(hr)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", r.method, r.path, err)
	}
	return resp, string(b)
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)

// login opens the printed login link and returns the session cookie and
// the CSRF token of the pages.
func (e *env) login(t testing.TB) (*http.Cookie, string) {
	t.Helper()
	u, _ := url.Parse(e.h.DashboardURL())
	return e.loginWith(t, e.h.Dashboard().MintToken(), u.Path)
}

func (e *env) loginWith(t testing.TB, token, path string) (*http.Cookie, string) {
	t.Helper()
	resp, body := e.do(t, req{path: path + "?token=" + url.QueryEscape(token)})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login with a fresh token: %d %s", resp.StatusCode, body)
	}
	c := sessionCookie(t, resp)
	return c, e.csrf(t, c)
}

func (e *env) csrf(t testing.TB, c *http.Cookie) string {
	t.Helper()
	resp, body := e.do(t, req{path: "/hub", cookie: c})
	m := csrfMeta.FindStringSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("GET /hub with the session: %d, csrf meta %v", resp.StatusCode, m)
	}
	return html.UnescapeString(m[1])
}

func sessionCookie(t testing.TB, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == dashboard.CookieName {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", dashboard.CookieName, resp.Header["Set-Cookie"])
	return nil
}

// sseEvent is one server-sent event.
type sseEvent struct{ id, kind, data string }

// sseReader reads events from a stream; comments are skipped.
type sseReader struct {
	resp *http.Response
	ch   chan sseEvent
}

func (e *env) openStream(t testing.TB, path string, c *http.Cookie, header map[string]string) *sseReader {
	t.Helper()
	hr, err := http.NewRequest(http.MethodGet, e.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	hr.AddCookie(c)
	for k, v := range header {
		hr.Header.Set(k, v)
	}
	client := *e.client
	client.Timeout = 0 // the stream stays open; reads are bounded below
	resp, err := client.Do(hr)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		t.Fatalf("open %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := &sseReader{resp: resp, ch: make(chan sseEvent, 1024)}
	go func() {
		defer close(r.ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.kind != "" || ev.data != "" {
					r.ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return r
}

// next returns the next event, failing the test after a few seconds.
func (r *sseReader) next(t testing.TB, what string) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-r.ch:
		if !ok {
			t.Fatalf("stream ended while waiting for %s", what)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("gave up after 10s waiting for %s", what)
	}
	return sseEvent{}
}
