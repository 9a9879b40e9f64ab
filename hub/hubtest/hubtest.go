// Package hubtest runs a real dmctl local hub for tests, in the manner of
// net/http/httptest: loopback listener on an ephemeral port, data in a
// temporary directory, shut down by t.Cleanup.
package hubtest

import (
	"context"
	"crypto/x509"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/rs/zerolog"
)

// Server is a running hub.
type Server struct {
	cfg hub.Config

	mu        sync.Mutex
	hub       *hub.Server
	restarted chan struct{} // closed and replaced by every Restart
}

// Option adjusts a test hub.
type Option func(*hub.Config)

// WithLogger sends the hub's logs to l (default: the test log at info level).
func WithLogger(l zerolog.Logger) Option {
	return func(c *hub.Config) { c.Log = l }
}

// WithHostname sets the hub's host name (default "localhost").
func WithHostname(name string) Option {
	return func(c *hub.Config) { c.Hostname = name }
}

// WithDataDir keeps the hub's data in dir instead of a temporary directory.
func WithDataDir(dir string) Option {
	return func(c *hub.Config) { c.DataDir = dir }
}

// WithX509CA makes the hub trust the device CA certificates of these PEM
// files (hub.Config.X509CAFiles).
func WithX509CA(files ...string) Option {
	return func(c *hub.Config) { c.X509CAFiles = append(c.X509CAFiles, files...) }
}

// NewServer starts a hub on 127.0.0.1 with an ephemeral port. It is closed
// when the test ends.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	cfg := hub.Config{
		Listen:   []string{"127.0.0.1:0"},
		Hostname: "localhost",
		Log:      zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	s := &Server{cfg: cfg, restarted: make(chan struct{})}
	h, err := start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("hubtest: %v", err)
	}
	s.hub = h
	// Pin the port so Restart comes back on the same address.
	s.cfg.Listen = []string{h.Addrs()[0]}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func start(ctx context.Context, cfg hub.Config) (*hub.Server, error) {
	h, err := hub.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := h.Start(context.WithoutCancel(ctx)); err != nil {
		_ = h.Close()
		return nil, err
	}
	return h, nil
}

// Hub is the running hub (a new one after Restart).
func (s *Server) Hub() *hub.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hub
}

func (s *Server) current() (*hub.Server, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hub, s.restarted
}

// Store is the running hub's store.
func (s *Server) Store() *store.Store { return s.Hub().Store() }

// Close stops the hub. NewServer registers it with t.Cleanup; calling it
// again is harmless.
func (s *Server) Close() error { return s.Hub().Close() }

// Addr is the hub's host:port (127.0.0.1:port).
func (s *Server) Addr() string { return s.cfg.Listen[0] }

// Port is the hub's port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr())
	n, _ := strconv.Atoi(p)
	return n
}

// HostName is what connection strings carry: "localhost:port".
func (s *Server) HostName() string {
	return net.JoinHostPort(s.cfg.Hostname, strconv.Itoa(s.Port()))
}

// DataDir is where the hub keeps its state.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// ServiceConnectionString is the iothubowner connection string.
func (s *Server) ServiceConnectionString() string { return s.Hub().ServiceConnectionString() }

// CAPool holds the hub's CA.
func (s *Server) CAPool() *x509.CertPool { return s.Hub().CAPool() }

// CAFile is the path of the hub's CA certificate (PEM).
func (s *Server) CAFile() string { return s.Hub().CAFile() }

// CreateDevice registers a device with generated keys and returns its
// connection string (HostName=localhost:port;DeviceId=id;SharedAccessKey=...).
func (s *Server) CreateDevice(t testing.TB, id string) string {
	t.Helper()
	d, err := s.Store().CreateDevice(iothub.Device{DeviceID: id})
	if err != nil {
		t.Fatalf("hubtest: create device %q: %v", id, err)
	}
	return s.DeviceConnectionString(d)
}

// DeviceConnectionString renders the connection string of a registered
// device with its primary key.
func (s *Server) DeviceConnectionString(d iothub.Device) string {
	key := ""
	if d.Authentication != nil && d.Authentication.SymmetricKey != nil {
		key = d.Authentication.SymmetricKey.PrimaryKey
	}
	return "HostName=" + s.HostName() + ";DeviceId=" + d.DeviceID + ";SharedAccessKey=" + key
}

// CreateModule registers module mod on the existing device dev with
// generated keys and returns its connection string
// (HostName=localhost:port;DeviceId=dev;ModuleId=mod;SharedAccessKey=...).
func (s *Server) CreateModule(t testing.TB, dev, mod string) string {
	t.Helper()
	m, err := s.Store().CreateModule(iothub.Module{DeviceID: dev, ModuleID: mod})
	if err != nil {
		t.Fatalf("hubtest: create module %q on device %q: %v", mod, dev, err)
	}
	return s.ModuleConnectionString(m)
}

// ModuleConnectionString renders the connection string of a registered
// module with its primary key.
func (s *Server) ModuleConnectionString(m iothub.Module) string {
	key := ""
	if m.Authentication != nil && m.Authentication.SymmetricKey != nil {
		key = m.Authentication.SymmetricKey.PrimaryKey
	}
	return "HostName=" + s.HostName() + ";DeviceId=" + m.DeviceID + ";ModuleId=" + m.ModuleID + ";SharedAccessKey=" + key
}

// Restart stops the hub and starts it again on the same port with the same
// data, as a hub process restart would.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.hub.Close(); err != nil {
		t.Fatalf("hubtest: stop hub: %v", err)
	}
	h, err := start(t.Context(), s.cfg)
	if err != nil {
		t.Fatalf("hubtest: restart hub: %v", err)
	}
	s.hub = h
	close(s.restarted)
	s.restarted = make(chan struct{})
}

// Connected reports whether the device (or module key
// "{deviceId}/{moduleId}") has a live MQTT connection.
func (s *Server) Connected(id string) bool { return s.Hub().Connected(id) }

// WaitConnected waits until the device's connection state is want, or ctx
// ends.
func (s *Server) WaitConnected(ctx context.Context, id string, want bool) error {
	for {
		h, restarted := s.current()
		changed := h.ConnectionChanged()
		if h.Connected(id) == want {
			return nil
		}
		select {
		case <-changed:
		case <-restarted:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitSubscribed waits until the device is connected with a subscription
// matching topic (for example a method request topic), or ctx ends.
func (s *Server) WaitSubscribed(ctx context.Context, id, topic string) error {
	for {
		h, restarted := s.current()
		changed := h.ConnectionChanged()
		if h.Subscribed(id, topic) {
			return nil
		}
		select {
		case <-changed:
		case <-restarted:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
