// Package soak drives a real "dmctl hub serve" process with sustained
// load from many simulated devices, kills it with SIGKILL in the middle,
// restarts it on the same data folder and port, and reports, per interval,
// what the load saw and how much memory the hub held.
//
// The load, each at its own rate across the fleet:
//
//   - direct-method calls from the service client to a random device, which
//     answers with the payload it got (a wrong answer counts as a failure);
//   - desired-property patches by the service, one device at a time per
//     device, key "soakN" = a rising sequence number (N = seq mod Keys);
//   - reported-property patches by the devices (device/mqtt's ordered
//     queue), the same shape, at most one waiting per device.
//
// A write is acknowledged when the service got 200 for its desired patch,
// or when the device got the hub's 2xx twin response for its reported
// patch. After the load, the devices stop, the hub is SIGKILLed once more
// and restarted, and every twin is read back: an acknowledged write is lost
// when its key holds a smaller sequence number (or nothing). Writes that
// were not acknowledged may or may not be there. Lost acknowledged writes
// must be 0.
//
// The hub's VmRSS is sampled from /proc/<pid>/status throughout; see
// RSSGrowthFactor for the level-off rule. The benchmark (go run ./bench)
// runs a long soak; this package's test runs a short one.
package soak

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

// Config sizes one soak. Bin and WorkDir are required; every other zero
// field takes its default.
type Config struct {
	Bin     string // the dmctl binary run as "dmctl hub serve"
	WorkDir string // the hub's data folder and ready file go here

	Devices  int           // simulated devices (default 100)
	Duration time.Duration // of the load (default 1 min)
	KillAt   time.Duration // offset of the SIGKILL (default Duration/2)
	Interval time.Duration // reporting interval (default 1 min)

	MethodRate   float64 // direct-method calls per second (default Devices/10)
	DesiredRate  float64 // desired patches per second (default Devices/20)
	ReportedRate float64 // reported patches per second (default Devices/10)
	Workers      int     // concurrent service calls of each kind (default 16)

	ConnectRate float64       // device connect attempts per second (default 500)
	MaxBackoff  time.Duration // devices' reconnect backoff cap (default 10 s)
	SampleEvery time.Duration // hub RSS sampling period (default 1 s)
	// ReconnectTimeout bounds the wait, after the load, for every device
	// to have reconnected after the kill (default 60 s).
	ReconnectTimeout time.Duration

	// Log receives the devices' failures; the zero value logs nothing.
	Log zerolog.Logger
	// Progress, when set, receives a line at each stage.
	Progress func(format string, args ...any)
}

func (c *Config) defaults() error {
	if c.Bin == "" || c.WorkDir == "" {
		return errors.New("soak: Bin and WorkDir are required")
	}
	if c.Devices == 0 {
		c.Devices = 100
	}
	if c.Duration == 0 {
		c.Duration = time.Minute
	}
	if c.Devices < 1 || c.Duration < 0 || c.KillAt < 0 || c.Interval < 0 || c.MethodRate < 0 ||
		c.DesiredRate < 0 || c.ReportedRate < 0 || c.Workers < 0 || c.ConnectRate < 0 {
		return fmt.Errorf("soak: negative size in %+v", *c)
	}
	if c.KillAt == 0 {
		c.KillAt = c.Duration / 2
	}
	if c.KillAt >= c.Duration {
		return fmt.Errorf("soak: the kill at %s is not inside the %s of load", c.KillAt, c.Duration)
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	d := float64(c.Devices)
	if c.MethodRate == 0 {
		c.MethodRate = d / 10
	}
	if c.DesiredRate == 0 {
		c.DesiredRate = d / 20
	}
	if c.ReportedRate == 0 {
		c.ReportedRate = d / 10
	}
	if c.Workers == 0 {
		c.Workers = 16
	}
	if c.ConnectRate == 0 {
		c.ConnectRate = 500
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.SampleEvery == 0 {
		c.SampleEvery = time.Second
	}
	if c.ReconnectTimeout == 0 {
		c.ReconnectTimeout = time.Minute
	}
	if c.Progress == nil {
		c.Progress = func(string, ...any) {}
	}
	return nil
}

// hubReadyTimeout bounds each start of the hub process.
const hubReadyTimeout = 30 * time.Second

// Run performs one soak and returns its report. An error means the soak
// could not be carried out (the hub would not start, devices could not
// register or connect); what the load saw, lost writes included, is in the
// report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	data := filepath.Join(cfg.WorkDir, "hub")
	ready := filepath.Join(cfg.WorkDir, "hub.ready.json")
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return nil, err
	}
	h, err := startHub(ctx, cfg.Bin, data, "127.0.0.1:0", ready, hubReadyTimeout)
	if err != nil {
		return nil, err
	}
	var cur atomic.Pointer[hubProc] // the hub that runs now, nil while down
	cur.Store(h)
	defer func() {
		if p := cur.Load(); p != nil {
			p.stop(15 * time.Second)
		}
	}()
	port, err := h.port()
	if err != nil {
		return nil, err
	}
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	svc, pool, err := serviceClient(data, port, h.caFile)
	if err != nil {
		return nil, err
	}
	defer svc.Close()

	cfg.Progress("soak: registering %d devices", cfg.Devices)
	fl, err := newFleet(ctx, &cfg, svc, pool, port)
	if err != nil {
		return nil, err
	}
	defer fl.close()
	rep := &Report{Config: cfg, Devices: cfg.Devices, Duration: cfg.Duration}
	st := newStats(&cfg)
	fl.stats = st

	devCtx, stopDevices := context.WithCancel(ctx)
	defer stopDevices()
	fleetDone := fl.run(devCtx)
	defer func() { stopDevices(); <-fleetDone }()

	cfg.Progress("soak: connecting %d devices (%g/s)", cfg.Devices, cfg.ConnectRate)
	t0 := time.Now()
	if err := fl.waitAll(ctx, time.Minute+time.Duration(float64(cfg.Devices)/cfg.ConnectRate*3*float64(time.Second)), func(m *member) bool { return m.connects.Load() > 0 }); err != nil {
		return nil, fmt.Errorf("soak: connecting the devices: %w", err)
	}
	rep.ConnectAll = time.Since(t0)

	cfg.Progress("soak: load for %s, hub SIGKILL at %s", cfg.Duration, cfg.KillAt)
	st.start(time.Now())
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	sampler := st.sample(loadCtx, &cur)
	loadDone := fl.load(loadCtx, svc)
	defer func() { stopLoad(); <-loadDone; <-sampler }()

	// The kill, in the middle of the load.
	if err := retry.Sleep(ctx, time.Until(st.t0.Add(cfg.KillAt))); err != nil {
		return nil, err
	}
	killAt := time.Now()
	cur.Store(nil)
	st.killed(killAt)
	if err := h.crash(ctx); err != nil {
		return nil, err
	}
	// From now on a device's connect is to the restarted hub.
	fl.killedAt.Store(time.Now().UnixNano())
	h, err = startHub(ctx, cfg.Bin, data, listen, ready, hubReadyTimeout)
	if err != nil {
		return nil, fmt.Errorf("soak: restart after the kill: %w", err)
	}
	restartAt := time.Now()
	cur.Store(h)
	rep.KilledAt, rep.HubDown = killAt.Sub(st.t0), restartAt.Sub(killAt)
	cfg.Progress("soak: hub restarted %s after the SIGKILL", short(rep.HubDown))

	if err := retry.Sleep(ctx, time.Until(st.t0.Add(cfg.Duration))); err != nil {
		return nil, err
	}
	stopLoad()
	<-loadDone
	<-sampler
	cfg.Progress("soak: load done; waiting for reported patches and reconnects")
	rep.Unacked = fl.drain(ctx, 15*time.Second)

	reconnected := func(m *member) bool { return m.reconnectedAt.Load() != 0 }
	if err := fl.waitAll(ctx, cfg.ReconnectTimeout, reconnected); err != nil && ctx.Err() != nil {
		return nil, err
	}
	for _, m := range fl.members {
		if at := m.reconnectedAt.Load(); at != 0 {
			rep.Reconnected++
			rep.ReconnectAll = max(rep.ReconnectAll, time.Unix(0, at).Sub(restartAt))
		}
	}
	stopDevices()
	<-fleetDone

	// Read back from a hub that lost its process once more: the twins
	// must hold every write acknowledged before it.
	cfg.Progress("soak: SIGKILL and restart, then reading %d twins back", cfg.Devices)
	cur.Store(nil)
	if err := h.crash(ctx); err != nil {
		return nil, err
	}
	if h, err = startHub(ctx, cfg.Bin, data, listen, ready, hubReadyTimeout); err != nil {
		return nil, fmt.Errorf("soak: restart for the read-back: %w", err)
	}
	cur.Store(h)
	if err := fl.verify(ctx, svc, rep); err != nil {
		return nil, err
	}
	st.finish(rep)
	return rep, nil
}

// serviceClient is an iothubowner client of the hub in data, listening on
// port, and the pool that trusts the hub's CA.
func serviceClient(data string, port int, caFile string) (*service.Client, *x509.CertPool, error) {
	cs, err := hub.OwnerConnectionString(data, "localhost", port)
	if err != nil {
		return nil, nil, err
	}
	pcs, err := sas.ParseService(cs)
	if err != nil {
		return nil, nil, err
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("hub CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("hub CA %s holds no certificate", caFile)
	}
	c, err := service.New(pcs, service.WithRootCAs(pool))
	if err != nil {
		return nil, nil, err
	}
	return c, pool, nil
}
