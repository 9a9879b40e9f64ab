package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

// benchMethod is the direct method every benchmark device answers with 200
// and the request payload.
const benchMethod = "bench"

// benchPayload is the request payload of every measured call.
var benchPayload = json.RawMessage(`{"seq":12345,"note":"dmctl bench"}`)

// inproc is a hub running inside the bench process, with a service client.
type inproc struct {
	cfg   *config
	res   *results
	h     *hub.Server
	dir   string
	port  string
	svcCS *sas.ConnectionString
	svc   *service.Client
	alias string // bound alias listener, "" if none
}

func startInProcess(ctx context.Context, cfg *config, res *results) (*inproc, error) {
	dir, err := dataDir(cfg, "hub-inproc")
	if err != nil {
		return nil, err
	}
	listen := []string{"127.0.0.1:0"}
	alias := ""
	if cfg.AliasAddr != "" && cfg.Node != "" {
		alias = cfg.AliasAddr
		listen = append(listen, alias)
	}
	h, err := hub.New(hub.Config{DataDir: dir, Listen: listen, Log: cfg.Log})
	if err != nil {
		return nil, err
	}
	if err := h.Start(ctx); err != nil {
		_ = h.Close()
		if alias == "" {
			return nil, err
		}
		res.note("the azure-iothub CLI peer is skipped: the hub cannot listen on %s (%v)", alias, err)
		alias = ""
		if h, err = hub.New(hub.Config{DataDir: dir, Listen: listen[:1], Log: cfg.Log}); err != nil {
			return nil, err
		}
		if err := h.Start(ctx); err != nil {
			_ = h.Close()
			return nil, err
		}
	}
	p := &inproc{cfg: cfg, res: res, h: h, dir: dir, port: strconv.Itoa(h.Port()), alias: alias}
	p.svcCS, err = sas.ParseService(h.ServiceConnectionString())
	if err == nil {
		p.svc, err = service.New(p.svcCS, service.WithRootCAs(h.CAPool()))
	}
	if err != nil {
		_ = h.Close()
		return nil, err
	}
	return p, nil
}

func (p *inproc) close() {
	_ = p.svc.Close()
	_ = p.h.Close()
}

// register creates a device and returns its primary key.
func (p *inproc) register(id string) (string, error) {
	d, err := p.h.Store().CreateDevice(iothub.Device{DeviceID: id})
	if err != nil {
		return "", fmt.Errorf("register %s: %w", id, err)
	}
	return d.Authentication.SymmetricKey.PrimaryKey, nil
}

func (p *inproc) deviceCS(id, key string) string {
	return "HostName=localhost:" + p.port + ";DeviceId=" + id + ";SharedAccessKey=" + key
}

// invoker calls the bench method through one service client.
func invoker(ctx context.Context, c *service.Client) func(id string, connectWait bool) error {
	rt := 10
	return func(id string, connectWait bool) error {
		req := iothub.MethodRequest{MethodName: benchMethod, Payload: benchPayload, ResponseTimeoutInSeconds: &rt}
		if connectWait {
			ct := 10
			req.ConnectTimeoutInSeconds = &ct
		}
		r, err := c.InvokeMethod(ctx, id, req)
		if err != nil {
			return err
		}
		if r.Status != 200 {
			return fmt.Errorf("device %s answered %d", id, r.Status)
		}
		return nil
	}
}

func echo(_ context.Context, payload json.RawMessage) (int, any) { return 200, payload }

// startDevice runs one dmctl device in this process until ctx ends.
func (p *inproc) startDevice(ctx context.Context, wg *sync.WaitGroup, id string, dcfg device.Config) (*device.Device, error) {
	key, err := p.register(id)
	if err != nil {
		return nil, err
	}
	cs, err := sas.ParseDevice(p.deviceCS(id, key))
	if err != nil {
		return nil, err
	}
	conn, err := mqtt.New(mqtt.Config{ConnectionString: cs, RootCAs: p.h.CAPool(), ClientType: "dmctl-bench", Quiet: true})
	if err != nil {
		return nil, err
	}
	d := device.New(conn, dcfg)
	d.Handle(benchMethod, echo)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = d.Run(ctx)
	}()
	select {
	case <-conn.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("device %s did not connect", id)
	}
	return d, nil
}

// startFleet runs f in this process until the returned stop is called,
// once every device connected within timeout; on an error f is stopped.
func startFleet(ctx context.Context, f *fleet.Fleet, timeout time.Duration) (stop func(), err error) {
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = f.Run(fctx)
	}()
	stop = func() { cancel(); <-done }
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-f.Ready():
		return stop, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = fmt.Errorf("not every device connected within %v", timeout)
	}
	stop()
	return nil, err
}

// profile runs f under the CPU profiler when -profile is set.
func (p *inproc) profile(name string, f func()) {
	if p.cfg.ProfileDir == "" {
		f()
		return
	}
	path := filepath.Join(p.cfg.ProfileDir, name+".pprof")
	fh, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(fh)
	}
	if err != nil {
		p.res.note("profile %s: %v", name, err)
		if fh != nil {
			_ = fh.Close()
		}
		f()
		return
	}
	f()
	pprof.StopCPUProfile()
	_ = fh.Close()
	p.res.Profiles = append(p.res.Profiles, path)
}

// latency measures section 1: the round trip of one direct method on warm
// connections, for each path.
func (p *inproc) latency(ctx context.Context) {
	cfg := p.cfg
	dctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	call := invoker(ctx, p.svc)

	// (a) dmctl service -> hub -> dmctl device.
	cfg.progress("latency (a): dmctl service -> hub -> dmctl device, %d calls", cfg.Calls)
	row := latencyRow{Key: "a", Path: "(a) dmctl service → hub → dmctl device (HTTPS POST /twins/{id}/methods, MQTT both ways)"}
	if _, err := p.startDevice(dctx, &wg, "lat-dmctl", device.Config{Quiet: true}); err != nil {
		row.Err = err.Error()
	} else if err := call("lat-dmctl", true); err != nil {
		row.Err = err.Error()
	} else {
		var d []time.Duration
		p.profile("latency-a", func() {
			d, err = sample(cfg.Warmup, cfg.Calls, func() error { return call("lat-dmctl", false) })
		})
		row.summary = summarize(d)
		if err != nil {
			row.Err = err.Error()
		}
	}
	p.res.Latency = append(p.res.Latency, row)

	// (b) the floor: device-side round trips on the same hub port.
	p.floor(ctx)

	// (b3) the broker library alone: request and response as raw MQTT
	// publishes between two clients through a bare mochi-mqtt broker.
	p.bareBroker(ctx)

	// (c) dmctl service -> hub -> official Node device SDK.
	row = latencyRow{Key: "c", Path: "(c) dmctl service → hub → official Node device SDK (azure-iot-device-mqtt)"}
	if cfg.Node == "" {
		p.res.note("(c) skipped: %s", cfg.SkipNodeMsg)
		return
	}
	cfg.progress("latency (c): dmctl service -> hub -> Node device SDK, %d calls", cfg.Calls)
	err := func() error {
		key, err := p.register("lat-node")
		if err != nil {
			return err
		}
		cs := "HostName=localhost;DeviceId=lat-node;SharedAccessKey=" + key + ";GatewayHostName=localhost:" + p.port
		nd, err := startNodeDevices(ctx, cfg, []string{cs}, p.h.CAFile())
		if err != nil {
			return err
		}
		defer nd.stop()
		if err := call("lat-node", true); err != nil {
			return err
		}
		d, err := sample(cfg.Warmup, cfg.Calls, func() error { return call("lat-node", false) })
		row.summary = summarize(d)
		return err
	}()
	if err != nil {
		row.Err = err.Error()
	}
	p.res.Latency = append(p.res.Latency, row)
}

// rawDevice connects a paho client to the hub as a registered device.
func (p *inproc) rawDevice(id, key string, onMessage paho.MessageHandler) (paho.Client, error) {
	tok, err := sas.Sign(key, "localhost/devices/"+id, "", time.Now().Add(time.Hour))
	if err != nil {
		return nil, err
	}
	opts := paho.NewClientOptions().
		AddBroker("tls://127.0.0.1:" + p.port).
		SetClientID(id).
		SetUsername(iothub.Username("localhost", id, "", "dmctl-bench-raw")).
		SetPassword(tok).
		SetTLSConfig(&tls.Config{RootCAs: p.h.CAPool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(120 * time.Second).
		SetDefaultPublishHandler(onMessage)
	c := paho.NewClient(opts)
	t := c.Connect()
	if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("raw device %s: connect: %v", id, t.Error())
	}
	return c, nil
}

func waitToken(t paho.Token) error {
	if !t.WaitTimeout(5 * time.Second) {
		return errors.New("mqtt: no acknowledgement within 5 s")
	}
	return t.Error()
}

// floor measures the least work the hub does for a device round trip on
// the same port: the hub routes nothing between clients (every device
// publish is answered by the hub itself), so raw cross-client publishes are
// impossible there.
func (p *inproc) floor(ctx context.Context) {
	cfg := p.cfg
	rowB := latencyRow{Key: "b", Path: "(b) floor: raw MQTT QoS 1 publish of the same payload to devices/{id}/messages/events/ → PUBACK, same hub port (paho client)"}
	rowB2 := latencyRow{Key: "b2", Path: "(b2) raw MQTT twin GET publish → twin response publish, same hub port (paho client; the hub reads the store)"}
	defer func() { p.res.Latency = append(p.res.Latency, rowB, rowB2) }()
	cfg.progress("latency (b): floor on the hub port, %d round trips each", cfg.Calls)
	key, err := p.register("lat-raw")
	if err != nil {
		rowB.Err, rowB2.Err = err.Error(), err.Error()
		return
	}
	replies := make(chan string, 16)
	c, err := p.rawDevice("lat-raw", key, func(_ paho.Client, m paho.Message) {
		select {
		case replies <- m.Topic():
		default:
		}
	})
	if err != nil {
		rowB.Err, rowB2.Err = err.Error(), err.Error()
		return
	}
	defer c.Disconnect(0)
	topic := "devices/lat-raw/messages/events/"
	d, err := sample(cfg.Warmup, cfg.Calls, func() error { return waitToken(c.Publish(topic, 1, false, []byte(benchPayload))) })
	rowB.summary = summarize(d)
	if err != nil {
		rowB.Err = err.Error()
	}

	if err := waitToken(c.Subscribe(iothub.TwinResFilter, 0, nil)); err != nil {
		rowB2.Err = err.Error()
		return
	}
	rid := 0
	d, err = sample(cfg.Warmup, cfg.Calls, func() error {
		rid++
		want := strconv.Itoa(rid)
		if err := waitToken(c.Publish(iothub.TwinGetTopic(want), 0, false, []byte(" "))); err != nil {
			return err
		}
		timeout := time.NewTimer(5 * time.Second)
		defer timeout.Stop()
		for {
			select {
			case t := <-replies:
				if _, got, _, ok := iothub.ParseTwinResponseTopic(t); ok && got == want {
					return nil
				}
			case <-timeout.C:
				return errors.New("no twin response within 5 s")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	rowB2.summary = summarize(d)
	if err != nil {
		rowB2.Err = err.Error()
	}
}

// throughput measures section 2: invocations per second at each
// concurrency, spread over cfg.Devices devices run by a device fleet in
// this process, with the service client as it comes and with one that
// keeps as many idle connections as there are callers.
func (p *inproc) throughput(ctx context.Context) {
	cfg := p.cfg
	n := cfg.Devices
	cfg.progress("throughput: starting %d devices", n)
	ids := service.SequentialIDs("tp", 0, n)
	var css []*sas.ConnectionString
	for _, id := range ids {
		key, err := p.register(id)
		if err == nil {
			var cs *sas.ConnectionString
			if cs, err = sas.ParseDevice(p.deviceCS(id, key)); err == nil {
				css = append(css, cs)
				continue
			}
		}
		p.res.note("throughput skipped: %v", err)
		return
	}
	f, err := fleet.New(fleet.Config{
		Devices:     css,
		Conn:        mqtt.Config{RootCAs: p.h.CAPool(), ClientType: "dmctl-bench"},
		Device:      device.Config{},
		ConnectRate: 2000,
		Log:         cfg.Log,
	})
	if err != nil {
		p.res.note("throughput skipped: %v", err)
		return
	}
	for _, id := range ids {
		f.Device(id).Handle(benchMethod, echo)
	}
	stop, err := startFleet(ctx, f, 60*time.Second)
	if err != nil {
		if ctx.Err() == nil {
			p.res.note("throughput skipped: %d devices: %v", n, err)
		}
		return
	}
	defer stop()
	call := invoker(ctx, p.svc)
	for _, id := range ids { // every device subscribed before timing
		if err := call(id, true); err != nil {
			p.res.note("throughput skipped: %v", err)
			return
		}
	}

	maxC := 0
	for _, c := range cfg.Concurrency {
		maxC = max(maxC, c)
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: p.h.CAPool(), MinVersion: tls.VersionTLS12},
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: max(maxC, 2),
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	tuned, err := service.New(p.svcCS, service.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		p.res.note("throughput (tuned client) skipped: %v", err)
	}
	defer tr.CloseIdleConnections()

	clients := []struct {
		name string
		c    *service.Client
	}{
		{"dmctl service client (default transport)", p.svc},
		{fmt.Sprintf("dmctl service client, MaxIdleConnsPerHost=%d (WithHTTPClient)", max(maxC, 2)), tuned},
	}
	for _, cl := range clients {
		if cl.c == nil {
			continue
		}
		for _, conc := range cfg.Concurrency {
			cfg.progress("throughput: %s, concurrency %d, %s", cl.name, conc, cfg.ThroughputD)
			var row throughputRow
			run := func() { row = measureThroughput(ctx, invoker(ctx, cl.c), ids, conc, cfg.ThroughputD) }
			if conc == maxC {
				kind := "default"
				if cl.c != p.svc {
					kind = "tuned"
				}
				p.profile(fmt.Sprintf("throughput-c%d-%s", conc, kind), run)
			} else {
				run()
			}
			row.Client = cl.name
			p.res.Throughput = append(p.res.Throughput, row)
		}
	}
}

// measureThroughput runs conc callers over ids for a warm-up tenth of dur
// and then dur, counting only calls started after the warm-up.
func measureThroughput(ctx context.Context, call func(string, bool) error, ids []string, conc int, dur time.Duration) throughputRow {
	warm := dur / 10
	start := time.Now()
	from := start.Add(warm)
	end := from.Add(dur)
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ctx.Err() == nil; i += conc {
				t := time.Now()
				if !t.Before(end) {
					return
				}
				err := call(ids[i%len(ids)], false)
				if t.Before(from) {
					continue
				}
				if err != nil {
					bad.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(from)
	return throughputRow{
		Concurrency: conc,
		Calls:       int(ok.Load()),
		Errors:      int(bad.Load()),
		Elapsed:     elapsed,
		PerSec:      float64(ok.Load()) / elapsed.Seconds(),
	}
}
