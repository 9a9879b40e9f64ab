// Package dashboard serves the local hub's dashboard: HTML pages of the
// devices, twins, jobs, configurations and the hub itself, a live feed of
// the hub's events over server-sent events, and the hub's own REST API
// under /api, called with the rights of the owner policy.
//
// Every page, stream and /api route needs a session. A session starts from
// a one-time login token (MintToken; the hub prints a login link with one at
// start) or from the hub's iothubowner connection string typed into the
// login page. The session cookie is HttpOnly, Secure and SameSite=Strict;
// every request other than GET and HEAD must carry the session's CSRF token
// and come from the dashboard's own origin. Every response carries a strict
// Content-Security-Policy: the pages use no inline script or style, and
// everything from devices or users is escaped by html/template on the
// server and written with textContent in the browser.
package dashboard

import (
	"context"
	"embed"
	"errors"
	"io/fs"
	"net/http"
	"time"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/rs/zerolog"
)

// ContentSecurityPolicy is sent with every response.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// CookieName is the session cookie. The __Host- prefix makes browsers
// insist on Secure, Path=/ and no Domain.
const CookieName = "__Host-dmctl-session"

// OwnerPolicy is the shared access policy sessions act with.
const OwnerPolicy = "iothubowner"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures a dashboard.
type Config struct {
	Store  *store.Store
	Events *events.Ring
	// API is the hub's REST handler; /api/<path> is served by it with an
	// owner-policy SAS token instead of the browser's credentials.
	API http.Handler
	// Hostname is the hub's name: the audience of the tokens given to API.
	Hostname string
	// HostPort is what device connection strings name as HostName
	// (hostname[:port of the hub's first listener]).
	HostPort func() string
	// Hosts are the names the hub answers to; a connection string typed
	// into the login page must name one of them.
	Hosts func() []string
	// OwnerConnectionString is the hub's iothubowner connection string (the
	// hub page shows it masked, and in full on request).
	OwnerConnectionString func() string
	// CAFile is the path of the hub's CA certificate ("" when it serves a
	// certificate it was given).
	CAFile string
	// Listeners describes what the hub listens on, for the hub page.
	Listeners func() []Listener
	// Context bounds the dashboard's streams: they end when it is done.
	Context context.Context
	Now     func() time.Time // default time.Now
	Log     zerolog.Logger
}

// Listener is one of the hub's listeners, as the hub page lists it.
type Listener struct {
	Addr  string // host:port
	Serve string // what it serves
}

// Server is the dashboard's HTTP handler and its sessions.
type Server struct {
	cfg     Config
	now     func() time.Time
	log     zerolog.Logger
	pages   *pages
	handler http.Handler
	auth    *authState
}

// New returns a dashboard for cfg. Store, Events and API are required.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Events == nil || cfg.API == nil {
		return nil, errors.New("dashboard: Store, Events and API are required")
	}
	if cfg.Context == nil {
		cfg.Context = context.Background()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Hosts == nil {
		h := cfg.Hostname
		cfg.Hosts = func() []string { return []string{h} }
	}
	if cfg.HostPort == nil {
		h := cfg.Hostname
		cfg.HostPort = func() string { return h }
	}
	if cfg.Listeners == nil {
		cfg.Listeners = func() []Listener { return nil }
	}
	p, err := loadPages()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, now: cfg.Now, log: cfg.Log, pages: p, auth: newAuthState(cfg.Now)}
	s.handler = s.routes()
	return s, nil
}

// Handler serves the dashboard.
func (s *Server) Handler() http.Handler { return s.handler }

// ServeHTTP serves the dashboard.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static") // the directory is embedded: cannot fail
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))

	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.loginPost)
	mux.Handle("POST /logout", s.session(s.logout))

	page := func(pattern string, h func(http.ResponseWriter, *http.Request, *session)) {
		mux.Handle(pattern, s.sessionPage(h))
	}
	page("GET /{$}", s.devicesPage)
	page("GET /devices/{id}", s.devicePage)
	page("GET /devices/{id}/modules/{mid}", s.devicePage)
	page("GET /jobs", s.jobsPage)
	page("GET /configurations", s.configurationsPage)
	page("GET /hub", s.hubPage)

	mux.Handle("GET /stream/events", s.session(s.streamEvents))
	mux.Handle("GET /stream/jobs", s.session(s.streamJobs))
	mux.Handle("POST /secrets/devices/{id}", s.session(s.deviceSecret))
	mux.Handle("POST /secrets/devices/{id}/modules/{mid}", s.session(s.deviceSecret))
	mux.Handle("POST /secrets/hub", s.session(s.hubSecret))
	mux.Handle("/api/", s.session(s.forwardAPI))
	return securityHeaders(s.sameOrigin(mux))
}

// securityHeaders sets the headers every response carries, errors and
// redirects included.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

// safeMethod reports whether m changes nothing.
func safeMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// sameOrigin refuses, for every method other than GET and HEAD, a request
// a browser marks as coming from another site, or whose Origin is not this
// dashboard's. Origin "null" passes: with Referrer-Policy no-referrer
// browsers send it for the dashboard's own forms and fetches, and
// Sec-Fetch-Site still tells where they came from.
func (s *Server) sameOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !safeMethod(r.Method) {
			if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
				http.Error(w, "cross-site request refused", http.StatusForbidden)
				return
			}
			if o := r.Header.Get("Origin"); o != "" && o != "null" && o != "https://"+r.Host {
				http.Error(w, "request from another origin refused", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
