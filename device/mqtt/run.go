package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// Run implements device.Conn. It may be called once, and not after Start.
func (c *Conn) Run(ctx context.Context, h device.Handler) error {
	res := make(chan error, 1)
	if err := c.Start(ctx, h, func(err error) { res <- err }); err != nil {
		return err
	}
	return <-res
}

// Start runs the connection as Run does without holding the caller's
// goroutine: done is called once, with what Run would return, after
// everything Run started has stopped. While a session is up no goroutine
// waits for it to end: the session's end (the link lost, ctx done, the token
// due for renewal, a Suspend) resumes the loop on a goroutine of its own, so
// an idle connection costs one goroutine, its link's reader. Start may be
// called once, and not after Run.
func (c *Conn) Start(ctx context.Context, h device.Handler, done func(error)) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("mqtt: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.runCtx, c.handler = ctx, h
	c.startReporterLocked()
	c.mu.Unlock()
	r := &runner{c: c, ctx: ctx, cancel: cancel, done: done}
	go r.run()
	return nil
}

// runner is the state of Run's loop, kept between the goroutines that run
// it: the loop gives up its goroutine while a session is up (park) and one
// is started again when the session ends (resume).
type runner struct {
	c      *Conn
	ctx    context.Context
	cancel context.CancelFunc
	done   func(error)

	attempt    int  // failed attempts since the last stable session
	connected  bool // a connect has succeeded once
	renewing   bool // the last session ended for token renewal
	suspended  bool // Suspend is in force
	retryAfter bool // wait before the next attempt
}

// run runs the loop until it parks a session or ends.
func (r *runner) run() {
	if parked, err := r.loop(); !parked {
		r.finish(err)
	}
}

// finish ends Run: the workers stop, then done is called.
func (r *runner) finish(err error) {
	c := r.c
	r.cancel()
	c.mu.Lock()
	c.runCtx = nil // no worker starts from now on
	c.mu.Unlock()
	c.wg.Wait()
	c.setState(StateStopped)
	close(c.done)
	r.done(err)
}

// takeSuspends returns the Suspend requests made since the last call.
func (c *Conn) takeSuspends() []chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	reqs := c.suspendReqs
	c.suspendReqs = nil
	return reqs
}

// loop connects, parks the session while it is up, and connects again
// when it ends (resume). It returns parked true when a session was parked
// (its end goes on with the loop), else false and the error Run returns.
func (r *runner) loop() (parked bool, err error) {
	c, ctx := r.c, r.ctx
	for {
		if r.suspended {
			c.setState(StateSuspended)
			select {
			case <-ctx.Done():
				return false, nil
			case <-c.resumeCh:
				r.suspended = false
				c.info().Str("event", "resumed").Msg("reconnecting")
				c.emit(device.Event{Kind: device.EventResumed})
			case <-c.suspendKick:
				for _, req := range c.takeSuspends() {
					close(req) // already suspended
				}
				continue
			}
		}
		if r.retryAfter {
			r.attempt++
			c.setState(StateRetrying)
			d := c.cfg.Backoff(r.attempt)
			c.warn().Str("event", "retrying").Int("attempt", r.attempt).Str("in", d.String()).Msg("reconnecting")
			c.emit(device.Event{Kind: device.EventRetrying, Attempt: r.attempt, Delay: d})
			reqs, ok := c.backoff(ctx, d)
			if !ok {
				return false, nil
			}
			if len(reqs) > 0 {
				c.enterSuspend(reqs, "offline")
				r.suspended = true
				r.retryAfter = false
				continue
			}
		}
		c.setState(StateConnecting)
		if c.cfg.Gate != nil {
			if err := c.cfg.Gate(ctx); err != nil {
				return false, nil
			}
		}
		s, err := c.dialAside(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			if !r.connected && (errors.Is(err, device.ErrUnauthorized) || errors.Is(err, device.ErrUntrusted)) {
				return false, err
			}
			c.warn().Str("event", "connect_failed").Str("target", c.target).Err(err).Msg("connect failed")
			c.emit(device.Event{Kind: device.EventConnectFailed, Target: c.target, Err: err})
			r.retryAfter = true
			continue
		}
		r.retryAfter = false
		connectedAt := time.Now()
		c.setState(StateConnected)
		if r.renewing {
			c.info().Str("event", "token_renewed").Time("expires", s.expiry).Msg("reconnected with a new token")
			c.emit(device.Event{Kind: device.EventTokenRenewed, TokenExpires: s.expiry})
			r.renewing = false
		}
		if !r.connected {
			r.connected = true
			close(c.ready)
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.syncTwin(ctx, s)
		}()
		r.park(s, connectedAt)
		return true, nil
	}
}

// disconnectPlanned ends s on purpose, losing no method call (quiesce),
// and says why.
func (c *Conn) disconnectPlanned(ctx context.Context, s *session, reason, msg string) {
	c.quiesce(ctx, s)
	c.endSession(s, true)
	c.info().Str("event", "disconnected").Str("reason", reason).Msg(msg)
	c.emit(device.Event{Kind: device.EventDisconnected, Reason: reason})
}

// backoff waits d before a reconnect. It returns early with the Suspend
// requests that came meanwhile, and ok false if ctx ended.
func (c *Conn) backoff(ctx context.Context, d time.Duration) (reqs []chan struct{}, ok bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, false
		case <-c.suspendKick:
			// A kick whose requests a session's end took already is stale.
			if reqs := c.takeSuspends(); len(reqs) > 0 {
				return reqs, true
			}
		case <-t.C:
			return nil, true
		}
	}
}

// sessionEnd is what ended a parked session.
type sessionEnd int

const (
	endShutdown sessionEnd = iota // ctx is done
	endLost                       // the link failed
	endRenew                      // the token is due for renewal
	endSuspend                    // Suspend was called
)

// park hands the session's end to whichever of its causes comes first:
// ctx ending, the link failing, the renewal timer, or a Suspend. The first
// stops the others and resumes the loop on a new goroutine.
func (r *runner) park(s *session, connectedAt time.Time) {
	c := r.c
	var (
		once      sync.Once
		stopCtx   func() bool
		renew     *time.Timer
		stopRenew = func() {}
	)
	ended := make(chan struct{}) // closed when the triggers are armed
	end := func(why sessionEnd) {
		once.Do(func() {
			go func() {
				<-ended
				stopCtx()
				stopRenew()
				c.mu.Lock()
				c.parked = nil
				c.mu.Unlock()
				r.resume(s, connectedAt, why)
			}()
		})
	}
	stopCtx = context.AfterFunc(r.ctx, func() { end(endShutdown) })
	if c.cs.SharedAccessKey != "" {
		renew = time.AfterFunc(s.renewAt.Sub(c.cfg.Now()), func() { end(endRenew) })
		stopRenew = func() { renew.Stop() }
	}
	s.whenDead(func() { end(endLost) })
	c.mu.Lock()
	c.parked = func() { end(endSuspend) }
	pending := len(c.suspendReqs) > 0
	c.mu.Unlock()
	close(ended)
	if pending {
		end(endSuspend)
	}
}

// resume ends a parked session by its cause, then runs the loop on.
func (r *runner) resume(s *session, connectedAt time.Time, why sessionEnd) {
	c, ctx := r.c, r.ctx
	switch why {
	case endShutdown:
		c.endSession(s, true)
		c.info().Str("event", "disconnected").Str("reason", "shutdown").Msg("disconnected")
		c.emit(device.Event{Kind: device.EventDisconnected, Reason: "shutdown"})
		r.finish(nil)
		return
	case endLost:
		c.endSession(s, false)
		c.warn().Str("event", "disconnected").Str("reason", reason(s.deadErr)).Msg("connection lost")
		c.emit(device.Event{Kind: device.EventDisconnected, Reason: reason(s.deadErr), Err: s.deadErr})
		r.retryAfter = true
		if time.Since(connectedAt) >= stableSession {
			r.attempt = 0
		}
	case endRenew:
		c.disconnectPlanned(ctx, s, "token renewal", "renewing the token")
		r.renewing = true
		r.attempt = 0
	case endSuspend:
		c.disconnectPlanned(ctx, s, "suspended", "disconnected")
		c.enterSuspend(c.takeSuspends(), "suspended")
		r.suspended = true
		r.attempt = 0
	}
	r.run()
}

func reason(err error) string {
	if err == nil {
		return "unknown"
	}
	return err.Error()
}

// enterSuspend forgets a stale Resume and acknowledges the Suspends.
func (c *Conn) enterSuspend(reqs []chan struct{}, state string) {
	select {
	case <-c.resumeCh:
	default:
	}
	c.info().Str("event", "suspended").Str("state", state).Msg("staying offline until resumed")
	c.emit(device.Event{Kind: device.EventSuspended})
	for _, req := range reqs {
		close(req)
	}
}

// dialAside runs dial on a goroutine of its own and waits for it. The TLS
// handshake needs a deep stack, and the loop's goroutine, which waits out
// backoffs and suspensions (every device of a fleet at once while its hub
// is down), would keep the stack it grew to until GCs shrink it.
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

// dial makes one connect attempt: new link, fresh token (none for x509),
// CONNECT, SUBSCRIBE. On success the session is current.
func (c *Conn) dial(ctx context.Context) (*session, error) {
	s := &session{dead: make(chan struct{}), down: make(chan struct{})}
	var token string
	if !c.cs.X509 {
		// A token's expiry has whole seconds: round up so that it lives at
		// least SASTTL, then read back what the token really says.
		minted := c.cfg.Now()
		expiry := minted.Add(c.cfg.SASTTL).Add(time.Second - 1).Truncate(time.Second)
		var err error
		token, err = c.cs.Token(expiry)
		if err != nil {
			return nil, fmt.Errorf("mint token for %s: %w", identity(c.cs), err)
		}
		if t, err := sas.ParseToken(token); err == nil {
			expiry = t.Expiry
		}
		s.expiry = expiry
		s.renewAt = minted.Add(time.Duration(float64(expiry.Sub(minted)) * RenewAt))
	}
	l, err := c.dialLink(ctx, linkConfig{
		clientID: iothub.ClientID(c.cs.DeviceID, c.cs.ModuleID),
		username: iothub.WithModelID(iothub.Username(c.cs.HostName, c.cs.DeviceID, c.cs.ModuleID, c.cfg.ClientType), c.cfg.ModelID),
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
	if c.up != nil {
		close(c.up)
		c.up = nil
	}
	c.mu.Unlock()
	ev := c.info().Str("event", "connected").Str("target", c.target).Str("transport", string(c.cfg.Transport))
	if !c.cfg.Quiet { // a fleet's logger names the device in every event
		ev = ev.Str("device", c.cs.DeviceID)
		if c.cs.ModuleID != "" {
			ev = ev.Str("module", c.cs.ModuleID)
		}
	}
	if c.cs.X509 {
		ev = ev.Str("auth", "x509").Time("cert_expires", c.certExpiry)
	} else {
		ev = ev.Time("token_expires", s.expiry)
	}
	ev.Msg("connected")
	c.info().Str("event", "subscribed").Strs("filters", filters).Msg("subscribed")
	c.emit(device.Event{Kind: device.EventConnected, Target: c.target, Transport: string(c.cfg.Transport), TokenExpires: s.expiry})
	c.emit(device.Event{Kind: device.EventSubscribed, Filters: filters})
	return s, nil
}

func (c *Conn) connectError(err error) error {
	where := fmt.Sprintf("connect to %s as %s", c.target, identity(c.cs))
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	case isRefused(err):
		return fmt.Errorf("%s: %v: %w", where, err, device.ErrUnauthorized)
	case c.cs.X509 && isCertificateRefused(err):
		return fmt.Errorf("%s: the hub refused the client certificate: %v: %w", where, err, device.ErrUnauthorized)
	case errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &hne), errors.As(err, &cie):
		return fmt.Errorf("%s: %v: %w", where, err, device.ErrUntrusted)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// isRefused reports a CONNACK that refused the credentials (4 or 5).
func isRefused(err error) bool {
	return errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised)
}

// isCertificateRefused reports a TLS alert from the hub about the client
// certificate (bad, unknown CA, expired, revoked, missing, ...): a hub that
// checks certificates in the handshake refuses them so, instead of with a
// CONNACK.
func isCertificateRefused(err error) bool {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "remote error" || oe.Err == nil {
		return false
	}
	msg := oe.Err.Error()
	return strings.Contains(msg, "certificate") || strings.Contains(msg, "access denied")
}

// endSession makes s no longer current; planned sessions are disconnected.
func (c *Conn) endSession(s *session, planned bool) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
	close(s.down)
	s.link.close(planned)
}

// current returns the live session, or nil and a channel closed when one is up.
func (c *Conn) current() (*session, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil && c.up == nil {
		c.up = make(chan struct{})
	}
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
// connection), reads the twin as a barrier (the link routes messages in
// order, so every request the hub sent before the unsubscribe has been
// queued by the time the answer arrives), and waits for the queued calls
// to be answered on this connection.
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
		if n > 0 && c.drained == nil {
			c.drained = make(chan struct{}, 1)
		}
		drained := c.drained
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
		case <-drained:
		}
	}
}

// Suspend implements device.Conn. It needs Run to be running and must not
// be called from a method handler (it waits for handlers to finish).
func (c *Conn) Suspend(ctx context.Context) error {
	req := make(chan struct{})
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return ErrClosed
	default:
	}
	c.suspendReqs = append(c.suspendReqs, req)
	parked := c.parked
	c.mu.Unlock()
	// Both: a parked session may be ending for another reason, and the
	// loop then takes the request when it next waits.
	select {
	case c.suspendKick <- struct{}{}:
	default: // a kick is pending already
	}
	if parked != nil {
		parked()
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
	return c.WaitConnected(ctx)
}
