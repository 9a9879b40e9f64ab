// Package mqtt is the device's MQTT transport to IoT Hub: MQTT 3.1.1 over
// TLS (port 8883) or over WebSockets (443, /$iothub/websocket). It
// implements device.Conn.
//
// Packets are framed by eclipse/paho.mqtt.golang's packets package and
// WebSockets by gorilla/websocket (ws.go); the connection itself is this
// package's own, because a fleet holds thousands of them (see link.go): per
// connection one goroutine reads, writes share a mutex, and the keep-alive
// is a timer that costs nothing while it waits. Run's goroutine is the only
// other one an idle connection keeps; the goroutines that dispatch inbound
// traffic and send reported properties start when there is work and end
// when it is done.
//
// The identity is a device or a module of one (ModuleId in the connection
// string: client id "{device}/{module}", SAS audience
// "{host}/devices/{device}/modules/{module}"; methods and twin use the same
// topics), authenticated by a SAS token or, for an x509=true connection
// string, by the client certificate of Config.Certificate, presented in
// every TLS handshake (MQTT and WebSockets alike) with no MQTT password.
//
// The connection is a policy: Run owns the loop. Every connect uses a new
// link with a freshly minted SAS as password (none for x509), subscribes to
// the method, twin-response and desired-property topics (QoS 0), then reads
// the twin. After a drop it reconnects with exponential backoff and full
// jitter, capped at MaxBackoff; the backoff starts over once a connection
// has lasted 30 s.
// Config.Gate, when set, is waited for before every attempt (a fleet's
// shared connect-rate limiter). The first connect is the exception:
// refused credentials (CONNACK 4 or 5) or an untrusted hub certificate end
// Run with device.ErrUnauthorized or device.ErrUntrusted instead of
// retrying forever.
//
// The SAS is renewed at 80 % of its lifetime (SASTTL, default 1 h, so 12
// minutes before expiry, like the C SDK) by a planned disconnect and
// reconnect with a new password; a given SharedAccessSignature and a
// certificate are never renewed. Before a planned disconnect (renewal or
// Suspend) the connection unsubscribes from method requests, so the hub
// holds new calls for the next connection (or fails them as "not online" when
// the caller gave no connect timeout), reads the twin as an ordering barrier,
// and answers every call already received. Reported-property patches wait in
// an ordered queue that is popped only when the hub acknowledges a patch
// (204), so none is lost across a switch or an outage.
//
// The reader never blocks on the device: it only queues (method calls,
// desired patches) or hands a twin response to its waiting request, so order
// is kept; method handlers run on goroutines owned by Run, and every
// goroutine ends before Run returns.
//
// Connection events go to Config.OnEvent as device.Event values (with
// DeviceID, and ModuleID for a module), and are logged for people with the
// same stable "event" values: connected (target, transport, device, module,
// token_expires or cert_expires), subscribed (filters), disconnected
// (reason: shutdown, suspended, token renewal, or the network error),
// connect_failed (error), retrying (attempt, in), token_renewed (expires),
// suspended, resumed, twin_synced (debug), twin_get_failed,
// reported (debug), report_retry, report_rejected, method_response_failed,
// drain_timeout.
package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
)

// Transport selects how MQTT reaches the hub.
type Transport string

// Transports.
const (
	TransportMQTT       Transport = "mqtt"    // MQTT over TLS, port 8883
	TransportWebSockets Transport = "mqtt-ws" // MQTT over WebSockets over TLS, port 443
)

// Defaults for Config fields left zero.
const (
	DefaultSASTTL         = time.Hour
	DefaultKeepAlive      = 120 * time.Second
	DefaultMaxBackoff     = 60 * time.Second
	DefaultBaseBackoff    = time.Second
	DefaultConnectTimeout = 30 * time.Second
	DefaultRequestTimeout = 30 * time.Second
	DefaultDrainTimeout   = 10 * time.Second
)

// RenewAt is the fraction of a token's lifetime after which it is renewed.
const RenewAt = 0.8

// stableSession is how long a connection must last for the backoff to start
// over after it drops; a hub that accepts and drops at once (another client
// using the same identity, say) is retried ever more slowly.
const stableSession = 30 * time.Second

// maxResponseWait bounds how long a method answer waits for a connection:
// IoT Hub gives up on a method call after at most 300 s.
const maxResponseWait = 300 * time.Second

// ErrClosed is returned by Report, Suspend and Resume when Run is not running.
var ErrClosed = errors.New("mqtt: connection not running")

// Config configures a Conn. ConnectionString is required; every other zero
// field takes its default.
type Config struct {
	// ConnectionString is a device or module identity with SharedAccessKey
	// (tokens are minted per connect), SharedAccessSignature (used as is
	// and never renewed) or x509=true (Certificate is then required).
	// GatewayHostName, when set, is dialled instead of HostName; the SAS
	// audience and username keep HostName.
	ConnectionString *sas.ConnectionString
	// Certificate is the client certificate (with its private key) an
	// x509=true identity presents in the TLS handshake, whatever CAs the
	// hub says it accepts. It is required for x509 and refused otherwise.
	// With TLSConfig set, New adds it to a copy.
	Certificate *tls.Certificate
	// ModelID is the IoT Plug and Play model the device announces
	// ("dtmi:...;1"), sent as model-id in the MQTT username; empty sends
	// none.
	ModelID string
	// Transport defaults to TransportMQTT.
	Transport Transport
	// RootCAs are the trusted roots; nil means the system roots.
	// Verification is never disabled.
	RootCAs *x509.CertPool
	// TLSConfig, when set, is used for every connect instead of one built
	// from RootCAs. Many connections may share one (with a
	// ClientSessionCache, reconnects resume TLS sessions); it is never
	// modified. Its InsecureSkipVerify must be false.
	TLSConfig *tls.Config
	// ClientType is sent as DeviceClientType in the username, e.g. "dmctl/1.2.0".
	ClientType string
	// SASTTL is the lifetime of each minted token (default 1 h); it is
	// renewed after RenewAt of it.
	SASTTL time.Duration
	// KeepAlive is the MQTT keep-alive (default 120 s).
	KeepAlive time.Duration
	// ConnectTimeout bounds one connect attempt (default 30 s).
	ConnectTimeout time.Duration
	// RequestTimeout bounds one twin request (default 30 s).
	RequestTimeout time.Duration
	// DrainTimeout bounds how long a planned disconnect waits for method
	// calls in progress to be answered (default 10 s).
	DrainTimeout time.Duration
	// MaxBackoff caps the reconnect delay (default 60 s).
	MaxBackoff time.Duration
	// Backoff returns the delay before reconnect attempt n (n >= 1).
	// Default: retry.Exponential(DefaultBaseBackoff, MaxBackoff).
	Backoff retry.Backoff
	// Proxy picks the HTTP proxy for WebSockets. Default:
	// http.ProxyFromEnvironment (HTTPS_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// Log receives connection events. The zero value logs nothing.
	Log zerolog.Logger
	// Now is the clock for token expiry. Default: time.Now.
	Now func() time.Time
	// Gate, when set, is called before every connect attempt, the first
	// and every reconnect alike, and the attempt waits until it returns.
	// A fleet passes a shared rate limiter here. An error ends the wait
	// and is treated like ctx ending (Gate should return ctx.Err()).
	Gate func(ctx context.Context) error
	// OnEvent, when set, receives the connection's events (connected,
	// subscribed, disconnected, connect_failed, retrying, token_renewed,
	// suspended, resumed, reported, report_retry, report_rejected,
	// twin_get_failed, method_response_failed), with DeviceID set. It is called on
	// goroutines the Conn owns, possibly several at once, never after Run
	// has returned, and must return quickly. Events carry no secrets.
	OnEvent func(device.Event)
	// OnState, when set, is called by the connection's loop at every
	// change of its State, one call at a time (the loop moves between
	// goroutines: not necessarily the one that called Run). It must return
	// quickly.
	OnState func(State)
	// Quiet logs routine connection events (connected, disconnected,
	// retrying, ...) at debug level instead of info and warn; errors keep
	// their level. Fleets of simulated devices set it, and give Log a
	// device field of their own (the connected event then omits it).
	Quiet bool
	// LocalAddr, when set, is the local address every connect dials from
	// (a *net.TCPAddr with port 0: the kernel picks the port). A fleet
	// spreads its devices over several source addresses this way, each
	// with its own ephemeral ports towards one hub address.
	LocalAddr net.Addr
}

// State is where a Conn is in its connection cycle.
type State int32

// States, as reported to Config.OnState.
const (
	StateIdle       State = iota // Run not called yet
	StateConnecting              // waiting for the Gate or connecting
	StateConnected               // connected and subscribed
	StateRetrying                // waiting out the backoff after a failure or a drop
	StateSuspended               // offline on purpose until Resume (a reboot)
	StateStopped                 // Run has returned
)

var stateNames = [...]string{"idle", "connecting", "connected", "retrying", "suspended", "stopped"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Conn is an MQTT link to IoT Hub for one device identity. Create it with
// New, then call Run once.
type Conn struct {
	cfg     Config
	cs      *sas.ConnectionString
	log     zerolog.Logger
	tlsConf *tls.Config
	// certExpiry is the client certificate's NotAfter (x509 only).
	certExpiry time.Time
	broker     string // the WebSocket URL
	target     string // host:port shown in events
	ridSeq     atomic.Uint64
	started    atomic.Bool
	// dialConn opens the transport: dialTransport unless a test replaces it.
	dialConn func(ctx context.Context) (net.Conn, error)

	suspendKick chan struct{} // buffered 1: a Suspend request is waiting in suspendReqs
	resumeCh    chan struct{} // buffered 1
	ready       chan struct{} // closed after the first successful connect
	done        chan struct{} // closed when Run returns

	mu      sync.Mutex
	runCtx  context.Context // set while Run runs; nil before, and after it stops
	handler device.Handler
	// dispatching and reporting say whether the goroutine that drains the
	// inbox or the report queue runs. Each is started when work arrives
	// and ends when its queue is empty, so an idle connection costs no
	// goroutine of its own besides Run's.
	dispatching bool
	reporting   bool
	sess        *session
	suspendReqs []chan struct{}            // Suspend calls not yet acknowledged
	parked      func()                     // while a session is parked: ends it for a Suspend
	up          chan struct{}              // while sess is nil and someone waits: closed when a session is up
	drained     chan struct{}              // buffered 1, made by the first drain: a method call finished
	pending     map[string]chan twinResult // nil while none is waiting
	inbox       []inbound
	inflight    int // method calls received and not yet answered
	queue       []*report

	wg sync.WaitGroup // goroutines started by Run
}

type session struct {
	link     *link
	dead     chan struct{} // closed when the link reports the connection lost
	deadOnce sync.Once
	deadErr  error // why, set before dead is closed
	deadMu   sync.Mutex
	onDead   func()        // called once dead is closed (whenDead)
	down     chan struct{} // closed when the session has ended
	expiry   time.Time     // token expiry; zero for x509
	// renewAt is when RenewAt of the token's lifetime has passed.
	renewAt time.Time
}

func (s *session) markDead(err error) {
	s.deadOnce.Do(func() {
		s.deadMu.Lock()
		s.deadErr = err
		close(s.dead)
		f := s.onDead
		s.deadMu.Unlock()
		if f != nil {
			f()
		}
	})
}

// whenDead calls f once the link is lost: now if it is already.
func (s *session) whenDead(f func()) {
	s.deadMu.Lock()
	select {
	case <-s.dead:
		s.deadMu.Unlock()
		f()
		return
	default:
	}
	s.onDead = f
	s.deadMu.Unlock()
}

// New validates cfg and returns a Conn. It does not connect.
func New(cfg Config) (*Conn, error) {
	cs := cfg.ConnectionString
	if cs == nil {
		return nil, errors.New("mqtt: no connection string")
	}
	if cs.DeviceID == "" {
		return nil, errors.New("mqtt: connection string has no DeviceId")
	}
	switch {
	case cs.X509 && cfg.Certificate == nil:
		return nil, fmt.Errorf("mqtt: %s is an x509 identity: it needs a client certificate", identity(cs))
	case !cs.X509 && cfg.Certificate != nil:
		return nil, fmt.Errorf("mqtt: %s authenticates with SAS: a client certificate needs an x509=true connection string", identity(cs))
	case !cs.X509 && cs.SharedAccessKey == "" && cs.SharedAccessSignature == "":
		return nil, errors.New("mqtt: connection string has none of SharedAccessKey, SharedAccessSignature and x509=true")
	}
	if cfg.Certificate != nil && (len(cfg.Certificate.Certificate) == 0 || cfg.Certificate.PrivateKey == nil) {
		return nil, errors.New("mqtt: the client certificate has no certificate or no private key")
	}
	if err := CheckModelID(cfg.ModelID); err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	if cfg.Transport == "" {
		cfg.Transport = TransportMQTT
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.SASTTL, DefaultSASTTL)
	def(&cfg.KeepAlive, DefaultKeepAlive)
	def(&cfg.ConnectTimeout, DefaultConnectTimeout)
	def(&cfg.RequestTimeout, DefaultRequestTimeout)
	def(&cfg.DrainTimeout, DefaultDrainTimeout)
	def(&cfg.MaxBackoff, DefaultMaxBackoff)
	if cfg.Backoff == nil {
		cfg.Backoff = retry.Exponential(DefaultBaseBackoff, cfg.MaxBackoff)
	}
	if cfg.Proxy == nil {
		cfg.Proxy = http.ProxyFromEnvironment
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TLSConfig != nil && cfg.TLSConfig.InsecureSkipVerify {
		return nil, errors.New("mqtt: TLS certificate verification cannot be switched off")
	}
	host := cs.HostName
	if cs.GatewayHostName != "" {
		host = cs.GatewayHostName
	}
	c := &Conn{
		cfg:         cfg,
		cs:          cs,
		log:         cfg.Log,
		suspendKick: make(chan struct{}, 1),
		resumeCh:    make(chan struct{}, 1),
		ready:       make(chan struct{}),
		done:        make(chan struct{}),
		tlsConf:     cfg.TLSConfig,
	}
	c.dialConn = c.dialTransport
	if c.tlsConf == nil {
		// ServerName set here spares crypto/tls a copy of the config per dial.
		c.tlsConf = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12, ServerName: ServerName(cs)}
	} else if cfg.Certificate != nil {
		c.tlsConf = c.tlsConf.Clone()
	}
	if cert := cfg.Certificate; cert != nil {
		// Sent whatever the hub's certificate request lists as acceptable
		// CAs (crypto/tls would otherwise skip a self-signed certificate
		// when the hub names the CAs it trusts), as OpenSSL-based SDKs do.
		c.tlsConf.Certificates = nil
		c.tlsConf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		expiry, err := certificateExpiry(cert)
		if err != nil {
			return nil, fmt.Errorf("mqtt: client certificate: %w", err)
		}
		c.certExpiry = expiry
	}
	switch cfg.Transport {
	case TransportMQTT:
		c.target = withPort(host, 8883)
	case TransportWebSockets:
		c.target = withPort(host, 443)
		c.broker = "wss://" + c.target + "/$iothub/websocket"
	default:
		return nil, fmt.Errorf("mqtt: unknown transport %q (want %q or %q)", cfg.Transport, TransportMQTT, TransportWebSockets)
	}
	return c, nil
}

// CurvePreferences are the key exchanges a simulated fleet offers (the
// fleet's shared TLS configuration): X25519, then P-256, as the device
// SDKs' TLS stacks offer. A single device keeps Go's default, which adds the hybrid post-quantum X25519MLKEM768,
// whose key share makes the ClientHello and the hub's answer about 1.1 KB
// larger each: buffers a TLS connection keeps for its whole life, on the
// device and on the hub (about 5.6 KB per connection in all, measured by
// bench's BenchmarkIdleConnections), and ML-KEM work in every handshake
// of a fleet that connects thousands at once.
func CurvePreferences() []tls.CurveID { return []tls.CurveID{tls.X25519, tls.CurveP256} }

// ServerName is the TLS server name a connection for cs verifies: the host
// it dials (GatewayHostName if set, else HostName) without port.
func ServerName(cs *sas.ConnectionString) string {
	h := cs.HostName
	if cs.GatewayHostName != "" {
		h = cs.GatewayHostName
	}
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}

// withPort returns host:port, keeping a port that host already carries.
func withPort(host string, port int) string {
	if _, p, err := net.SplitHostPort(host); err == nil && p != "" {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// info and warn return the event for routine connection news: at debug
// level when the Conn is Quiet.
func (c *Conn) info() *zerolog.Event {
	if c.cfg.Quiet {
		return c.log.Debug()
	}
	return c.log.Info()
}

func (c *Conn) warn() *zerolog.Event {
	if c.cfg.Quiet {
		return c.log.Debug()
	}
	return c.log.Warn()
}

// emit hands e to Config.OnEvent, stamped with the time and the device.
func (c *Conn) emit(e device.Event) {
	if c.cfg.OnEvent == nil {
		return
	}
	e.Time = time.Now()
	e.DeviceID = c.cs.DeviceID
	e.ModuleID = c.cs.ModuleID
	c.cfg.OnEvent(e)
}

func (c *Conn) setState(s State) {
	if c.cfg.OnState != nil {
		c.cfg.OnState(s)
	}
}

// DeviceID is the device the connection authenticates as (itself or one
// of its modules).
func (c *Conn) DeviceID() string { return c.cs.DeviceID }

// ModuleID is the module the connection authenticates as, or "" for the
// device itself.
func (c *Conn) ModuleID() string { return c.cs.ModuleID }

// identity names a device ("d") or a module ("d/m"), as its MQTT client id.
func identity(cs *sas.ConnectionString) string {
	return iothub.ClientID(cs.DeviceID, cs.ModuleID)
}

// CheckModelID loosely checks an IoT Plug and Play model id (DTMI): empty
// (none), or "dtmi:" followed by printable ASCII without spaces. The hub
// validates the rest.
func CheckModelID(id string) error {
	if id == "" {
		return nil
	}
	if !strings.HasPrefix(id, "dtmi:") || len(id) == len("dtmi:") {
		return fmt.Errorf("model id %q is not a DTMI: it must start with \"dtmi:\" (e.g. dtmi:com:example:Thermostat;1)", id)
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return fmt.Errorf("model id %q holds a space or a character outside printable ASCII", id)
		}
	}
	return nil
}

// certificateExpiry returns the NotAfter of the certificate's leaf.
func certificateExpiry(cert *tls.Certificate) (time.Time, error) {
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return time.Time{}, err
		}
	}
	return leaf.NotAfter, nil
}

// Target is the host:port the connection dials.
func (c *Conn) Target() string { return c.target }

// Ready is closed once the first connect (and its subscriptions) succeeded.
func (c *Conn) Ready() <-chan struct{} { return c.ready }
