// Package mqtt is the device's MQTT transport to IoT Hub: MQTT 3.1.1 over
// TLS (port 8883) or over WebSockets (443, /$iothub/websocket). It
// implements device.Conn.
//
// Packets are framed by eclipse/paho.mqtt.golang's packets package, and
// WebSockets are dialled by paho; the connection itself is this package's
// own, because a fleet holds thousands of them (see link.go): per
// connection one goroutine reads, writes share a mutex, and the keep-alive
// is a timer that costs nothing while it waits. Run's goroutine is the only
// other one an idle connection keeps; the goroutines that dispatch inbound
// traffic and send reported properties start when there is work and end
// when it is done.
//
// The connection is a policy: Run owns the loop. Every connect uses a new
// link with a freshly minted SAS as password, subscribes to the method,
// twin-response and desired-property topics (QoS 0), then reads the twin.
// After a drop it reconnects with exponential backoff and full jitter, capped
// at MaxBackoff; the backoff starts over once a connection has lasted 30 s.
// Config.Gate, when set, is waited for before every attempt (a fleet's
// shared connect-rate limiter). The first connect is the exception:
// refused credentials (CONNACK 4 or 5) or an untrusted hub certificate end
// Run with device.ErrUnauthorized or device.ErrUntrusted instead of
// retrying forever.
//
// The SAS is renewed at 80 % of its lifetime (SASTTL, default 1 h, so 12
// minutes before expiry, like the C SDK) by a planned disconnect and
// reconnect with a new password. Before a planned disconnect (renewal or
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
// Connection events are logged with stable "event" values: connected
// (target, transport, token_expires), subscribed (filters), disconnected
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
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
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
	// (tokens are minted per connect) or SharedAccessSignature (used as is
	// and never renewed). GatewayHostName, when set, is dialled instead of
	// HostName; the SAS audience and username keep HostName.
	ConnectionString *sas.ConnectionString
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
	// Default: Exponential(DefaultBaseBackoff, MaxBackoff).
	Backoff func(attempt int) time.Duration
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
	// OnState, when set, is called on the Run goroutine at every change of
	// the connection's State. It must return quickly.
	OnState func(State)
	// Quiet logs routine connection events (connected, disconnected,
	// retrying, ...) at debug level instead of info and warn; errors keep
	// their level. Fleets of simulated devices set it, and give Log a
	// device field of their own (the connected event then omits it).
	Quiet bool
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

// Exponential returns a backoff with full jitter: attempt n waits a random
// duration in [0, min(max, base·2^(n-1))].
func Exponential(base, max time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		if attempt < 1 {
			attempt = 1
		}
		ceil := max
		if attempt <= 62 {
			if d := base << (attempt - 1); d > 0 && d < max {
				ceil = d
			}
		}
		if ceil <= 0 {
			return 0
		}
		return rand.N(ceil + 1)
	}
}

// Conn is an MQTT link to IoT Hub for one device identity. Create it with
// New, then call Run once.
type Conn struct {
	cfg     Config
	cs      *sas.ConnectionString
	log     zerolog.Logger
	tlsConf *tls.Config
	broker  string // URL paho dials
	target  string // host:port shown in events
	ridSeq  atomic.Uint64
	started atomic.Bool

	suspendCh chan chan struct{}
	resumeCh  chan struct{} // buffered 1
	drained   chan struct{} // buffered 1: a method call finished
	ready     chan struct{} // closed after the first successful connect
	done      chan struct{} // closed when Run returns

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
	up          chan struct{} // closed while sess != nil
	pending     map[string]chan twinResult
	inbox       []inbound
	inflight    int // method calls received and not yet answered
	queue       []*report

	wg sync.WaitGroup // goroutines started by Run
}

type session struct {
	link     *link
	dead     chan struct{} // closed when paho reports the connection lost
	deadOnce sync.Once
	deadErr  error         // why, set before dead is closed
	down     chan struct{} // closed when the session has ended
	expiry   time.Time     // token expiry
	// renewAt is when RenewAt of the token's lifetime has passed.
	renewAt time.Time
}

func (s *session) markDead(err error) {
	s.deadOnce.Do(func() {
		s.deadErr = err
		close(s.dead)
	})
}

type inboundKind int

const (
	inMethod inboundKind = iota + 1
	inDesired
	inTwin
)

type inbound struct {
	kind    inboundKind
	name    string
	rid     string
	version int64
	payload []byte
}

type twinResult struct {
	status  int
	version int64
	body    []byte
}

type report struct {
	patch []byte
	done  chan error // buffered 1
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
	if cs.SharedAccessKey == "" && cs.SharedAccessSignature == "" {
		return nil, errors.New("mqtt: connection string has neither SharedAccessKey nor SharedAccessSignature (x509 is not supported)")
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
		cfg.Backoff = Exponential(DefaultBaseBackoff, cfg.MaxBackoff)
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
		cfg:       cfg,
		cs:        cs,
		log:       cfg.Log,
		suspendCh: make(chan chan struct{}),
		resumeCh:  make(chan struct{}, 1),
		drained:   make(chan struct{}, 1),
		ready:     make(chan struct{}),
		done:      make(chan struct{}),
		up:        make(chan struct{}),
		pending:   make(map[string]chan twinResult),
		tlsConf:   cfg.TLSConfig,
	}
	if c.tlsConf == nil {
		// ServerName set here spares crypto/tls a copy of the config per dial.
		c.tlsConf = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12, ServerName: ServerName(cs)}
	}
	switch cfg.Transport {
	case TransportMQTT:
		c.target = withPort(host, 8883)
		c.broker = "ssl://" + c.target
	case TransportWebSockets:
		c.target = withPort(host, 443)
		c.broker = "wss://" + c.target + "/$iothub/websocket"
	default:
		return nil, fmt.Errorf("mqtt: unknown transport %q (want %q or %q)", cfg.Transport, TransportMQTT, TransportWebSockets)
	}
	return c, nil
}

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

func (c *Conn) setState(s State) {
	if c.cfg.OnState != nil {
		c.cfg.OnState(s)
	}
}

// DeviceID is the identity the connection authenticates as.
func (c *Conn) DeviceID() string { return c.cs.DeviceID }

// Target is the host:port the connection dials.
func (c *Conn) Target() string { return c.target }

// Ready is closed once the first connect (and its subscriptions) succeeded.
func (c *Conn) Ready() <-chan struct{} { return c.ready }

// Run implements device.Conn. It may be called once.
func (c *Conn) Run(ctx context.Context, h device.Handler) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("mqtt: Run called twice")
	}
	defer close(c.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	c.runCtx, c.handler = ctx, h
	c.startReporterLocked()
	c.mu.Unlock()
	err := c.loop(ctx)
	cancel()
	c.mu.Lock()
	c.runCtx = nil // no worker starts from now on
	c.mu.Unlock()
	c.wg.Wait()
	c.setState(StateStopped)
	return err
}

// loop connects, waits for the session to end, and connects again.
func (c *Conn) loop(ctx context.Context) error {
	attempt := 0        // failed attempts since the last stable session
	connected := false  // a connect has succeeded once
	renewing := false   // the last session ended for token renewal
	suspended := false  // Suspend is in force
	retryAfter := false // wait before the next attempt
	for {
		if suspended {
			c.setState(StateSuspended)
			select {
			case <-ctx.Done():
				return nil
			case <-c.resumeCh:
				suspended = false
				c.info().Str("event", "resumed").Msg("reconnecting")
			case req := <-c.suspendCh:
				close(req)
				continue
			}
		}
		if retryAfter {
			attempt++
			c.setState(StateRetrying)
			d := c.cfg.Backoff(attempt)
			c.warn().Str("event", "retrying").Int("attempt", attempt).Str("in", d.String()).Msg("reconnecting")
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case req := <-c.suspendCh:
				t.Stop()
				c.enterSuspend(req, "offline")
				suspended = true
				retryAfter = false
				continue
			case <-t.C:
			}
		}
		c.setState(StateConnecting)
		if c.cfg.Gate != nil {
			if err := c.cfg.Gate(ctx); err != nil {
				return nil
			}
		}
		s, err := c.dialAside(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !connected && (errors.Is(err, device.ErrUnauthorized) || errors.Is(err, device.ErrUntrusted)) {
				return err
			}
			c.warn().Str("event", "connect_failed").Str("target", c.target).Err(err).Msg("connect failed")
			retryAfter = true
			continue
		}
		retryAfter = false
		connectedAt := time.Now()
		c.setState(StateConnected)
		if renewing {
			c.info().Str("event", "token_renewed").Time("expires", s.expiry).Msg("reconnected with a new token")
			renewing = false
		}
		if !connected {
			connected = true
			close(c.ready)
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.syncTwin(ctx, s)
		}()

		var renew <-chan time.Time
		var renewTimer *time.Timer
		if c.cs.SharedAccessKey != "" {
			renewTimer = time.NewTimer(s.renewAt.Sub(c.cfg.Now()))
			renew = renewTimer.C
		}
		stopRenew := func() {
			if renewTimer != nil {
				renewTimer.Stop()
			}
		}
		select {
		case <-ctx.Done():
			stopRenew()
			c.endSession(s, true)
			c.info().Str("event", "disconnected").Str("reason", "shutdown").Msg("disconnected")
			return nil
		case <-s.dead:
			stopRenew()
			c.endSession(s, false)
			c.warn().Str("event", "disconnected").Str("reason", reason(s.deadErr)).Msg("connection lost")
			retryAfter = true
			if time.Since(connectedAt) >= stableSession {
				attempt = 0
			}
		case <-renew:
			c.quiesce(ctx, s)
			c.endSession(s, true)
			c.info().Str("event", "disconnected").Str("reason", "token renewal").Msg("renewing the token")
			renewing = true
			attempt = 0
		case req := <-c.suspendCh:
			stopRenew()
			c.quiesce(ctx, s)
			c.endSession(s, true)
			c.info().Str("event", "disconnected").Str("reason", "suspended").Msg("disconnected")
			c.enterSuspend(req, "suspended")
			suspended = true
			attempt = 0
		}
	}
}

func reason(err error) string {
	if err == nil {
		return "unknown"
	}
	return err.Error()
}

// enterSuspend forgets a stale Resume and acknowledges the Suspend.
func (c *Conn) enterSuspend(req chan struct{}, state string) {
	select {
	case <-c.resumeCh:
	default:
	}
	c.info().Str("event", "suspended").Str("state", state).Msg("staying offline until resumed")
	close(req)
}

// dialAside runs dial on a goroutine of its own and waits for it. The TLS
// handshake needs a deep stack, and Run's goroutine, parked for the life of
// every connection, would keep the stack it once grew to.
func (c *Conn) dialAside(ctx context.Context) (*session, error) {
	type result struct {
		s   *session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.dial(ctx)
		ch <- result{s, err}
	}()
	r := <-ch
	return r.s, r.err
}

// dial makes one connect attempt: new paho client, fresh token, CONNECT,
// SUBSCRIBE. On success the session is current.
func (c *Conn) dial(ctx context.Context) (*session, error) {
	// A token's expiry has whole seconds: round up so that it lives at
	// least SASTTL, then read back what the token really says.
	minted := c.cfg.Now()
	expiry := minted.Add(c.cfg.SASTTL).Add(time.Second - 1).Truncate(time.Second)
	token, err := c.cs.Token(expiry)
	if err != nil {
		return nil, fmt.Errorf("mint token for %s: %w", c.cs.DeviceID, err)
	}
	if t, err := sas.ParseToken(token); err == nil {
		expiry = t.Expiry
	}
	s := &session{dead: make(chan struct{}), down: make(chan struct{}), expiry: expiry,
		renewAt: minted.Add(time.Duration(float64(expiry.Sub(minted)) * RenewAt))}
	l, err := c.dialLink(ctx, linkConfig{
		clientID: iothub.ClientID(c.cs.DeviceID, c.cs.ModuleID),
		username: iothub.Username(c.cs.HostName, c.cs.DeviceID, c.cs.ModuleID, c.cfg.ClientType),
		password: token,
		route:    c.route,
		lost:     s.markDead,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.connectError(err)
	}
	s.link = l
	filters := []string{iothub.MethodsFilter, iothub.TwinResFilter, iothub.DesiredFilter}
	sctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	granted, err := l.subscribe(sctx, filters, []byte{0, 0, 0})
	cancel()
	if err != nil {
		l.close(true)
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	for i, q := range granted {
		if q == 0x80 {
			l.close(true)
			return nil, fmt.Errorf("subscribe: hub refused %s", filters[i])
		}
	}
	c.mu.Lock()
	c.sess = s
	close(c.up)
	c.mu.Unlock()
	ev := c.info().Str("event", "connected").Str("target", c.target).Str("transport", string(c.cfg.Transport))
	if !c.cfg.Quiet { // a fleet's logger names the device in every event
		ev = ev.Str("device", c.cs.DeviceID)
	}
	ev.Time("token_expires", expiry).Msg("connected")
	c.info().Str("event", "subscribed").Strs("filters", []string{iothub.MethodsFilter, iothub.TwinResFilter, iothub.DesiredFilter}).Msg("subscribed")
	return s, nil
}

func (c *Conn) connectError(err error) error {
	where := fmt.Sprintf("connect to %s as %s", c.target, c.cs.DeviceID)
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	case isRefused(err):
		return fmt.Errorf("%s: %v: %w", where, err, device.ErrUnauthorized)
	case errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &hne), errors.As(err, &cie):
		return fmt.Errorf("%s: %v: %w", where, err, device.ErrUntrusted)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// isRefused reports a CONNACK that refused the credentials (4 or 5).
func isRefused(err error) bool {
	return errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised)
}

// endSession makes s no longer current; planned sessions are disconnected.
func (c *Conn) endSession(s *session, planned bool) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
		c.up = make(chan struct{})
	}
	c.mu.Unlock()
	close(s.down)
	s.link.close(planned)
}

// current returns the live session, or nil and a channel closed when one is up.
func (c *Conn) current() (*session, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess, c.up
}

// waitSession waits until a session is live.
func (c *Conn) waitSession(ctx context.Context) *session {
	for {
		s, up := c.current()
		if s != nil {
			return s
		}
		select {
		case <-ctx.Done():
			return nil
		case <-up:
		}
	}
}

// quiesce prepares a planned disconnect without losing a method call: it
// unsubscribes from method requests (so the hub sends no new ones to this
// connection), reads the twin as a barrier (paho routes messages in order,
// so every request the hub sent before the unsubscribe has been queued by
// the time the answer arrives), and waits for the queued calls to be
// answered on this connection.
func (c *Conn) quiesce(ctx context.Context, s *session) {
	qctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	if err := s.link.unsubscribe(qctx, iothub.MethodsFilter); err == nil {
		if _, err := c.request(qctx, s, iothub.TwinGetTopic, []byte(" ")); err != nil {
			c.log.Debug().Str("event", "quiesce").Err(err).Msg("no twin answer before disconnecting")
		}
	} else {
		c.log.Debug().Str("event", "quiesce").Err(err).Msg("could not unsubscribe before disconnecting")
	}
	c.drain(ctx, s)
}

// drain waits until every method call received so far has been answered,
// at most DrainTimeout, and stops early if the session drops.
func (c *Conn) drain(ctx context.Context, s *session) {
	t := time.NewTimer(c.cfg.DrainTimeout)
	defer t.Stop()
	for {
		c.mu.Lock()
		n := c.inflight
		c.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.dead:
			return
		case <-t.C:
			c.warn().Str("event", "drain_timeout").Int("in_flight", n).Msg("method calls still running at disconnect")
			return
		case <-c.drained:
		}
	}
}

// route is paho's message handler for every topic. It never blocks: method
// calls and desired patches are queued for dispatch, twin responses are
// handed to the waiting request.
func (c *Conn) route(topic string, payload []byte) {
	if name, rid, ok := iothub.ParseMethodRequestTopic(topic); ok {
		c.push(inbound{kind: inMethod, name: name, rid: rid, payload: payload}, true)
		return
	}
	if status, rid, version, ok := iothub.ParseTwinResponseTopic(topic); ok {
		c.mu.Lock()
		ch := c.pending[rid]
		delete(c.pending, rid)
		c.mu.Unlock()
		if ch != nil {
			ch <- twinResult{status: status, version: version, body: payload} // buffered 1, one sender
		}
		return
	}
	if version, ok := iothub.ParseDesiredPatchTopic(topic); ok {
		c.push(inbound{kind: inDesired, version: version, payload: payload}, false)
		return
	}
	c.log.Debug().Str("event", "unexpected_message").Str("topic", topic).Msg("message on an unknown topic ignored")
}

func (c *Conn) push(in inbound, method bool) {
	c.mu.Lock()
	c.inbox = append(c.inbox, in)
	if method {
		c.inflight++
	}
	c.startDispatchLocked()
	c.mu.Unlock()
}

// startDispatchLocked starts the dispatcher if Run runs and none is running.
func (c *Conn) startDispatchLocked() {
	if c.dispatching || c.runCtx == nil || c.runCtx.Err() != nil || len(c.inbox) == 0 {
		return
	}
	c.dispatching = true
	ctx, h := c.runCtx, c.handler
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.dispatch(ctx, h)
	}()
}

// dispatch delivers the inbox to h until it is empty: methods each on their
// own goroutine, twin documents and desired patches in order on this one.
func (c *Conn) dispatch(ctx context.Context, h device.Handler) {
	for {
		c.mu.Lock()
		if len(c.inbox) == 0 || ctx.Err() != nil {
			c.dispatching = false
			if len(c.inbox) == 0 {
				c.inbox = nil // let a burst's backing array go
			}
			c.mu.Unlock()
			return
		}
		in := c.inbox[0]
		c.inbox[0] = inbound{}
		c.inbox = c.inbox[1:]
		c.mu.Unlock()
		switch in.kind {
		case inMethod:
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.serveMethod(ctx, h, in)
			}()
		case inDesired:
			h.HandleDesired(in.version, in.payload)
		case inTwin:
			h.HandleTwin(in.payload)
		}
	}
}

func (c *Conn) serveMethod(ctx context.Context, h device.Handler, in inbound) {
	defer func() {
		c.mu.Lock()
		c.inflight--
		c.mu.Unlock()
		select {
		case c.drained <- struct{}{}:
		default:
		}
	}()
	status, body := h.HandleMethod(ctx, device.MethodRequest{Name: in.name, Payload: in.payload})
	if err := c.publish(ctx, iothub.MethodResponseTopic(status, in.rid), body); err != nil && ctx.Err() == nil {
		c.warn().Str("event", "method_response_failed").Str("method", in.name).Err(err).Msg("method answer not sent")
	}
}

// publish sends a QoS 0 message on the live session, waiting for one if
// the link is down, at most maxResponseWait.
func (c *Conn) publish(ctx context.Context, topic string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, maxResponseWait)
	defer cancel()
	for {
		s := c.waitSession(ctx)
		if s == nil {
			return ctx.Err()
		}
		err := s.link.publish(topic, body)
		if err == nil || ctx.Err() != nil {
			return err
		}
		// The client is going down: wait for the loop to notice, then retry.
		select {
		case <-ctx.Done():
			return err
		case <-s.down:
		}
	}
}

var errLinkDown = errors.New("connection lost before the hub answered")

// request publishes a twin request and waits for its correlated response.
func (c *Conn) request(ctx context.Context, s *session, topic func(rid string) string, body []byte) (twinResult, error) {
	rid := strconv.FormatUint(c.ridSeq.Add(1), 10)
	ch := make(chan twinResult, 1)
	c.mu.Lock()
	c.pending[rid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, rid)
		c.mu.Unlock()
	}()
	if err := s.link.publish(topic(rid), body); err != nil {
		return twinResult{}, err
	}
	t := time.NewTimer(c.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-s.down:
		return twinResult{}, errLinkDown
	case <-s.dead:
		return twinResult{}, errLinkDown
	case <-t.C:
		return twinResult{}, fmt.Errorf("no twin response within %s", c.cfg.RequestTimeout)
	case <-ctx.Done():
		return twinResult{}, ctx.Err()
	}
}

// syncTwin reads the twin after a connect and hands it to the handler.
func (c *Conn) syncTwin(ctx context.Context, s *session) {
	r, err := c.request(ctx, s, iothub.TwinGetTopic, []byte(" "))
	if ctx.Err() != nil {
		return
	}
	if err == nil && r.status != http.StatusOK {
		err = fmt.Errorf("hub answered status %d: %s", r.status, truncate(r.body))
	}
	if err != nil {
		c.warn().Str("event", "twin_get_failed").Err(err).Msg("could not read the twin after connecting")
		return
	}
	c.log.Debug().Str("event", "twin_synced").Msg("twin read after connect")
	c.mu.Lock()
	c.inbox = append(c.inbox, inbound{kind: inTwin, payload: r.body})
	c.startDispatchLocked()
	c.mu.Unlock()
}

func truncate(b []byte) string {
	const max = 200
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}

// Report implements device.Conn.
func (c *Conn) Report(ctx context.Context, patch []byte) error {
	done, err := c.Queue(patch)
	if err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// Queue appends a reported-properties patch to the send queue and returns at
// once. The channel yields nil when the hub acknowledged the patch, or the
// hub's refusal. Patches are sent in the order they were queued; while the
// link is down they wait.
func (c *Conn) Queue(patch []byte) (<-chan error, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(patch, &obj); err != nil {
		return nil, fmt.Errorf("reported properties must be a JSON object: %w", err)
	}
	select {
	case <-c.done:
		return nil, ErrClosed
	default:
	}
	r := &report{patch: append([]byte(nil), patch...), done: make(chan error, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, r)
	c.startReporterLocked()
	c.mu.Unlock()
	return r.done, nil
}

// startReporterLocked starts the reporter if Run runs, patches are queued
// and none is running.
func (c *Conn) startReporterLocked() {
	if c.reporting || c.runCtx == nil || c.runCtx.Err() != nil || len(c.queue) == 0 {
		return
	}
	c.reporting = true
	ctx := c.runCtx
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.reporter(ctx)
	}()
}

// reporter sends queued reported patches one at a time, in order, until the
// queue is empty. A patch leaves the queue only when the hub acknowledged it
// or refused it for good.
func (c *Conn) reporter(ctx context.Context) {
	defer func() {
		c.mu.Lock()
		c.reporting = false
		c.startReporterLocked() // a patch queued as this one was stopping
		c.mu.Unlock()
	}()
	for {
		c.mu.Lock()
		var r *report
		if len(c.queue) > 0 {
			r = c.queue[0]
		} else {
			c.queue = nil
		}
		c.mu.Unlock()
		if r == nil || ctx.Err() != nil {
			return
		}
		s := c.waitSession(ctx)
		if s == nil {
			return
		}
		res, err := c.request(ctx, s, iothub.TwinPatchReportedTopic, r.patch)
		if ctx.Err() != nil {
			return
		}
		var final error
		switch {
		case err != nil:
			c.warn().Str("event", "report_retry").Err(err).Msg("reported properties not acknowledged, will resend")
			c.pause(ctx, s)
			continue
		case res.status/100 == 2:
		case res.status == http.StatusTooManyRequests || res.status >= 500:
			c.warn().Str("event", "report_retry").Int("status", res.status).Msg("hub busy, will resend reported properties")
			c.pause(ctx, s)
			continue
		default:
			final = fmt.Errorf("hub refused reported properties: status %d: %s", res.status, truncate(res.body))
			c.log.Error().Str("event", "report_rejected").Int("status", res.status).Msg("reported properties refused")
		}
		c.mu.Lock()
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.mu.Unlock()
		r.done <- final
		if final == nil {
			c.log.Debug().Str("event", "reported").Int64("version", res.version).Msg("reported properties acknowledged")
		}
	}
}

// pause waits a backoff step before a resend, or until the session ends.
func (c *Conn) pause(ctx context.Context, s *session) {
	t := time.NewTimer(c.cfg.Backoff(1))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-s.down:
	case <-t.C:
	}
}

// Suspend implements device.Conn. It needs Run to be running and must not
// be called from a method handler (it waits for handlers to finish).
func (c *Conn) Suspend(ctx context.Context) error {
	req := make(chan struct{})
	select {
	case c.suspendCh <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
	select {
	case <-req:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// Resume implements device.Conn.
func (c *Conn) Resume(ctx context.Context) error {
	select {
	case c.resumeCh <- struct{}{}:
	default:
	}
	for {
		s, up := c.current()
		if s != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return ErrClosed
		case <-up:
		}
	}
}
