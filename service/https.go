// Package service is an HTTPS client for IoT Hub's service REST API: direct
// methods, twins, the identity registry, twin queries and jobs (v2), plus the
// reboot flow (invoke rebootDevice, then confirm it through the twin's
// reported rebootTime) for one device (Reboot). The fleet reboot, through
// jobs and in staged waves, is package service/rollout.
//
// It signs every request with a SAS minted from a service (policy)
// connection string, sends api-version 2021-04-12, and turns IoT Hub's error
// bodies into *APIError values that match the package's sentinels with
// errors.Is. Only idempotent requests are retried; a direct method is sent
// once.
package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
)

const (
	// DefaultPort is the HTTPS port used when HostName carries none.
	DefaultPort = 443
	// MaxResponseBody bounds every response body read.
	MaxResponseBody = 4 << 20

	// maxIdleConnsPerHost bounds the keep-alive connections kept to the hub.
	maxIdleConnsPerHost = 100

	tokenTTL         = time.Hour
	tokenRenewMargin = 5 * time.Minute

	defaultAttempts    = 4
	defaultBackoffBase = 500 * time.Millisecond
	defaultBackoffCap  = 10 * time.Second
	// requestTimeout bounds one attempt of a registry, twin or query call.
	requestTimeout = 60 * time.Second
	// invokeGrace is added to a method's connect+response timeouts to bound
	// the HTTP call: the hub answers 504 itself when the device is late.
	invokeGrace = 15 * time.Second
)

// Client talks to one IoT Hub with one service connection string. It is safe
// for concurrent use.
type Client struct {
	cs      *sas.ConnectionString
	base    url.URL // scheme and host only
	baseURL string  // base as a string
	hc      *http.Client
	own     *http.Transport // non-nil when the client built its own transport
	log     zerolog.Logger
	now     func() time.Time
	agent   string
	tries   int
	backoff retry.Backoff
	// sleep waits between retries and polls: retry.Sleep, replaced by tests.
	sleep func(ctx context.Context, d time.Duration) error

	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

// Option configures a Client.
type Option func(*options)

type options struct {
	hc      *http.Client
	roots   *x509.CertPool
	log     zerolog.Logger
	now     func() time.Time
	agent   string
	tries   int
	backoff retry.Backoff
}

// WithHTTPClient makes the client send through hc as is (its transport
// decides trust and proxies). WithRootCAs is then ignored.
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// WithRootCAs sets the certificates trusted for the hub's TLS certificate
// (nil: the system roots). Certificate checks are never switched off.
func WithRootCAs(pool *x509.CertPool) Option { return func(o *options) { o.roots = pool } }

// WithLogger sets the logger (default: zerolog.Nop()).
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock used for SAS expiry (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithUserAgent sets the User-Agent header (default "dmctl").
func WithUserAgent(ua string) Option { return func(o *options) { o.agent = ua } }

// WithRetry sets how idempotent requests are retried on 429, 500 and 503:
// at most attempts tries in all, waiting backoff(n) before try n+1 (n from 1),
// or the hub's Retry-After when that is longer. attempts < 1 means 1.
// backoff nil keeps the default, retry.Exponential(500 ms, 10 s).
func WithRetry(attempts int, backoff retry.Backoff) Option {
	return func(o *options) {
		o.tries = max(attempts, 1)
		if backoff != nil {
			o.backoff = backoff
		}
	}
}

// New returns a client for the hub named by cs, a service connection string
// (HostName, SharedAccessKeyName, SharedAccessKey). HostName may carry a
// port; without one the client uses 443.
func New(cs *sas.ConnectionString, opts ...Option) (*Client, error) {
	if cs == nil || cs.HostName == "" {
		return nil, errors.New("service: connection string has no HostName")
	}
	if cs.DeviceID != "" {
		return nil, errors.New("service: a device connection string cannot call the service API; use the hub's service (policy) connection string")
	}
	o := options{
		log:     zerolog.Nop(),
		now:     time.Now,
		agent:   "dmctl",
		tries:   defaultAttempts,
		backoff: retry.Exponential(defaultBackoffBase, defaultBackoffCap),
	}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{
		cs:      cs,
		base:    url.URL{Scheme: "https", Host: hostPort(cs)},
		baseURL: (&url.URL{Scheme: "https", Host: hostPort(cs)}).String(),
		log:     o.log,
		now:     o.now,
		agent:   o.agent,
		tries:   o.tries,
		backoff: o.backoff,
		sleep:   retry.Sleep,
	}
	if o.hc != nil {
		c.hc = o.hc
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = http.ProxyFromEnvironment
		tr.TLSClientConfig = &tls.Config{
			RootCAs:            o.roots,
			MinVersion:         tls.VersionTLS12,
			ClientSessionCache: tls.NewLRUClientSessionCache(0),
		}
		// Concurrent callers (fleet queries, benchmarks, scripts invoking many
		// methods) would otherwise pay a TLS handshake per request beyond Go's
		// default of two idle connections per host.
		tr.MaxIdleConnsPerHost = maxIdleConnsPerHost
		c.own = tr
		c.hc = &http.Client{Transport: tr}
	}
	return c, nil
}

// Close releases idle connections of the client's own transport.
func (c *Client) Close() error {
	if c.own != nil {
		c.own.CloseIdleConnections()
	}
	return nil
}

// Now reads the client's clock: time.Now unless WithClock set another.
func (c *Client) Now() time.Time { return c.now() }

// Logger is the client's logger (WithLogger), for the flows built on it.
func (c *Client) Logger() zerolog.Logger { return c.log }

// HostName is the hub's HostName from the connection string, as given.
func (c *Client) HostName() string { return c.cs.HostName }

// hostPort is the URL host: HostName's host with its port unless that is 443.
func hostPort(cs *sas.ConnectionString) string {
	host, port := cs.Host(), cs.Port(DefaultPort)
	if port == DefaultPort {
		if strings.Contains(host, ":") { // IPv6 literal
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// authorization returns a SAS for the hub, reusing the cached one until five
// minutes before it expires.
func (c *Client) authorization() (string, error) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && now.Before(c.tokenExp.Add(-tokenRenewMargin)) {
		return c.token, nil
	}
	exp := now.Add(tokenTTL)
	tok, err := c.cs.Token(exp)
	if err != nil {
		return "", fmt.Errorf("sign request: %w", err)
	}
	c.token, c.tokenExp = tok, exp
	if c.cs.SharedAccessSignature != "" {
		// A fixed token from the connection string: reuse it until its own expiry.
		if t, perr := sas.ParseToken(tok); perr == nil {
			c.tokenExp = t.Expiry
		}
	}
	return tok, nil
}

// request describes one REST call.
type request struct {
	method string
	path   string // escaped: ids go through seg
	query  url.Values
	body   any // marshalled as JSON when non-nil
	header http.Header
	retry  bool // idempotent: retried on 429/500/503
	// retryThrottledOnly narrows retry to 429: the hub did not run the
	// request, so even a create may be sent again.
	retryThrottledOnly bool
	timeout            time.Duration // per attempt; 0 means requestTimeout
	// answers are non-2xx statuses whose body is the call's answer, not an
	// error (the bulk registry's 400 carries per-device errors); the caller
	// reads response.status.
	answers []int
}

// response is a successful call's outcome.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends r, retrying idempotent requests on 429/500/503, and returns the
// response or an *APIError.
func (c *Client) do(ctx context.Context, r request) (*response, error) {
	var payload []byte
	if r.body != nil {
		var err error
		if payload, err = json.Marshal(r.body); err != nil {
			return nil, fmt.Errorf("encode request body: %w", err)
		}
	}
	rawURL := c.url(r)

	tries := 1
	if r.retry {
		tries = c.tries
	}
	for attempt := 1; ; attempt++ {
		resp, err := c.once(ctx, r, rawURL, payload, attempt)
		if err == nil {
			return resp, nil
		}
		var ae *APIError
		switch {
		case attempt >= tries:
			return nil, err
		case errors.As(err, &ae):
			if !retryable(ae.Status) || (r.retryThrottledOnly && ae.Status != http.StatusTooManyRequests) {
				return nil, err
			}
		case r.retryThrottledOnly || ctx.Err() != nil || !connectionLost(err):
			// A create may have run before its connection dropped; and a
			// caller that gave up gets its own error.
			return nil, err
		}
		delay := c.backoff(attempt)
		if ae != nil {
			if ra := retryAfter(ae, c.now()); ra > delay {
				delay = ra
			}
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return nil, err // no time left to wait for another try
		}
		ev := c.log.Info().Str("method", r.method).Str("path", r.path).Int("attempt", attempt).Dur("delay", delay)
		if ae != nil {
			ev.Int("status", ae.Status).Msg("hub busy, retrying request")
		} else {
			ev.AnErr("cause", err).Msg("connection lost, retrying request")
		}
		if serr := c.sleep(ctx, delay); serr != nil {
			return nil, fmt.Errorf("%w (while waiting to retry after: %v)", serr, err)
		}
	}
}

// requestHeaders are the headers once sets on every request, canonical.
var requestHeaders = [...]string{"Authorization", "Request-Id", "User-Agent", "Accept", "Content-Type"}

// url is r's URL: the hub, r's path as escaped, r's query and the API
// version.
func (c *Client) url(r request) string {
	if len(r.query) == 0 {
		if _, err := url.PathUnescape(r.path); err == nil {
			// What the general case below gives, without a url.Values.
			return c.baseURL + r.path + "?api-version=" + url.QueryEscape(iothub.APIVersion)
		}
	}
	u := c.base
	u.Path = r.path
	q := url.Values{}
	for k, v := range r.query {
		q[k] = v
	}
	q.Set("api-version", iothub.APIVersion)
	u.RawQuery = q.Encode()
	// The path is already escaped segment by segment; keep it as is.
	u.RawPath = r.path
	if p, err := url.PathUnescape(r.path); err == nil {
		u.Path = p
	}
	return u.String()
}

// connectionLost reports an attempt that failed because its connection
// was refused, reset or closed before the whole answer came back.
func connectionLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE)
}

func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusInternalServerError ||
		status == http.StatusServiceUnavailable
}

// retryAfter reads the Retry-After recorded with an APIError (seconds or an
// HTTP date), 0 when absent.
func retryAfter(ae *APIError, now time.Time) time.Duration {
	v := ae.retryAfter
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// once is one attempt.
func (c *Client) once(ctx context.Context, r request, rawURL string, payload []byte, attempt int) (*response, error) {
	timeout := r.timeout
	if timeout == 0 {
		timeout = requestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, rawURL, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	tok, err := c.authorization()
	if err != nil {
		return nil, err
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	rid := requestID()
	// The header values share one array (the keys are canonical already):
	// one allocation where Header.Set makes one per header.
	vals := [...]string{tok, rid, c.agent, "application/json", "application/json; charset=utf-8"}
	hv := vals[:]
	if payload == nil {
		hv = hv[:4]
	}
	hv = slices.Clone(hv)
	for i := range hv {
		req.Header[requestHeaders[i]] = hv[i : i+1 : i+1]
	}

	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		// url.Error's text repeats the whole URL; name the call by method and
		// path instead.
		return nil, fmt.Errorf("%s %s: %w", r.method, r.path, unwrapURLError(err))
	}
	defer resp.Body.Close()
	ev := c.log.Debug().Str("method", r.method).Str("path", r.path).Str("request_id", rid).
		Int("attempt", attempt).Int("status", resp.StatusCode).Dur("elapsed", time.Since(start))

	if (resp.StatusCode < 200 || resp.StatusCode > 299) && !slices.Contains(r.answers, resp.StatusCode) {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxResponseBody))
		ae := newAPIError(resp.StatusCode, raw, resp.Header.Get("iothub-errorcode"))
		ae.retryAfter = resp.Header.Get("Retry-After")
		ev.Int("code", ae.Code).Msg("request failed")
		return nil, ae
	}
	ev.Msg("request done")
	out := &response{status: resp.StatusCode, header: resp.Header}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read response: %w", r.method, r.path, err)
	}
	if len(raw) > MaxResponseBody {
		return nil, fmt.Errorf("%s %s: response body exceeds %d bytes", r.method, r.path, MaxResponseBody)
	}
	out.body = raw
	return out, nil
}

// unwrapURLError drops *url.Error's "Op URL:" prefix, which the caller
// replaces with its own operation and path.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// requestID returns a random UUID v4.
func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// decode unmarshals a JSON response body into v.
func decode(resp *response, v any) error {
	if len(bytes.TrimSpace(resp.body)) == 0 {
		return errors.New("empty response body")
	}
	if err := json.Unmarshal(resp.body, v); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// seg escapes one path segment (a device id).
func seg(s string) string { return url.PathEscape(s) }

// ifMatch renders an etag for If-Match: quoted, "*" when empty.
func ifMatch(etag string) string {
	etag = strings.TrimSpace(etag)
	if etag == "" || etag == "*" {
		return `"*"`
	}
	if strings.HasPrefix(etag, `"`) && strings.HasSuffix(etag, `"`) && len(etag) >= 2 {
		return etag
	}
	if strings.HasPrefix(etag, `W/"`) {
		return etag
	}
	return `"` + etag + `"`
}
