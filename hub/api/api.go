// Package api serves the local hub's service-side REST API: direct methods,
// twins, the identity registry (devices, modules, bulk operations,
// statistics), twin, module-twin and device-job queries, jobs (v2) and
// automatic configurations (configurations.go), with
// SAS authentication against the shared access policies and IoT Hub's error
// bodies.
//
// Module routes mirror the device ones, with the same rights: identities
// under /devices/{id}/modules, twins under /twins/{id}/modules/{mid}, direct
// methods at /twins/{id}/modules/{mid}/methods. An unknown device answers
// 404 DeviceNotFound before any module lookup; an unknown module 404
// ModuleNotFound. GET /statistics/devices needs RegistryRead,
// GET /statistics/service ServiceConnect, POST /devices (bulk) RegistryWrite.
//
// Rights: jobs are created and cancelled with RegistryWrite or
// ServiceConnect, except direct-method jobs, which need ServiceConnect (the
// right POST /twins/{id}/methods needs); jobs are read with RegistryRead,
// RegistryWrite or ServiceConnect.
//
// Input no SDK sends: a body that is not UTF-8 JSON text (bytes that are
// not UTF-8, \u escapes of unpaired surrogates) is 400 IotHubFormatError,
// whatever the route, before anything is stored or sent to a device; an id
// in the path that is not UTF-8 or holds a control character (NUL
// included) is 400 ArgumentInvalid naming it. A direct-method payload over
// iothub.MaxMethodPayload (131072 bytes of compact JSON) is 413
// MessageTooLarge, and so is a device's answer over it
// (hubapi.ErrResponseTooLarge). SAS tokens are accepted only for the names
// in Config.Hosts.
//
// Every route ignores the api-version query parameter. Responses carry
// "Content-Type: application/json; charset=utf-8". Errors use IoT Hub's
// registry envelope ({"Message":"ErrorCode:<Name>;<text>",...}), except the
// device-offline and device-timeout answers of the direct-method route,
// which use the direct-method envelope as the real hub does.
package api

import (
	"encoding/json"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/rs/zerolog"
)

// Config configures the REST handler.
type Config struct {
	Store   *store.Store
	Devices hubapi.Devices
	// Hosts returns the names the hub answers to: a token's sr host must be
	// one of them (case-insensitive, ports ignored). The request's Host
	// header and TLS server name play no part. Nil accepts no token.
	Hosts func() []string
	Now   func() time.Time // default time.Now
	Log   zerolog.Logger   // default: the zero Logger writes nothing
	// Jobs serves /jobs/v2 (optional). When nil those routes answer 404
	// NotFound, saying that jobs are not enabled. Device job rows
	// (SELECT * FROM devices.jobs) are read from Store either way.
	Jobs hubapi.Jobs
}

// Limits.
const (
	// MaxBodySize bounds every request body.
	MaxBodySize = 256 * 1024
	// DefaultPageSize and MaxPageSize bound x-ms-max-item-count.
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

const contentTypeJSON = "application/json; charset=utf-8"

type server struct {
	cfg    Config
	now    func() time.Time
	log    zerolog.Logger
	tokens tokenCache // SAS tokens whose signature checked out
}

// New returns the handler for every REST route. The WebSocket path is not
// handled here.
func New(cfg Config) http.Handler {
	s := &server{cfg: cfg, now: cfg.Now, log: cfg.Log}
	if s.now == nil {
		s.now = time.Now
	}
	mux := http.NewServeMux()
	handle := func(pattern string, need store.Rights, h http.HandlerFunc) {
		mux.Handle(pattern, s.checkPathIDs(pattern, s.require(need, h)))
	}
	either := func(r ...store.Rights) store.Rights {
		var x store.Rights
		for _, v := range r {
			x |= v
		}
		return x
	}
	handle("POST /twins/{id}/methods", store.ServiceConnect, s.invoke)
	handle("GET /twins/{id}", either(store.RegistryRead, store.ServiceConnect), s.getTwin)
	handle("PATCH /twins/{id}", either(store.RegistryWrite, store.ServiceConnect), s.patchTwin)
	handle("PUT /twins/{id}", either(store.RegistryWrite, store.ServiceConnect), s.replaceTwin)
	handle("PUT /devices/{id}", store.RegistryWrite, s.putDevice)
	handle("GET /devices/{id}", store.RegistryRead, s.getDevice)
	handle("DELETE /devices/{id}", store.RegistryWrite, s.deleteDevice)
	handle("GET /devices/{id}/modules", store.RegistryRead, s.listModules)
	handle("PUT /devices/{id}/modules/{mid}", store.RegistryWrite, s.putModule)
	handle("GET /devices/{id}/modules/{mid}", store.RegistryRead, s.getModule)
	handle("DELETE /devices/{id}/modules/{mid}", store.RegistryWrite, s.deleteModule)
	handle("POST /twins/{id}/modules/{mid}/methods", store.ServiceConnect, s.invokeModule)
	handle("GET /twins/{id}/modules/{mid}", either(store.RegistryRead, store.ServiceConnect), s.getModuleTwin)
	handle("PATCH /twins/{id}/modules/{mid}", either(store.RegistryWrite, store.ServiceConnect), s.patchModuleTwin)
	handle("PUT /twins/{id}/modules/{mid}", either(store.RegistryWrite, store.ServiceConnect), s.replaceModuleTwin)
	handle("POST /devices", store.RegistryWrite, s.bulkDevices)
	handle("GET /statistics/devices", store.RegistryRead, s.deviceStatistics)
	handle("GET /statistics/service", store.ServiceConnect, s.serviceStatistics)
	handle("GET /devices", store.RegistryRead, s.listDevices)
	// The Node service SDK's Registry.list asks for "/devices/".
	handle("GET /devices/{$}", store.RegistryRead, s.listDevices)
	handle("POST /devices/query", either(store.RegistryRead, store.ServiceConnect), s.query)
	handle("PUT /configurations/{id}", store.RegistryWrite, s.putConfiguration)
	handle("GET /configurations/{id}", either(store.RegistryRead, store.RegistryWrite), s.getConfiguration)
	handle("DELETE /configurations/{id}", store.RegistryWrite, s.deleteConfiguration)
	handle("GET /configurations", either(store.RegistryRead, store.RegistryWrite), s.listConfigurations)
	handle("GET /configurations/{$}", either(store.RegistryRead, store.RegistryWrite), s.listConfigurations)
	handle("POST /configurations/testQueries", either(store.RegistryRead, store.RegistryWrite), s.testConfigurationQueries)
	handle("PUT /jobs/v2/{id}", either(store.RegistryWrite, store.ServiceConnect), s.putJob)
	handle("GET /jobs/v2/{id}", either(store.RegistryRead, store.RegistryWrite, store.ServiceConnect), s.getJob)
	handle("POST /jobs/v2/{id}/cancel", either(store.RegistryWrite, store.ServiceConnect), s.cancelJob)
	handle("GET /jobs/v2/query", either(store.RegistryRead, store.RegistryWrite, store.ServiceConnect), s.listJobs)
	return s.logRequests(s.authenticate(s.route(mux)))
}

// statusWriter records the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests logs method, path, status and duration at debug level. It
// never logs headers or bodies.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		s.log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", sw.status).
			Dur("duration", time.Since(start)).Msg("rest request")
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = iothub.RegistryErrorBody(iothub.CodeServerError, "cannot render the response", time.Now())
		status = http.StatusInternalServerError
	}
	writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// route dispatches through mux but answers unknown paths (404) and wrong
// methods (405) with IoT Hub error bodies instead of the mux's plain text.
//
// A path that is not canonical ("//", "/./", "/../") is not found either:
// the mux would redirect it with an HTML body, which no IoT Hub client
// follows.
func (s *server) route(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !canonicalPath(r.URL.Path) {
			s.notFound(w, r)
			return
		}
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		probe := &probeWriter{header: http.Header{}}
		h.ServeHTTP(probe, r)
		if probe.status == http.StatusMethodNotAllowed {
			if allow := probe.header.Get("Allow"); allow != "" {
				w.Header().Set("Allow", allow)
			}
			s.methodNotAllowed(w, r)
			return
		}
		s.notFound(w, r)
	})
}

// canonicalPath reports whether p is already in the form the mux
// redirects to: cleaned, keeping a trailing slash.
func canonicalPath(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// probeWriter captures the status and headers of the mux's own 404/405
// handler and discards its body.
type probeWriter struct {
	header http.Header
	status int
}

func (p *probeWriter) Header() http.Header { return p.header }
func (p *probeWriter) WriteHeader(code int) {
	if p.status == 0 {
		p.status = code
	}
}
func (p *probeWriter) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return len(b), nil
}

func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	s.fail(w, http.StatusNotFound, "NotFound", "no route for "+r.Method+" "+r.URL.Path)
}

func (s *server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	s.fail(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "method "+r.Method+" is not allowed on "+r.URL.Path)
}
