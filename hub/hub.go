// Package hub is dmctl's local Azure IoT Hub stand-in: one TLS port per
// listen address that serves MQTT 3.1.1 (devices), the HTTPS REST API
// (services) and MQTT over WebSockets, with IoT Hub's topics, SAS and
// X.509 authentication of devices and modules, and semantics for direct
// methods and twins.
//
// The MQTT framing is done by the embedded mochi-mqtt broker. The hub owns
// the sockets and TLS, tells MQTT from HTTP by the first byte after the
// handshake, and implements IoT Hub semantics in broker hooks. Nothing a
// device publishes is routed through the broker's topic tree: the hub
// answers every request itself and writes hub-to-device messages straight to
// the one connection they are meant for.
package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dmctl/dmctl/hub/api"
	"github.com/dmctl/dmctl/hub/configs"
	"github.com/dmctl/dmctl/hub/dashboard"
	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/jobs"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/fdlimit"
	"github.com/rs/zerolog"
)

// Defaults.
const (
	DefaultListen   = "127.0.0.1:8883"
	DefaultHostname = "localhost"
	dbFile          = "hub.db"
	ownerKeyFile    = "iothubowner.key"
	ownerPolicy     = "iothubowner"
)

// Timeouts of the network layer.
const (
	handshakeTimeout = 10 * time.Second // TLS handshake plus the first byte
	connectTimeout   = 10 * time.Second // first MQTT packet after the handoff
	writeTimeout     = 30 * time.Second // any single write to a device
	maxKeepAlive     = 1767             // seconds; IoT Hub's server-side cap
	// httpWriteTimeout must outlast the longest direct method (300 s).
	httpWriteTimeout = 330 * time.Second
	shutdownGrace    = 5 * time.Second
)

// Config configures a Server. DataDir is required; every other field has a
// working zero value.
//
// Devices and modules of authentication type certificateAuthority log in
// with a client certificate that chains to a trusted device CA: the
// certificates of the X509CAFiles and of every *.pem file in
// DataDir/x509-ca (DeviceCADir). Both are read once, by New; a file that
// cannot be read or holds no certificate makes New fail (ErrDeviceCA).
type Config struct {
	DataDir  string   // holds ca.pem, ca-key.pem, server.pem, server-key.pem, hub.db, x509-ca/
	Listen   []string // host:port to listen on; default ["127.0.0.1:8883"]; port 0 picks one
	Hostname string   // the hub's name in connection strings and SAS audiences; default "localhost"
	TLSCert  string   // optional PEM certificate (chain) to serve instead of the generated one
	TLSKey   string   // its key
	// X509CAFiles are PEM files of device CA certificates to trust, one
	// or more certificates each (dmctl hub serve --x509-ca).
	X509CAFiles []string
	// ConfigurationInterval is how often automatic configurations are
	// applied (default configs.DefaultInterval, one second).
	ConfigurationInterval time.Duration
	// PackagesDir, when set, is served read-only at PackagesPath on the
	// TLS port (a local-hub extension; see packages.go).
	PackagesDir string
	// EventRingSize is how many recent events (connections, method calls,
	// twin patches, device-to-cloud messages) the hub keeps for the
	// dashboard; default events.DefaultSize.
	EventRingSize int
	// Dashboard is the listen address (host:port; port 0 picks one) of
	// the dashboard, served over TLS with the hub's certificate; "" serves
	// none. See DashboardURL.
	Dashboard string
	// OpenFileLimit is the open-file limit the hub plans its connections
	// with; zero: this process's own, read by New.
	OpenFileLimit fdlimit.Limit
	Log           zerolog.Logger
}

// Server is a local IoT Hub. Create it with New, run it with Serve (or
// Start and Close).
type Server struct {
	cfg    Config
	log    zerolog.Logger
	store  *store.Store
	tlsMat *tlsMaterial
	tlsCfg *tls.Config
	// deviceCAs are the trusted device CAs; nil when there are none.
	deviceCAs *x509.CertPool
	now       func() time.Time

	mu        sync.Mutex
	started   bool
	closed    bool
	closeErr  error
	listeners []net.Listener
	addrs     []string
	inflight  map[net.Conn]struct{} // accepted connections still in handshake

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops and handshakes

	httpQ   *connQueue
	httpSrv *http.Server
	httpWG  sync.WaitGroup

	broker *broker
	jobs   *jobs.Engine
	jobsWG sync.WaitGroup

	packages *packages // nil without Config.PackagesDir

	// events are what just happened, for the dashboard; closed by Close.
	events *events.Ring

	fd *fdWatch // the open-file limit, and what the hub says about it

	// The dashboard (nil without Config.Dashboard): its listener, bound
	// by New, and what Start serves on it.
	dashLn   net.Listener
	dash     *dashboard.Server
	dashSrv  *http.Server
	dashWG   sync.WaitGroup
	dashURL  string
	dashAddr string
}

// New binds every listen address, reads the trusted device CAs, then opens
// the store and loads or creates the TLS material. Binding comes first so that a busy port fails before
// anything is written to the data folder. Connections are served only after
// Start.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("hub: data directory is required")
	}
	if len(cfg.Listen) == 0 {
		cfg.Listen = []string{DefaultListen}
	}
	cfg.Listen = slices.Clone(cfg.Listen)
	for _, a := range cfg.Listen {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("hub: listen address %q: %w", a, err)
		}
	}
	if cfg.Dashboard != "" {
		if _, _, err := net.SplitHostPort(cfg.Dashboard); err != nil {
			return nil, fmt.Errorf("hub: dashboard address %q: %w", cfg.Dashboard, err)
		}
	}
	if cfg.Hostname == "" {
		cfg.Hostname = DefaultHostname
	}
	cfg.X509CAFiles = slices.Clone(cfg.X509CAFiles)
	listeners, err := listenAll(cfg.Listen)
	if err != nil {
		return nil, err
	}
	var dashLn net.Listener
	if cfg.Dashboard != "" {
		if dashLn, err = net.Listen("tcp", cfg.Dashboard); err != nil {
			for _, l := range listeners {
				_ = l.Close()
			}
			return nil, fmt.Errorf("hub: dashboard: listen on %s: %w", cfg.Dashboard, err)
		}
	}
	closeListeners := func() {
		for _, l := range listeners {
			_ = l.Close()
		}
		if dashLn != nil {
			_ = dashLn.Close()
		}
	}
	// Device CAs are read before the data folder is touched: a bad file
	// leaves nothing behind.
	cas, err := loadDeviceCAs(cfg.DataDir, cfg.X509CAFiles)
	if err != nil {
		closeListeners()
		return nil, err
	}
	var pkgs *packages
	if cfg.PackagesDir != "" {
		if pkgs, err = openPackages(cfg.PackagesDir); err != nil {
			closeListeners()
			return nil, err
		}
		prev := closeListeners
		closeListeners = func() { prev(); pkgs.close() }
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		closeListeners()
		return nil, fmt.Errorf("hub: data directory: %w", err)
	}
	now := time.Now
	st, err := store.Open(filepath.Join(cfg.DataDir, dbFile), now)
	if err != nil {
		closeListeners()
		return nil, fmt.Errorf("hub: open store: %w", err)
	}
	if err := writeOwnerKey(cfg.DataDir, st); err != nil {
		closeListeners()
		_ = st.Close()
		return nil, err
	}
	certAddrs := cfg.Listen
	if cfg.Dashboard != "" {
		certAddrs = append(slices.Clone(cfg.Listen), cfg.Dashboard)
	}
	mat, err := loadTLS(cfg.DataDir, cfg.TLSCert, cfg.TLSKey, serverNames(cfg.Hostname, certAddrs), now())
	if err != nil {
		closeListeners()
		_ = st.Close()
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Log,
		store:     st,
		tlsMat:    mat,
		deviceCAs: cas,
		now:       now,
		listeners: listeners,
		dashLn:    dashLn,
		tlsCfg: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{mat.cert},
			// X.509 devices present a certificate; SAS devices, services
			// and browsers need not. The hub checks certificates itself,
			// at MQTT CONNECT, against the registry; advertising no CA
			// names keeps clients from withholding a self-signed one.
			ClientAuth: tls.RequestClientCert,
		},
		inflight: make(map[net.Conn]struct{}),
		packages: pkgs,
		events:   events.New(cfg.EventRingSize, now),
		fd:       newFDWatch(openFileLimit(cfg.OpenFileLimit), cfg.Log),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// listenAll binds every address, or none: on a failure the ones bound so
// far are closed.
func listenAll(addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, fmt.Errorf("hub: listen on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// Start serves on the listeners New bound, in the background until Close.
// ctx bounds only the start itself.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("hub: server is closed")
	}
	if s.started {
		return errors.New("hub: server already started")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.addrs = nil
	for _, ln := range s.listeners {
		s.addrs = append(s.addrs, ln.Addr().String())
	}

	b, err := newBroker(s)
	if err != nil {
		s.closeListenersLocked()
		return err
	}
	s.broker = b
	engine, err := jobs.New(jobs.Config{
		Store:   s.store,
		Devices: b,
		Now:     s.now,
		Log:     s.log.With().Str("component", "jobs").Logger(),
	})
	if err != nil {
		b.close()
		s.closeListenersLocked()
		s.broker = nil
		return fmt.Errorf("hub: jobs: %w", err)
	}
	s.jobs = engine
	// Desired-property writes (REST, jobs) reach connected devices through
	// the store, in $version order.
	s.store.OnDesired(b.NotifyDesired)
	s.jobsWG.Add(1)
	go func() {
		defer s.jobsWG.Done()
		if err := engine.Run(s.ctx); err != nil {
			s.log.Error().Err(err).Msg("jobs engine stopped")
		}
	}()

	cfgEngine := configs.New(configs.Config{
		Store:    s.store,
		Interval: s.cfg.ConfigurationInterval,
		Log:      s.log.With().Str("component", "configurations").Logger(),
	})
	s.jobsWG.Add(1)
	go func() {
		defer s.jobsWG.Done()
		if err := cfgEngine.Run(s.ctx); err != nil {
			s.log.Error().Err(err).Msg("configuration engine stopped")
		}
	}()

	// One REST handler serves the TLS port and the dashboard's /api.
	restAPI := api.New(api.Config{
		Store:   s.store,
		Devices: b,
		Jobs:    engine,
		Hosts:   s.hosts,
		Now:     s.now,
		Log:     s.log.With().Str("component", "api").Logger(),
	})
	if s.dashLn != nil {
		if err := s.startDashboard(restAPI); err != nil {
			s.cancel()
			s.jobsWG.Wait()
			s.store.OnDesired(nil)
			b.close()
			s.closeListenersLocked()
			s.broker, s.jobs = nil, nil
			return err
		}
	}

	s.httpQ = newConnQueue(s.listeners[0].Addr())
	s.httpSrv = &http.Server{
		Handler:           s.httpHandler(s.withPackages(restAPI)),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          newStdLogger(s.log),
	}
	s.httpWG.Add(1)
	go func() {
		defer s.httpWG.Done()
		_ = s.httpSrv.Serve(s.httpQ)
	}()

	for _, ln := range s.listeners {
		s.wg.Add(1)
		go s.acceptLoop(ln)
	}
	s.started = true
	s.log.Info().Strs("addrs", s.addrs).Str("hostname", s.cfg.Hostname).
		Uint64("open_file_limit", s.fd.limit.Soft).Int("connections_max", s.fd.limit.Connections()).Msg("hub listening")
	return nil
}

// Serve starts the hub and blocks until ctx is done, then shuts everything
// down. It returns nil after a clean cancel.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		_ = s.Close()
		return err
	}
	<-ctx.Done()
	return s.Close()
}

// Close stops listening, disconnects every client, waits for all the hub's
// goroutines and closes the store. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.closeErr
	}
	s.closed = true
	started := s.started
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
	if s.dashLn != nil {
		_ = s.dashLn.Close()
	}
	for c := range s.inflight {
		_ = c.Close()
	}
	s.mu.Unlock()

	// Cancels request contexts, so pending method calls and the
	// dashboard's streams end now.
	s.cancel()
	if started {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		if err := s.httpSrv.Shutdown(sctx); err != nil {
			_ = s.httpSrv.Close()
		}
		cancel()
		s.httpWG.Wait()
		s.stopDashboard()
		s.jobsWG.Wait() // the engine records abandoned calls before the store closes
		s.store.OnDesired(nil)
		s.broker.close()
	}
	// After the broker: its last disconnects ("hub stopping") are recorded.
	s.events.Close()
	s.wg.Wait()
	if s.packages != nil {
		s.packages.close()
	}
	err := s.store.Close()
	s.mu.Lock()
	s.closeErr = err
	s.mu.Unlock()
	if started {
		s.log.Info().Msg("hub stopped")
	}
	return err
}

// closeListenersLocked closes every listener New bound (s.mu held), after a
// failed Start.
func (s *Server) closeListenersLocked() {
	for _, l := range s.listeners {
		_ = l.Close()
	}
	if s.dashLn != nil {
		_ = s.dashLn.Close()
	}
	s.listeners, s.addrs = nil, nil
}

// Dashboard timeouts. Writes may take as long as the longest direct method
// a page invokes through /api; event streams extend their own write
// deadline before every batch.
const (
	dashReadHeaderTimeout = 10 * time.Second
	dashReadTimeout       = 60 * time.Second
	dashIdleTimeout       = 120 * time.Second
)

// startDashboard serves the dashboard on the listener New bound, with the
// hub's certificate and without asking browsers for a client certificate
// (s.mu held).
func (s *Server) startDashboard(restAPI http.Handler) error {
	d, err := dashboard.New(dashboard.Config{
		Store:    s.store,
		Events:   s.events,
		API:      restAPI,
		Hostname: s.cfg.Hostname,
		HostPort: func() string { return hostPort(s.cfg.Hostname, s.Port()) },
		Hosts:    s.hosts,
		OwnerConnectionString: func() string {
			cs, _ := ownerConnectionString(s.store, hostPort(s.cfg.Hostname, s.Port()))
			return cs
		},
		CAFile:    s.tlsMat.caFile,
		Listeners: s.dashboardListeners,
		Context:   s.ctx,
		Now:       s.now,
		Log:       s.log.With().Str("component", "dashboard").Logger(),
	})
	if err != nil {
		return fmt.Errorf("hub: dashboard: %w", err)
	}
	tcfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{s.tlsMat.cert},
		ClientAuth:   tls.NoClientCert, // browsers would prompt for one
		NextProtos:   []string{"h2", "http/1.1"},
	}
	s.dash = d
	s.dashAddr = s.dashLn.Addr().String()
	_, port, _ := net.SplitHostPort(s.dashAddr)
	s.dashURL = "https://" + net.JoinHostPort(s.cfg.Hostname, port) + "/login?token=" + d.MintToken()
	s.dashSrv = &http.Server{
		Handler:           d,
		TLSConfig:         tcfg,
		ReadHeaderTimeout: dashReadHeaderTimeout,
		ReadTimeout:       dashReadTimeout,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       dashIdleTimeout,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          newStdLogger(s.log),
	}
	ln := tls.NewListener(s.dashLn, tcfg)
	s.dashWG.Add(1)
	go func() {
		defer s.dashWG.Done()
		_ = s.dashSrv.Serve(ln)
	}()
	return nil
}

// stopDashboard ends the dashboard's server; its streams end with the
// hub's context and the event ring, which Close has ended already.
func (s *Server) stopDashboard() {
	if s.dashSrv == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	if err := s.dashSrv.Shutdown(sctx); err != nil {
		_ = s.dashSrv.Close()
	}
	cancel()
	s.dashWG.Wait()
}

func (s *Server) dashboardListeners() []dashboard.Listener {
	var out []dashboard.Listener
	for _, a := range s.Addrs() {
		out = append(out, dashboard.Listener{Addr: a, Serve: "MQTT, MQTT over WebSockets (" + WebSocketPath + "), REST API"})
	}
	if a := s.DashboardAddr(); a != "" {
		out = append(out, dashboard.Listener{Addr: a, Serve: "dashboard (HTTPS)"})
	}
	return out
}

// DashboardURL is the dashboard's login link,
// https://<hostname>:<port>/login?token=<one-time token>, minted by Start;
// "" without a dashboard or before Start. It is a secret (the token opens a
// session): print it on purpose only, never log it.
func (s *Server) DashboardURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dashURL
}

// DashboardAddr is the bound host:port of the dashboard; "" without a
// dashboard or before Start.
func (s *Server) DashboardAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dashAddr
}

// Dashboard is the running dashboard (nil without one or before Start); it
// mints more login tokens.
func (s *Server) Dashboard() *dashboard.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dash
}

// Addrs returns the bound host:port of every listener, in Config.Listen
// order; nil before Start.
func (s *Server) Addrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.addrs)
}

// Hostname is the hub's configured host name.
func (s *Server) Hostname() string { return s.cfg.Hostname }

// Port is the port of the first listener: the bound one after Start, the
// configured one before.
func (s *Server) Port() int {
	addr := s.cfg.Listen[0]
	if a := s.Addrs(); len(a) > 0 {
		addr = a[0]
	}
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// ServiceConnectionString is the iothubowner policy's connection string,
// HostName=<Hostname>:<port of the first listener>. It is a secret: print it
// on purpose only, never log it. It is "" if the store cannot be read.
func (s *Server) ServiceConnectionString() string {
	cs, err := ownerConnectionString(s.store, hostPort(s.cfg.Hostname, s.Port()))
	if err != nil {
		s.log.Error().Err(err).Msg("read owner policy")
		return ""
	}
	return cs
}

// CAFile is the path of the CA certificate users trust ("" when the hub
// serves a certificate given in Config.TLSCert).
func (s *Server) CAFile() string { return s.tlsMat.caFile }

// CAPool is a pool holding the hub's CA (nil when the hub serves a
// certificate given in Config.TLSCert).
func (s *Server) CAPool() *x509.CertPool {
	if s.tlsMat.caPool == nil {
		return nil
	}
	return s.tlsMat.caPool.Clone()
}

// openFileLimit is l, or the process's limit when l is zero.
func openFileLimit(l fdlimit.Limit) fdlimit.Limit {
	if l.Soft > 0 {
		return l
	}
	if l, err := fdlimit.Open(); err == nil {
		return l
	}
	return fdlimit.Limit{Soft: 1 << 62, Hard: 1 << 62}
}

// OpenFileLimit is the open-file limit the hub plans with, and Capacity how
// many connections fit under it.
func (s *Server) OpenFileLimit() (limit fdlimit.Limit, capacity int) {
	return s.fd.limit, s.fd.limit.Connections()
}

// Events is the hub's ring of recent events.
func (s *Server) Events() *events.Ring { return s.events }

// Store is the hub's state.
func (s *Server) Store() *store.Store { return s.store }

// Connected reports whether the device (or the module of key
// "{deviceId}/{moduleId}") has a live MQTT connection.
func (s *Server) Connected(deviceID string) bool {
	s.mu.Lock()
	b := s.broker
	s.mu.Unlock()
	return b != nil && b.connected(deviceID)
}

// ConnectionChanged returns a channel that is closed at the next change of
// any device's connection or subscriptions, and when the hub closes.
// Callers re-check their condition and ask again. It is nil (never ready)
// while the hub is not running.
func (s *Server) ConnectionChanged() <-chan struct{} {
	s.mu.Lock()
	b := s.broker
	s.mu.Unlock()
	if b == nil {
		return nil
	}
	return b.changed()
}

// Subscribed reports whether the device (or module key) has a live MQTT
// connection with a subscription matching topic (for example a method request topic).
func (s *Server) Subscribed(deviceID, topic string) bool {
	s.mu.Lock()
	b := s.broker
	s.mu.Unlock()
	if b == nil {
		return false
	}
	cl, ok := b.current(deviceID)
	return ok && subscribed(cl, topic)
}

// Devices is the device side as the REST API sees it.
func (s *Server) Devices() hubapi.Devices {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broker == nil {
		return nil
	}
	return s.broker
}

// hosts are the host names SAS audiences may name: the configured one, the
// loopback names the certificate covers and every specific listen host.
func (s *Server) hosts() []string {
	hs := []string{s.cfg.Hostname, "localhost", "127.0.0.1", "::1"}
	for _, a := range s.cfg.Listen {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" && !slices.Contains(hs, h) {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hs = append(hs, h)
			}
		}
	}
	return hs
}

func hostPort(host string, port int) string {
	if port == 443 || port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func ownerConnectionString(st *store.Store, hostPort string) (string, error) {
	p, err := st.Policy(ownerPolicy)
	if err != nil {
		return "", err
	}
	return formatServiceCS(hostPort, p.PrimaryKey), nil
}

func formatServiceCS(hostPort, key string) string {
	return "HostName=" + hostPort + ";SharedAccessKeyName=" + ownerPolicy + ";SharedAccessKey=" + key
}

// writeOwnerKey keeps a copy of the owner policy's primary key next to the
// store (0600), so that OwnerConnectionString works while the hub holds the
// store's lock.
func writeOwnerKey(dir string, st *store.Store) error {
	p, err := st.Policy(ownerPolicy)
	if err != nil {
		return fmt.Errorf("hub: read owner policy: %w", err)
	}
	path := filepath.Join(dir, ownerKeyFile)
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == p.PrimaryKey {
		return nil
	}
	return writeFileAtomic(path, []byte(p.PrimaryKey+"\n"), 0o600)
}

// ErrNoHub: the data folder holds no hub (no registry): it never ran there.
var ErrNoHub = errors.New("no hub in this data folder")

// Running reports whether a hub has the data of dataDir open now (it holds
// the store's lock).
func Running(dataDir string) bool {
	return store.InUse(filepath.Join(dataDir, dbFile))
}

// OwnerConnectionString returns the iothubowner connection string of the
// hub whose data lives in dataDir, with HostName=hostname:port (port 443 and
// 0 are left out). It works while that hub is running; it fails with
// ErrNoHub when the hub never ran in dataDir, and creates nothing.
func OwnerConnectionString(dataDir, hostname string, port int) (string, error) {
	if hostname == "" {
		hostname = DefaultHostname
	}
	hp := hostPort(hostname, port)
	if _, err := os.Stat(filepath.Join(dataDir, dbFile)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s: %w", dataDir, ErrNoHub)
		}
		return "", fmt.Errorf("hub: data directory: %w", err)
	}
	if b, err := os.ReadFile(filepath.Join(dataDir, ownerKeyFile)); err == nil {
		if key := strings.TrimSpace(string(b)); key != "" {
			return formatServiceCS(hp, key), nil
		}
	}
	st, err := store.Open(filepath.Join(dataDir, dbFile), time.Now)
	if err != nil {
		return "", fmt.Errorf("hub: open store: %w", err)
	}
	cs, err := ownerConnectionString(st, hp)
	if err == nil {
		err = writeOwnerKey(dataDir, st)
	}
	if cerr := st.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return cs, nil
}
