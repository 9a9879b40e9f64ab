package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/internal/retry"
)

// RebootMethod is the direct method that reboots the device.
const RebootMethod = "rebootDevice"

// RebootTimeProperty is the reported property that carries the time of the
// last reboot (RFC 3339 UTC with nanoseconds).
const RebootTimeProperty = "rebootTime"

// DefaultRebootDelay is how long a reboot keeps the device offline unless
// Config.RebootDelay or the request payload says otherwise.
const DefaultRebootDelay = 20 * time.Second

// MaxRebootDelaySeconds bounds the delaySeconds a rebootDevice payload may ask for.
const MaxRebootDelaySeconds = 3600

// NoRebootDelay, as Config.RebootDelay, makes a reboot reconnect at once.
const NoRebootDelay time.Duration = -1

// Config configures a Device. The zero value works.
type Config struct {
	// RebootDelay is how long a reboot stays offline: 0 means
	// DefaultRebootDelay, NoRebootDelay (any negative value) means none.
	RebootDelay time.Duration
	// Log receives method, reboot and desired-property events. The zero
	// value logs nothing.
	Log zerolog.Logger
	// OnEvent, when set, receives the device's events (method_received,
	// method, reboot_started, rebooted, reboot_failed, twin, desired,
	// firmware, firmware_abandoned, factory_reset),
	// with DeviceID (and ModuleID) set when the Conn has a DeviceID (and a
	// ModuleID) method. It is called
	// on goroutines that Run owns (the connection's and the reboot's),
	// possibly several at once, never after Run has returned, and must
	// return quickly. Events carry no secrets.
	OnEvent func(Event)
	// Now is the clock used for rebootTime. Default: time.Now.
	Now func() time.Time
	// Quiet logs routine events (methods, reboots, twin reads) at debug
	// level instead of info and warn; failures keep their level. Fleets of
	// simulated devices set it.
	Quiet bool

	// FirmwareVersion is the version the device runs at start and after a
	// factoryReset (default DefaultFirmwareVersion).
	FirmwareVersion string
	// FirmwareApplyDelay is how long applying a firmware package takes: 0
	// means DefaultFirmwareApplyDelay, a negative value none.
	FirmwareApplyDelay time.Duration
	// Downloader fetches firmware packages. Devices of one process should
	// share one, so that their downloads share its concurrency bound; nil
	// means a Downloader of its own that trusts the system roots.
	Downloader *Downloader
}

// Device is the simulated device: it answers direct methods through its Mux,
// performs reboots, factory resets and firmware updates, and logs
// desired-property changes.
type Device struct {
	conn  Conn
	mux   Mux
	delay time.Duration
	log   zerolog.Logger
	quiet bool
	now   func() time.Time
	// onEvent, id and module: Config.OnEvent and the identity it names.
	onEvent func(Event)
	id      string
	module  string

	wg sync.WaitGroup // the reboot in progress, if any

	mu             sync.Mutex
	runCtx         context.Context // while Run runs: the context reboots run under
	rebooting      bool
	stopped        bool  // Run is ending: no new goroutine starts
	desiredVersion int64 // highest desired $version seen; older notifications are dropped

	// Firmware (firmware.go); dl and fwFactory are set once by New.
	dl         *Downloader
	fwFactory  string
	fwApply    time.Duration
	fwCurrent  string                     // the running version
	fwDesired  map[string]json.RawMessage // the desired firmware object, nil if none
	fwSeq      int64                      // bumped on every change of fwDesired (and every twin read)
	fwDone     int64                      // the fwSeq the worker last took up
	fwFailed   string                     // canonical desired object whose update rolled back
	fwReported string                     // "status version" last reported
	fwJob      *fwJob                     // the update in progress
	fwWorker   bool                       // the firmware worker runs
	fwBlocked  bool                       // a factory reset holds the worker off
	fwStop     context.CancelFunc         // ends the worker
	fwStopped  chan struct{}              // closed when the worker has ended
}

// New returns a device that talks through conn and answers rebootDevice.
func New(conn Conn, cfg Config) *Device {
	d := &Device{
		conn:  conn,
		delay: cfg.RebootDelay,
		log:   cfg.Log,
		quiet: cfg.Quiet,
		now:   cfg.Now,

		onEvent: cfg.OnEvent,
	}
	if c, ok := conn.(interface{ DeviceID() string }); ok {
		d.id = c.DeviceID()
	}
	if c, ok := conn.(interface{ ModuleID() string }); ok {
		d.module = c.ModuleID()
	}
	switch {
	case d.delay == 0:
		d.delay = DefaultRebootDelay
	case d.delay < 0:
		d.delay = 0
	}
	if d.now == nil {
		d.now = time.Now
	}
	d.fwFactory, d.fwApply, d.dl = cfg.FirmwareVersion, cfg.FirmwareApplyDelay, cfg.Downloader
	if d.fwFactory == "" {
		d.fwFactory = DefaultFirmwareVersion
	}
	d.fwCurrent = d.fwFactory
	switch {
	case d.fwApply == 0:
		d.fwApply = DefaultFirmwareApplyDelay
	case d.fwApply < 0:
		d.fwApply = 0
	}
	if d.dl == nil {
		d.dl = NewDownloader(DownloaderConfig{})
	}
	d.mux.builtin = d.builtinMethod
	return d
}

// builtinMethod returns the handler of one of the device's own methods
// (rebootDevice, factoryReset) unless Handle replaced it.
func (d *Device) builtinMethod(name string) (MethodFunc, bool) {
	switch name {
	case RebootMethod:
		return d.handleReboot, true
	case FactoryResetMethod:
		return d.handleFactoryReset, true
	}
	return nil, false
}

func (d *Device) info() *zerolog.Event {
	if d.quiet {
		return d.log.Debug()
	}
	return d.log.Info()
}

func (d *Device) warn() *zerolog.Event {
	if d.quiet {
		return d.log.Debug()
	}
	return d.log.Warn()
}

// emit hands e to Config.OnEvent, stamped with the time and the device.
func (d *Device) emit(e Event) {
	if d.onEvent == nil {
		return
	}
	e.Time = time.Now()
	e.DeviceID = d.id
	e.ModuleID = d.module
	d.onEvent(e)
}

// Handle adds (or replaces) a direct-method handler.
func (d *Device) Handle(name string, f MethodFunc) { d.mux.Handle(name, f) }

// Run serves until ctx is done: it runs the connection and performs the
// reboots that rebootDevice requests. It returns nil on a clean cancel, or
// the connection's fatal error (see Conn.Run).
func (d *Device) Run(ctx context.Context) error {
	res := make(chan error, 1)
	if err := d.Start(ctx, func(err error) { res <- err }); err != nil {
		return err
	}
	return <-res
}

// starter is a Conn that runs without holding its caller's goroutine
// (device/mqtt's Conn): done is called once, with what Run would return.
type starter interface {
	Start(ctx context.Context, h Handler, done func(error)) error
}

// Start runs the device as Run does without holding the caller's
// goroutine: done is called once, with what Run would return, after the
// device's work has stopped. A fleet starts its devices so, and an idle
// device costs no goroutine of its own. Start may be called once, and not
// after Run.
func (d *Device) Start(ctx context.Context, done func(error)) error {
	ctx, cancel := context.WithCancel(ctx)
	d.mu.Lock()
	if d.runCtx != nil {
		d.mu.Unlock()
		cancel()
		return errors.New("device: Run called twice")
	}
	d.runCtx = ctx
	d.mu.Unlock()
	finish := func(err error) {
		cancel()
		d.mu.Lock()
		d.runCtx = context.Background() // not nil: Run may not be called again
		d.rebooting = true              // no new reboot starts
		d.stopped = true                // nor any firmware work
		d.mu.Unlock()
		d.wg.Wait()
		done(err)
	}
	if s, ok := d.conn.(starter); ok {
		if err := s.Start(ctx, d, finish); err != nil {
			finish(err)
		}
		return nil
	}
	go func() { finish(d.conn.Run(ctx, d)) }()
	return nil
}

// HandleMethod implements Handler.
func (d *Device) HandleMethod(ctx context.Context, req MethodRequest) (int, []byte) {
	d.emit(Event{Kind: EventMethodReceived, Method: req.Name})
	status, body := d.mux.Dispatch(ctx, req.Name, req.Payload)
	ev := d.info()
	if status >= 400 {
		ev = d.warn()
	}
	ev.Str("event", "method").Str("method", req.Name).Int("status", status).Msg("direct method answered")
	d.emit(Event{Kind: EventMethodAnswered, Method: req.Name, Status: status})
	return status, body
}

// HandleTwin implements Handler: it remembers the desired $version so that
// notifications the twin already contains are ignored.
func (d *Device) HandleTwin(doc []byte) {
	var twin struct {
		Desired  map[string]json.RawMessage `json:"desired"`
		Reported map[string]json.RawMessage `json:"reported"`
	}
	if err := json.Unmarshal(doc, &twin); err != nil {
		d.warn().Str("event", "twin").Err(err).Msg("twin document is not JSON")
		return
	}
	dv := versionOf(twin.Desired)
	d.mu.Lock()
	d.desiredVersion = dv
	d.mu.Unlock()
	fw, ok := firmwareOf(twin.Desired)
	d.setDesiredFirmware(fw, ok, true)
	ev := d.info().Str("event", "twin").Int64("desired_version", dv).Int64("reported_version", versionOf(twin.Reported))
	if rt, ok := twin.Reported[RebootTimeProperty]; ok {
		var s string
		if json.Unmarshal(rt, &s) == nil {
			ev = ev.Str(RebootTimeProperty, s)
		}
	}
	ev.RawJSON("desired", redactPackageURI(desiredWithoutMeta(twin.Desired))).Msg("twin read")
	d.emit(Event{Kind: EventTwin, Version: dv})
}

// HandleDesired implements Handler: desired properties are logged; the
// simulator has no settings that they change.
func (d *Device) HandleDesired(version int64, patch []byte) {
	d.mu.Lock()
	stale := version > 0 && version <= d.desiredVersion
	if !stale {
		d.desiredVersion = version
	}
	d.mu.Unlock()
	if stale {
		d.log.Debug().Str("event", "desired").Int64("version", version).Msg("desired patch already applied, ignored")
		return
	}
	ev := d.info().Str("event", "desired").Int64("version", version)
	if json.Valid(patch) {
		ev = ev.RawJSON("patch", redactPackageURI(patch))
	} else {
		ev = ev.Int("bytes", len(patch))
	}
	ev.Msg("desired properties changed")
	d.emit(Event{Kind: EventDesired, Version: version})
	var doc map[string]json.RawMessage
	if json.Unmarshal(patch, &doc) == nil {
		fw, ok := firmwareOf(doc)
		d.setDesiredFirmware(fw, ok, false)
	}
}

func versionOf(m map[string]json.RawMessage) int64 {
	v, err := strconv.ParseInt(string(m["$version"]), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

func desiredWithoutMeta(m map[string]json.RawMessage) []byte {
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		if k != "$version" && k != "$metadata" {
			out[k] = v
		}
	}
	b, _ := json.Marshal(out)
	return b
}

// RebootResponse is the payload of a successful rebootDevice answer.
type RebootResponse struct {
	Message      string `json:"message"`
	DelaySeconds int    `json:"delaySeconds"`
}

func (d *Device) handleReboot(_ context.Context, payload json.RawMessage) (int, any) {
	delay, err := d.parseRebootPayload(payload)
	if err != nil {
		return http.StatusBadRequest, errorBody{Error: err.Error(), Method: RebootMethod}
	}
	// A reboot runs on its own goroutine, started here and awaited by Run,
	// so an idle device costs no goroutine of its own.
	d.mu.Lock()
	ctx, busy := d.runCtx, d.rebooting
	if ctx == nil {
		busy = true
	}
	if !busy {
		d.info().Str("event", "reboot_accepted").Str("delay", delay.String()).Msg("reboot requested")
		d.rebooting = true
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.reboot(ctx, delay)
			d.mu.Lock()
			if ctx.Err() == nil {
				d.rebooting = false
			}
			d.mu.Unlock()
		}()
	}
	d.mu.Unlock()
	if busy {
		return http.StatusConflict, errorBody{Error: "reboot already in progress", Method: RebootMethod}
	}
	return http.StatusOK, RebootResponse{
		Message:      fmt.Sprintf("rebooting: offline for %s, then %s is reported", delay, RebootTimeProperty),
		DelaySeconds: int(delay / time.Second),
	}
}

// parseRebootPayload reads {"delaySeconds": N}; null, {} and a missing key
// keep the configured delay. N must be an integer in 0..MaxRebootDelaySeconds.
func (d *Device) parseRebootPayload(payload json.RawMessage) (time.Duration, error) {
	if string(payload) == "null" {
		return d.delay, nil
	}
	// Service SDKs that take the payload as text (the Python tutorial's
	// CloudToDeviceMethod(payload='{"method_number":"42"}')) send a JSON
	// string that holds the object.
	var text string
	if json.Unmarshal(payload, &text) == nil {
		if strings.TrimSpace(text) == "" {
			return d.delay, nil
		}
		payload = json.RawMessage(text)
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal(payload, &p); err != nil || p == nil && text != "" {
		return 0, errors.New(`payload must be a JSON object such as {"delaySeconds": 20}, or a JSON string holding one`)
	}
	raw, ok := p["delaySeconds"]
	if !ok || string(raw) == "null" {
		return d.delay, nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || n < 0 || n > MaxRebootDelaySeconds {
		return 0, fmt.Errorf("delaySeconds must be an integer from 0 to %d", MaxRebootDelaySeconds)
	}
	return time.Duration(n) * time.Second, nil
}

// reboot simulates one reboot: the answer has gone out (Suspend answers
// calls in progress first), the link goes down for delay, comes back, and
// rebootTime is reported.
func (d *Device) reboot(ctx context.Context, delay time.Duration) {
	d.info().Str("event", "reboot_started").Str("delay", delay.String()).Msg("rebooting: going offline")
	d.emit(Event{Kind: EventRebootStarted, Delay: delay})
	if d.cycle(ctx, delay) != nil {
		return
	}
	at := d.now().UTC().Format(time.RFC3339Nano)
	patch, _ := json.Marshal(map[string]string{RebootTimeProperty: at})
	if err := d.conn.Report(ctx, patch); err != nil {
		if ctx.Err() == nil {
			d.log.Error().Str("event", "reboot_failed").Err(err).Msg("could not report " + RebootTimeProperty)
			d.emit(Event{Kind: EventRebootFailed, Err: err})
		}
		return
	}
	d.info().Str("event", "rebooted").Str(RebootTimeProperty, at).Msg("reboot complete, " + RebootTimeProperty + " reported")
	d.emit(Event{Kind: EventRebooted, RebootTime: at})
}

// cycle goes offline for delay and comes back, as a reboot does; failures
// are logged and emitted as reboot_failed.
func (d *Device) cycle(ctx context.Context, delay time.Duration) error {
	if err := d.conn.Suspend(ctx); err != nil {
		if ctx.Err() == nil {
			d.log.Error().Str("event", "reboot_failed").Err(err).Msg("could not go offline")
			d.emit(Event{Kind: EventRebootFailed, Err: err})
		}
		return err
	}
	if err := retry.Sleep(ctx, delay); err != nil {
		return err
	}
	if err := d.conn.Resume(ctx); err != nil {
		if ctx.Err() == nil {
			d.log.Error().Str("event", "reboot_failed").Err(err).Msg("could not come back online")
			d.emit(Event{Kind: EventRebootFailed, Err: err})
		}
		return err
	}
	return nil
}
