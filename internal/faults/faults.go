// Package faults puts a fault-injecting TCP proxy between clients and a hub
// in tests: github.com/Shopify/toxiproxy/v2, embedded in the test process
// (no toxiproxy server, no HTTP API). A Proxy listens on 127.0.0.1 with an
// ephemeral port and forwards every connection to its upstream; toxics
// (latency, bandwidth, slicer, reset_peer, limit_data, timeout) are added
// and removed while connections are open.
//
// The bytes are forwarded untouched, so TLS still ends at the hub: a client
// dials the proxy but verifies the hub's certificate. Give it the hub's host
// name with the proxy's port ("localhost:PORT", see HostName): the hub's
// certificate names localhost, and the hub compares a SAS audience's host
// without its port.
package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
)

// Directions a toxic applies to: Upstream is client to hub, Downstream hub
// to client.
const (
	Upstream   = "upstream"
	Downstream = "downstream"
)

// Toxic is one fault, as toxiproxy names it: Type is "latency",
// "bandwidth", "slicer", "reset_peer", "limit_data", "timeout" (or
// ResetFirstType), Attributes its settings (for example
// map[string]any{"latency": 200, "jitter": 50}).
type Toxic struct {
	Name       string
	Type       string
	Stream     string // Upstream or Downstream
	Attributes map[string]any
}

// Proxy is one embedded toxiproxy proxy.
type Proxy struct {
	p *toxiproxy.Proxy

	mu      sync.Mutex // serialises Stop/Start in ResetAll
	stopped bool
}

// Start starts a proxy to upstream (host:port) on 127.0.0.1 with an
// ephemeral port.
func Start(name, upstream string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return nil, fmt.Errorf("faults: upstream %q: %w", upstream, err)
	}
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("faults: start proxy %s: %w", name, err)
	}
	return &Proxy{p: p}, nil
}

// Addr is the address the proxy listens on (127.0.0.1:port).
func (p *Proxy) Addr() string { return p.p.Listen }

// Port is the port the proxy listens on.
func (p *Proxy) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr())
	n, _ := strconv.Atoi(port)
	return n
}

// HostName is what a connection string through the proxy carries:
// "localhost:port".
func (p *Proxy) HostName() string { return net.JoinHostPort("localhost", strconv.Itoa(p.Port())) }

// Add adds a toxic; it applies to open connections and new ones alike.
func (p *Proxy) Add(t Toxic) error {
	if t.Name == "" || t.Type == "" {
		return fmt.Errorf("faults: a toxic needs a name and a type (got %q, %q)", t.Name, t.Type)
	}
	if t.Stream != Upstream && t.Stream != Downstream {
		return fmt.Errorf("faults: toxic %s: stream %q is neither %q nor %q", t.Name, t.Stream, Upstream, Downstream)
	}
	body, err := json.Marshal(map[string]any{
		"name": t.Name, "type": t.Type, "stream": t.Stream, "toxicity": 1.0, "attributes": t.Attributes,
	})
	if err != nil {
		return fmt.Errorf("faults: toxic %s: %w", t.Name, err)
	}
	if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		return fmt.Errorf("faults: add toxic %s: %w", t.Name, err)
	}
	return nil
}

// Remove removes the toxic named name.
func (p *Proxy) Remove(ctx context.Context, name string) error {
	if err := p.p.Toxics.RemoveToxic(ctx, name); err != nil {
		return fmt.Errorf("faults: remove toxic %s: %w", name, err)
	}
	return nil
}

// Partition blackholes the proxy both ways: a timeout toxic with timeout 0
// on each direction drops every byte, and connections stay open (new ones
// are accepted and hear nothing). Heal it with Heal.
func (p *Proxy) Partition() error {
	for _, dir := range []string{Upstream, Downstream} {
		if err := p.Add(Toxic{Name: "partition_" + dir, Type: "timeout", Stream: dir, Attributes: map[string]any{"timeout": 0}}); err != nil {
			return err
		}
	}
	return nil
}

// Heal ends a Partition.
func (p *Proxy) Heal(ctx context.Context) error {
	for _, dir := range []string{Upstream, Downstream} {
		if err := p.Remove(ctx, "partition_"+dir); err != nil {
			return err
		}
	}
	return nil
}

// ResetAll closes every connection through the proxy at once and goes on
// accepting new ones on the same port.
func (p *Proxy) ResetAll() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return fmt.Errorf("faults: proxy %s is closed", p.p.Name)
	}
	p.p.Stop()
	if err := p.p.Start(); err != nil {
		return fmt.Errorf("faults: restart proxy %s: %w", p.p.Name, err)
	}
	return nil
}

// Close stops the proxy and closes its connections. Calling it again is
// harmless.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	p.p.Stop()
}

// ResetFirstType is a toxic of this package: the first Connections
// connections it meets (open ones when it is added, then new ones) are
// closed at the first chunk that reaches it in its direction, the chunk
// dropped; every later connection passes untouched. It models a flapping
// link that drops a given number of connections and then recovers, which
// reset_peer (every connection, for as long as it is in place) cannot.
// toxiproxy restarts a toxic on every open connection when a toxic is added
// after it or the one after it is removed, which counts again: keep it
// alone on its direction.
const ResetFirstType = "dmctl_reset_first"

// resetFirst implements ResetFirstType. One value serves every connection
// of the toxic, so the count is shared.
type resetFirst struct {
	Connections int64 `json:"connections"`

	seen atomic.Int64
}

func (t *resetFirst) Pipe(stub *toxics.ToxicStub) {
	if t.seen.Add(1) > t.Connections {
		new(toxics.NoopToxic).Pipe(stub)
		return
	}
	select {
	case <-stub.Interrupt:
	case <-stub.Input:
		stub.Close()
	}
}

// opensType is the toxic behind CountOpens.
const opensType = "dmctl_count_opens"

// Opens records when connections start through a proxy.
type Opens struct {
	mu    sync.Mutex
	times []time.Time
}

// Pipe passes every chunk through; its start is a connection's start (or,
// for connections already open, the moment the toxic was added).
func (o *Opens) Pipe(stub *toxics.ToxicStub) {
	o.mu.Lock()
	o.times = append(o.times, time.Now())
	o.mu.Unlock()
	new(toxics.NoopToxic).Pipe(stub)
}

// Since returns the recorded starts after t, in order.
func (o *Opens) Since(t time.Time) []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []time.Time
	for _, at := range o.times {
		if at.After(t) {
			out = append(out, at)
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// CountOpens records the start of every connection the proxy opens to its
// upstream from now on: the moment it accepted the client and dialled the
// hub, the network's view of a connect attempt. Connections already open
// are recorded once too, each when toxiproxy starts the counter on it from
// a goroutine of its own, which can be after CountOpens returns; and every
// open one again whenever a toxic is added to the upstream chain after it
// (toxiproxy restarts the last toxic). So count before the connections to
// be told apart open, and before adding more toxics. Remove it with
// Remove(ctx, name).
func (p *Proxy) CountOpens(name string) (*Opens, error) {
	body, _ := json.Marshal(map[string]any{"name": name, "type": opensType, "stream": Upstream, "toxicity": 1.0})
	w, err := p.p.Toxics.AddToxicJson(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("faults: add toxic %s: %w", name, err)
	}
	o, ok := w.Toxic.(*Opens)
	if !ok {
		return nil, fmt.Errorf("faults: toxic %s is a %T, not a connection counter", name, w.Toxic)
	}
	return o, nil
}

func init() {
	toxics.Register(ResetFirstType, new(resetFirst))
	toxics.Register(opensType, new(Opens))
}
