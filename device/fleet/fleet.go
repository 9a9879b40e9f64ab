// Package fleet runs many simulated devices in one process, each with its
// own MQTT connection and the behaviour of a single device.Device
// (rebootDevice, rebootTime, reconnects, SAS renewal).
//
// Connects are paced by one limiter shared by the whole fleet: every connect
// attempt, the first one and every reconnect alike, takes a slot, so a fleet
// of thousands neither floods the hub at start nor stampedes it after a hub
// restart (each device also waits its own jittered backoff first). Slots are
// ConnectRate per second, each with a random offset inside its interval.
//
// Every device's events reach Config.OnEvent with their DeviceID.
// Per-device events are logged at debug level (device.Config.Quiet and
// mqtt.Config.Quiet), with a "device" field. At info level the fleet logs its
// state instead (event "fleet": connected, connecting, retrying, rebooting,
// stopped) when it changes, at most once a second, and every StatusInterval
// while not every device is connected.
//
// An idle connected device costs two goroutines (its Run loop and its
// connection's reader) and one keep-alive timer; the fleet adds one
// goroutine and one ticker for status logging, none per device. The TLS
// configuration, with a session cache for quick reconnects, is shared.
//
// Every device of a fleet follows desired firmware like a single device
// (see package device). The fleet's devices share one device.Downloader
// (unless Config.Device has one), so at most DownloadConcurrency packages
// (default device.DefaultDownloadConcurrency, 64) download at once in the
// process however many devices a campaign targets; the rest wait their
// turn in the downloading step. The state line counts devices by firmware
// status too once some device updates: updating (downloading, verifying,
// applying, rebooting), failed (error, rolledback).
//
// A connection costs one open file. When the kernel refuses one (EMFILE:
// this process's limit, ENFILE: the system's), the device retries with its
// backoff like after any failed connect, but the fleet says so: once, at
// warn level with the numbers and the fix (event "fd_exhausted"), and in
// every state line after, as the devices held back by the open-file limit
// (Stats.FdLimited) until they connect. Config.LocalAddrs spreads the
// devices over several source addresses, each with its own ephemeral ports.
//
// A fleet that is one shard of a larger one (dmctl device run --processes)
// sets QuietState and hands its Stats to OnStats; its parent logs the sum.
// go run ./bench measures fleets: connect time, memory and fleet reboots.
package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/fdlimit"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
)

// DefaultConnectRate is the number of connect attempts per second a fleet
// makes unless Config.ConnectRate says otherwise.
const DefaultConnectRate = 200

// DefaultStatusInterval is how often the fleet's state is logged while not
// every device is connected.
const DefaultStatusInterval = 5 * time.Second

// minStatusGap is the shortest time between two state lines.
const minStatusGap = time.Second

// Config configures a Fleet.
type Config struct {
	// Devices are the identities to run, one connection each. Identities
	// (DeviceId, or DeviceId and ModuleId) must be unique.
	Devices []*sas.ConnectionString
	// Conn is the template for every device's connection: Transport,
	// RootCAs or TLSConfig, ClientType, SASTTL, MaxBackoff and so on.
	// ConnectionString, Gate, OnState, Log and Quiet are set per device.
	// When TLSConfig is nil, one is built from RootCAs (with a session
	// cache) and shared.
	Conn mqtt.Config
	// Device is the template for every device: RebootDelay, Now,
	// FirmwareVersion and so on. Log and Quiet are set per device. When
	// Downloader is nil, one is made (trusting Conn.RootCAs) and shared.
	Device device.Config
	// DownloadConcurrency bounds the firmware downloads in progress across
	// the fleet when the fleet makes the Downloader (default
	// device.DefaultDownloadConcurrency).
	DownloadConcurrency int
	// ConnectRate is the number of connect attempts per second across the
	// fleet, reconnects included (default DefaultConnectRate).
	ConnectRate float64
	// StatusInterval is how often the state is logged while some device is
	// not connected (default DefaultStatusInterval).
	StatusInterval time.Duration
	// Log receives the fleet's state lines and, at debug level, every
	// device's events. The zero value logs nothing.
	Log zerolog.Logger
	// OnEvent, when set, receives every device's connection and device
	// events, each with its DeviceID, after Conn.OnEvent and
	// Device.OnEvent (when those are set too). It is called from many
	// goroutines at once, never after Run has returned, and must return
	// quickly.
	OnEvent func(device.Event)
	// LocalAddrs, when set, are the source addresses the devices dial
	// from, round robin: device i dials from LocalAddrs[i%len(LocalAddrs)]
	// (Conn.LocalAddr is then ignored). Each source address has its own
	// ephemeral ports (about 28,000 on Linux) towards one hub address.
	LocalAddrs []net.Addr
	// Limit is the open-file limit the fd_exhausted warning's hint speaks
	// of; the zero value reads this process's (fdlimit.Open).
	Limit fdlimit.Limit
	// ShardFlag names the option that splits a fleet over processes, for
	// that hint (e.g. "--processes"); "" names none.
	ShardFlag string
	// OnStats, when set, receives the fleet's Stats each time a state line
	// is due (on change, at most once a second, and every StatusInterval
	// while some device is not connected), from one goroutine, never after
	// Run has returned.
	OnStats func(Stats)
	// QuietState logs the state lines at debug level instead of info: a
	// shard's parent logs the whole fleet's.
	QuietState bool
}

// Stats counts the devices by the state of their connection.
type Stats struct {
	Devices    int `json:"devices"`
	Connected  int `json:"connected"`
	Connecting int `json:"connecting"` // waiting for a connect slot or connecting
	Retrying   int `json:"retrying"`   // waiting out a backoff
	Rebooting  int `json:"rebooting"`  // offline on purpose (a reboot)
	Stopped    int `json:"stopped"`
	// EverConnected is how many devices have connected at least once.
	EverConnected int `json:"everConnected"`
	// Devices by reported firmware status: current, updating (downloading,
	// verifying, applying, rebooting) and failed (error, rolledback).
	FwCurrent  int `json:"fwCurrent,omitempty"`
	FwUpdating int `json:"fwUpdating,omitempty"`
	FwFailed   int `json:"fwFailed,omitempty"`
	// FdLimited is how many devices the kernel refused a connection for
	// want of open files (EMFILE, ENFILE) on their last attempt; they are
	// counted under Retrying or Connecting too, and retry with backoff.
	FdLimited int `json:"fdLimited,omitempty"`
}

// Add returns the sum of two fleets' Stats (the shards of one fleet).
func (s Stats) Add(o Stats) Stats {
	return Stats{
		Devices:       s.Devices + o.Devices,
		Connected:     s.Connected + o.Connected,
		Connecting:    s.Connecting + o.Connecting,
		Retrying:      s.Retrying + o.Retrying,
		Rebooting:     s.Rebooting + o.Rebooting,
		Stopped:       s.Stopped + o.Stopped,
		EverConnected: s.EverConnected + o.EverConnected,
		FwCurrent:     s.FwCurrent + o.FwCurrent,
		FwUpdating:    s.FwUpdating + o.FwUpdating,
		FwFailed:      s.FwFailed + o.FwFailed,
		FdLimited:     s.FdLimited + o.FdLimited,
	}
}

// Log writes s as a state line (event "fleet") on ev, which the caller
// has made at the level it wants: the counts as fields and as a message
// "fleet: 3/4 connected, ...". Firmware counts are added when firmware is
// true, held-back devices whenever there are some.
func (s Stats) Log(ev *zerolog.Event, firmware bool) {
	ev = ev.Str("event", "fleet").Int("devices", s.Devices).Int("connected", s.Connected).
		Int("connecting", s.Connecting).Int("retrying", s.Retrying).Int("rebooting", s.Rebooting)
	msg := fmt.Sprintf("fleet: %d/%d connected, %d connecting, %d retrying, %d rebooting",
		s.Connected, s.Devices, s.Connecting, s.Retrying, s.Rebooting)
	if firmware {
		ev = ev.Int("fw_current", s.FwCurrent).Int("fw_updating", s.FwUpdating).Int("fw_failed", s.FwFailed)
		msg += fmt.Sprintf(" · firmware: %d current, %d updating, %d failed", s.FwCurrent, s.FwUpdating, s.FwFailed)
	}
	if s.FdLimited > 0 {
		ev = ev.Int("fd_limited", s.FdLimited)
		msg += fmt.Sprintf(" · %d held back by the open-file limit", s.FdLimited)
	}
	ev.Msg(msg)
}

// Fleet runs a set of simulated devices. Create it with New and call Run
// once.
type Fleet struct {
	cfg     Config
	members []*member
	limiter *limiter
	log     zerolog.Logger

	counts   [mqtt.StateStopped + 1]atomic.Int64
	fw       [fwFailed + 1]atomic.Int64 // devices by fwClass
	ever     atomic.Int64
	changed  chan struct{} // buffered 1: some state changed
	ready    chan struct{} // closed when every device has connected once
	started  atomic.Bool
	readyAt  atomic.Int64 // unix nanos when ready closed
	readyOne sync.Once
	fwSeen   bool // report's: some device has updated firmware
	fdHeld   atomic.Int64
	fdWarned atomic.Bool
}

type member struct {
	id    string // identity(cs)
	conn  *mqtt.Conn
	dev   *device.Device
	state atomic.Int32 // mqtt.State; written by the member's Run goroutine only
	fw    atomic.Int32 // fwClass of the last reported firmware status
	ever  atomic.Bool
	fd    atomic.Bool // the last connect attempt lacked a descriptor
}

// New validates cfg and prepares every device's connection. It does not
// connect.
func New(cfg Config) (*Fleet, error) {
	if len(cfg.Devices) == 0 {
		return nil, errors.New("fleet: no devices")
	}
	if cfg.ConnectRate == 0 {
		cfg.ConnectRate = DefaultConnectRate
	}
	if cfg.ConnectRate < 0 {
		return nil, fmt.Errorf("fleet: connect rate %g is negative", cfg.ConnectRate)
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.Limit == (fdlimit.Limit{}) {
		l, err := fdlimit.Open()
		if err != nil {
			return nil, fmt.Errorf("fleet: read the open-file limit: %w", err)
		}
		cfg.Limit = l
	}
	base := cfg.Conn.TLSConfig
	if base == nil {
		base = &tls.Config{
			RootCAs:            cfg.Conn.RootCAs,
			MinVersion:         tls.VersionTLS12,
			CurvePreferences:   mqtt.CurvePreferences(),
			ClientSessionCache: tls.NewLRUClientSessionCache(len(cfg.Devices)),
		}
	}
	// One config per server name, shared by the devices that dial it:
	// with ServerName set crypto/tls does not copy it for every dial.
	tlsFor := map[string]*tls.Config{}
	tlsConfig := func(cs *sas.ConnectionString) *tls.Config {
		if base.ServerName != "" {
			return base
		}
		name := mqtt.ServerName(cs)
		if c, ok := tlsFor[name]; ok {
			return c
		}
		c := base.Clone()
		c.ServerName = name
		tlsFor[name] = c
		return c
	}
	f := &Fleet{
		cfg:     cfg,
		limiter: newLimiter(cfg.ConnectRate),
		log:     cfg.Log,
		changed: make(chan struct{}, 1),
		ready:   make(chan struct{}),
	}
	dl := cfg.Device.Downloader
	if dl == nil {
		dl = device.NewDownloader(device.DownloaderConfig{RootCAs: cfg.Conn.RootCAs, Concurrency: cfg.DownloadConcurrency})
	}
	seen := make(map[string]int, len(cfg.Devices))
	f.members = make([]*member, 0, len(cfg.Devices))
	for i, cs := range cfg.Devices {
		if cs == nil {
			return nil, fmt.Errorf("fleet: device %d: no connection string", i+1)
		}
		key := cs.DeviceID + "/" + cs.ModuleID
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("fleet: device %d: identity %q already used by device %d", i+1, identity(cs), j)
		}
		seen[key] = i + 1
		m := &member{id: identity(cs)}
		// Quiet: routine events are debug events, dropped before any field
		// is built when the logger is above debug; failures still show. A
		// hook adds the device (With would copy a context buffer per device).
		log := cfg.Log.Hook(deviceHook(identity(cs)))
		cc := cfg.Conn
		cc.ConnectionString = cs
		cc.TLSConfig = tlsConfig(cs)
		cc.Gate = f.limiter.Wait
		cc.OnState = func(s mqtt.State) { f.setState(m, s) }
		cc.Log = log
		cc.Quiet = true
		cc.OnEvent = both(func(e device.Event) { f.connEvent(m, e) }, both(cfg.Conn.OnEvent, cfg.OnEvent))
		if len(cfg.LocalAddrs) > 0 {
			cc.LocalAddr = cfg.LocalAddrs[i%len(cfg.LocalAddrs)]
		}
		conn, err := mqtt.New(cc)
		if err != nil {
			return nil, fmt.Errorf("fleet: device %d (%s): %w", i+1, identity(cs), err)
		}
		dc := cfg.Device
		dc.Log = log
		dc.Quiet = true
		dc.Downloader = dl
		dc.OnEvent = both(func(e device.Event) { f.setFirmware(m, e) }, both(cfg.Device.OnEvent, cfg.OnEvent))
		m.conn = conn
		m.dev = device.New(conn, dc)
		f.members = append(f.members, m)
	}
	f.counts[mqtt.StateIdle].Store(int64(len(f.members)))
	return f, nil
}

// both calls a, then b; either may be nil.
func both(a, b func(device.Event)) func(device.Event) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(e device.Event) { a(e); b(e) }
}

func identity(cs *sas.ConnectionString) string {
	if cs.ModuleID != "" {
		return cs.DeviceID + "/" + cs.ModuleID
	}
	return cs.DeviceID
}

// deviceHook adds the device's identity to every event it logs.
type deviceHook string

func (h deviceHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) { e.Str("device", string(h)) }

// Len is the number of devices.
func (f *Fleet) Len() int { return len(f.members) }

// DeviceIDs lists the identities in the order of Config.Devices: a device
// by its id, a module as "{deviceId}/{moduleId}" (its MQTT client id).
func (f *Fleet) DeviceIDs() []string {
	ids := make([]string, len(f.members))
	for i, m := range f.members {
		ids[i] = m.id
	}
	return ids
}

// Target is the host:port the first device dials.
func (f *Fleet) Target() string { return f.members[0].conn.Target() }

// Device returns the device with the given identity (as DeviceIDs names
// it), for adding method handlers before Run; nil if there is none.
func (f *Fleet) Device(id string) *device.Device {
	for _, m := range f.members {
		if m.id == id {
			return m.dev
		}
	}
	return nil
}

// Ready is closed once every device has connected at least once.
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// ReadyAt is when Ready was closed (zero before).
func (f *Fleet) ReadyAt() time.Time {
	if n := f.readyAt.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Stats counts the devices by state.
func (f *Fleet) Stats() Stats {
	return Stats{
		Devices:       len(f.members),
		Connected:     int(f.counts[mqtt.StateConnected].Load()),
		Connecting:    int(f.counts[mqtt.StateConnecting].Load() + f.counts[mqtt.StateIdle].Load()),
		Retrying:      int(f.counts[mqtt.StateRetrying].Load()),
		Rebooting:     int(f.counts[mqtt.StateSuspended].Load()),
		Stopped:       int(f.counts[mqtt.StateStopped].Load()),
		EverConnected: int(f.ever.Load()),
		FwCurrent:     int(f.fw[fwCurrent].Load()),
		FwUpdating:    int(f.fw[fwUpdating].Load()),
		FwFailed:      int(f.fw[fwFailed].Load()),
		FdLimited:     int(f.fdHeld.Load()),
	}
}

// connEvent counts m as held back by the open-file limit after a connect
// the kernel refused for want of descriptors, until it connects, and warns
// once per fleet with the fix.
func (f *Fleet) connEvent(m *member, e device.Event) {
	var held bool
	switch e.Kind {
	case device.EventConnectFailed:
		held = fdlimit.IsExhausted(e.Err)
	case device.EventConnected:
	default:
		return
	}
	if m.fd.Swap(held) == held {
		return
	}
	if held {
		f.fdHeld.Add(1)
	} else {
		f.fdHeld.Add(-1)
	}
	f.notify()
	if held && !f.fdWarned.Swap(true) {
		n := len(f.members)
		f.log.Warn().Str("event", "fd_exhausted").Int("devices", n).Uint64("limit", f.cfg.Limit.Soft).Err(e.Err).
			Msgf("the kernel refused a connection for want of open files: devices are held back and retry; %s", f.fdHint(n, e.Err))
	}
}

// fdHint is the fix for a refused descriptor: more files for the system,
// or for this process (whose fleet alone may fit in its limit).
func (f *Fleet) fdHint(n int, err error) string {
	l := f.cfg.Limit
	switch {
	case errors.Is(err, syscall.ENFILE):
		return "the system's open-file table is full: raise fs.file-max (sysctl) or run fewer connections on this machine"
	case l.Check(n) == nil:
		hint := fmt.Sprintf("%d connections fit in this process's limit of %d, but its other open files take the rest: raise ulimit -n (the hard limit is %d)",
			n, l.Soft, l.Hard)
		if f.cfg.ShardFlag != "" {
			hint += ", or split the fleet over more processes with " + f.cfg.ShardFlag
		}
		return hint
	}
	return l.Hint(n, f.cfg.ShardFlag)
}

// notify wakes the state reporter.
func (f *Fleet) notify() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// fwClass groups firmware statuses for the state line.
type fwClass int32

const (
	fwUnknown fwClass = iota
	fwCurrent
	fwUpdating
	fwFailed
)

// setFirmware counts m under the status of a firmware event.
func (f *Fleet) setFirmware(m *member, e device.Event) {
	if e.Kind != device.EventFirmware || e.Firmware == nil {
		return
	}
	c := fwUpdating
	switch e.Firmware.FwUpdateStatus {
	case iothub.FwStatusCurrent:
		c = fwCurrent
	case iothub.FwStatusError, iothub.FwStatusRolledBack:
		c = fwFailed
	}
	if old := fwClass(m.fw.Swap(int32(c))); old != c {
		f.fw[old].Add(-1)
		f.fw[c].Add(1)
		f.notify()
	}
}

func (f *Fleet) setState(m *member, s mqtt.State) {
	old := mqtt.State(m.state.Swap(int32(s)))
	if old == s {
		return
	}
	f.counts[old].Add(-1)
	f.counts[s].Add(1)
	if s == mqtt.StateConnected && !m.ever.Swap(true) {
		if f.ever.Add(1) == int64(len(f.members)) {
			f.readyOne.Do(func() {
				f.readyAt.Store(time.Now().UnixNano())
				close(f.ready)
			})
		}
	}
	f.notify()
}

// DeviceError is a device that could not start: the hub refused its
// credentials or could not be trusted on its first connect.
type DeviceError struct {
	DeviceID string // the identity: "{deviceId}/{moduleId}" for a module
	Err      error
}

func (e *DeviceError) Error() string { return "device " + e.DeviceID + ": " + e.Err.Error() }
func (e *DeviceError) Unwrap() error { return e.Err }

// Run runs every device until ctx is done, then disconnects them all and
// returns nil. If a device's first connect fails for good (it wraps
// device.ErrUnauthorized or device.ErrUntrusted), the whole fleet stops and
// Run returns a *DeviceError for the first such device.
func (f *Fleet) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errors.New("fleet: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	// Started, not run: an idle device holds no goroutine of its own here
	// (its link's reader is its only one).
	failed := func(m *member, err error) {
		errOnce.Do(func() {
			firstErr = &DeviceError{DeviceID: m.id, Err: err}
			f.log.Error().Str("event", "device_failed").Str("device", m.id).Err(err).Msg("device cannot connect, stopping the fleet")
			cancel()
		})
	}
	wg.Add(len(f.members))
	for _, m := range f.members {
		err := m.dev.Start(ctx, func(err error) {
			defer wg.Done()
			if err != nil {
				failed(m, err)
			}
		})
		if err != nil {
			wg.Done()
			failed(m, err)
		}
	}
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		f.report(ctx, start)
	}()
	wg.Wait()
	cancel()
	<-statusDone
	st := f.Stats()
	f.log.Info().Str("event", "fleet_stopped").Int("devices", st.Devices).Msg("fleet stopped")
	return firstErr
}

// report logs the fleet's state on change (at most once per minStatusGap)
// and every StatusInterval while not every device is connected.
func (f *Fleet) report(ctx context.Context, start time.Time) {
	var last Stats
	var lastAt time.Time
	logged, pending := false, false
	tick := time.NewTicker(minStatusGap)
	defer tick.Stop()
	ready := f.ready
	for {
		select {
		case <-ctx.Done():
			return
		case <-ready:
			ready = nil
			f.log.Info().Str("event", "fleet_ready").Int("devices", len(f.members)).
				Dur("took", f.ReadyAt().Sub(start)).Msg("every device has connected")
			pending, logged = true, false // and the state, at once
		case <-f.changed:
			pending = true
			if time.Since(lastAt) < minStatusGap {
				continue // the ticker logs it
			}
		case <-tick.C:
		}
		st := f.Stats()
		now := time.Now()
		due := st.Connected < st.Devices && now.Sub(lastAt) >= f.cfg.StatusInterval
		if !(pending && (!logged || st != last)) && !due {
			continue
		}
		if st.FwUpdating+st.FwFailed > 0 {
			f.fwSeen = true // once a campaign shows, keep showing its end
		}
		ev := f.log.Info()
		if f.cfg.QuietState {
			ev = f.log.Debug()
		}
		st.Log(ev, f.fwSeen)
		if f.cfg.OnStats != nil {
			f.cfg.OnStats(st)
		}
		last, lastAt, logged, pending = st, now, true, false
	}
}

// limiter hands out connect slots: ConnectRate per second across the
// fleet (a token bucket of one, so there are no bursts), each taken with a
// random offset inside its interval so that connects do not march in
// lockstep. A caller whose ctx ends while it waits gives its slot back.
type limiter struct {
	lim      *rate.Limiter // nil: no limit
	interval time.Duration
}

func newLimiter(perSecond float64) *limiter {
	l := &limiter{}
	if perSecond > 0 && !math.IsInf(perSecond, 1) {
		l.lim = rate.NewLimiter(rate.Limit(perSecond), 1)
		l.interval = time.Duration(float64(time.Second) / perSecond)
	}
	return l
}

// Wait blocks until the caller's slot, or ctx ends.
func (l *limiter) Wait(ctx context.Context) error {
	if l.lim == nil {
		return ctx.Err()
	}
	r := l.lim.Reserve() // always OK: one token at a time, burst 1
	var jitter time.Duration
	if l.interval > 0 {
		jitter = rand.N(l.interval)
	}
	if err := retry.Sleep(ctx, r.Delay()+jitter); err != nil {
		r.Cancel()
		return err
	}
	return nil
}
