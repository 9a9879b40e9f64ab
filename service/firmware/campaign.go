// Package firmware runs a firmware-update campaign: it picks the devices a
// twin condition matches, splits them into waves, gives each wave an
// automatic device management configuration whose content is the desired
// firmware (the Azure firmware-update tutorial's twin schema), and follows
// every device's reported firmware until it is current on the new version,
// failed (error, rolledback) or the campaign's time is up. A wave whose
// failure rate passes the abort rule stops the waves after it.
//
// The configurations stay when the campaign ends, so the hub keeps the
// desired firmware for devices that connect later.
package firmware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/rollout"
)

// Hub is what a campaign needs of the service API; *service.Client has it.
type Hub interface {
	// Query runs a twin query, calling fn with each item (service.Client.Query).
	Query(ctx context.Context, q string, pageSize int, fn func(json.RawMessage) error) error
	// CreateConfiguration creates a configuration (PUT /configurations/{id}).
	CreateConfiguration(ctx context.Context, cfg iothub.Configuration) (iothub.Configuration, error)
}

var _ Hub = (*service.Client)(nil)

// The ways a campaign ends short of every device current on the new
// version; Run returns them wrapped with the counts.
var (
	ErrNoDevices  = errors.New("the condition matches no devices")
	ErrSomeFailed = errors.New("some devices failed the update")
	ErrTimedOut   = errors.New("the campaign timed out")
	ErrAborted    = errors.New("the campaign was aborted by the failure rule")
	// ErrOverridden: some devices are held on other firmware by a
	// configuration of higher priority, so the campaign's never applies.
	ErrOverridden = errors.New("some devices are held on other firmware by a configuration of higher priority")
)

// Options configures Run. Condition, Version, PackageURI and Checksum are
// required.
type Options struct {
	Condition  string // the body of a WHERE clause over twins
	Version    string // desired fwVersion
	PackageURI string // desired fwPackageURI (what the devices download)
	Checksum   string // desired fwPackageCheckValue: SHA-256, lowercase hex
	// Waves is the plan (rollout.WaveSizes); nil means one wave.
	Waves []rollout.Step
	// AbortFailureRate stops the campaign after a wave (other than the
	// last) whose (error + rolledback) / wave size exceeds it; negative
	// never stops.
	AbortFailureRate float64
	Timeout          time.Duration // whole campaign; default 30 min
	PollInterval     time.Duration // default 1 s
	Priority         int           // the configurations' priority
	// IDPrefix names the configurations PREFIX-wN (PREFIX-wN-K when a wave
	// needs several); default DefaultIDPrefix.
	IDPrefix string
	// Progress, if set, is called from Run's goroutine at each step.
	Progress func(Progress)
}

// Defaults.
const (
	DefaultTimeout      = 30 * time.Minute
	DefaultPollInterval = time.Second
)

func (o Options) withDefaults(now time.Time) (Options, error) {
	o.Condition = strings.TrimSpace(o.Condition)
	switch {
	case o.Condition == "":
		return o, errors.New("firmware campaign: empty condition")
	case strings.TrimSpace(o.Version) == "":
		return o, errors.New("firmware campaign: empty version")
	case strings.TrimSpace(o.PackageURI) == "":
		return o, errors.New("firmware campaign: empty package URI")
	}
	var err error
	if o.Checksum, err = ParseChecksum(o.Checksum); err != nil {
		return o, fmt.Errorf("firmware campaign: checksum: %w", err)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.IDPrefix == "" {
		o.IDPrefix = DefaultIDPrefix(now)
	}
	if err := ValidIDPrefix(o.IDPrefix); err != nil {
		return o, fmt.Errorf("firmware campaign: id prefix %w", err)
	}
	return o, nil
}

// Run runs the campaign:
//
//  1. One paged query reads the matching device ids (SELECT deviceId FROM
//     devices WHERE <condition>), sorted; they are split into waves.
//  2. Each wave reads its devices' reported firmware (the baseline), then
//     gets one configuration per part of its id list (splitIDs) with
//     targetCondition deviceId IN [...], content
//     properties.desired.firmware, the priority, label campaign=PREFIX and
//     metric queries per status.
//  3. Every PollInterval the wave's devices' reported firmware is read in
//     batched queries (PollBatch ids): a device is current once it reports
//     fwUpdateStatus current on the new version; else overridden while the
//     twin shows the wave's configuration only targeted, another applied (a
//     higher priority), and a desired version that is not the campaign's
//     (the device is told other firmware, so it never updates to this one,
//     and what it reports is not this campaign's); else failed once it
//     reports error or rolledback that differs from its baseline, or that
//     answers the desired firmware it has now (desired fwVersion is the new
//     version and lastFwUpdateStartTime is not before the hub's
//     $lastUpdated of desired firmware); pending otherwise: a failure left
//     from an earlier update does not count. The wave is done when none is
//     pending.
//  4. After a wave other than the last, a failure rate above
//     AbortFailureRate stops the campaign; so does the Timeout.
//
// The Result is returned whenever the devices were read; the error is nil
// only when every device is current on the new version, else it wraps
// ErrAborted, ErrTimedOut, ErrSomeFailed or ErrOverridden (in that order of precedence),
// ErrNoDevices, the context's error or a hub error.
func Run(ctx context.Context, hub Hub, opts Options) (*Result, error) {
	start := time.Now()
	opts, err := opts.withDefaults(start)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithDeadlineCause(ctx, start.Add(opts.Timeout), ErrTimedOut)
	defer cancel()
	c := &campaign{hub: hub, opts: opts, start: start}
	ids, err := c.deviceIDs(ctx)
	if err != nil {
		return nil, c.ctxErr(ctx, fmt.Errorf("firmware campaign: read the devices: %w", err))
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("firmware campaign: %w: %s", ErrNoDevices, opts.Condition)
	}
	sizes := rollout.WaveSizes(opts.Waves, len(ids))
	res := &Result{
		Condition: opts.Condition, Version: opts.Version, PackageURI: opts.PackageURI,
		Checksum: opts.Checksum, IDPrefix: opts.IDPrefix, Devices: len(ids), Planned: len(sizes),
	}
	c.res = res
	c.report(Progress{Stage: StageDevices, Devices: len(ids), Waves: len(sizes)})
	at := 0
	for n, size := range sizes {
		w := newWave(c, n+1, ids[at:at+size])
		at += size
		err = w.run(ctx)
		res.Waves = append(res.Waves, w.result())
		if err != nil {
			break
		}
		if n+1 < len(sizes) && opts.AbortFailureRate >= 0 {
			if wr := res.Waves[n]; wr.FailureRate > opts.AbortFailureRate {
				res.Aborted = true
				res.StopReason = fmt.Sprintf("wave %d: failure rate %.1f%% is above %.1f%%", n+1, 100*wr.FailureRate, 100*opts.AbortFailureRate)
				break
			}
		}
	}
	res.NotStarted = len(ids) - at
	res.finish(time.Since(start))
	if err != nil {
		err = c.ctxErr(ctx, err)
		if errors.Is(err, ErrTimedOut) {
			res.TimedOut = true
			res.StopReason = fmt.Sprintf("timed out after %s", opts.Timeout)
		}
	}
	if res.StopReason != "" {
		c.report(Progress{Stage: StageStopped, Devices: len(ids), Waves: len(sizes), Reason: res.StopReason})
	}
	return res, res.err(err)
}

// campaign is one Run's state.
type campaign struct {
	hub   Hub
	opts  Options
	start time.Time
	res   *Result
}

func (c *campaign) report(p Progress) {
	if c.opts.Progress != nil {
		p.Elapsed = time.Since(c.start)
		c.opts.Progress(p)
	}
}

// ctxErr turns an error caused by the campaign's deadline into ErrTimedOut.
func (c *campaign) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), ErrTimedOut) {
		return fmt.Errorf("%w after %s (%v)", ErrTimedOut, c.opts.Timeout, err)
	}
	return err
}

func (c *campaign) deviceIDs(ctx context.Context) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	q := "SELECT deviceId FROM devices WHERE " + c.opts.Condition
	err := c.hub.Query(ctx, q, 1000, func(raw json.RawMessage) error {
		var row struct {
			DeviceID string `json:"deviceId"`
		}
		if err := json.Unmarshal(raw, &row); err != nil || row.DeviceID == "" {
			return fmt.Errorf("unexpected query row %s", raw)
		}
		if !seen[row.DeviceID] {
			seen[row.DeviceID] = true
			ids = append(ids, row.DeviceID)
		}
		return nil
	})
	sort.Strings(ids)
	return ids, err
}

// configuration is the configuration of one part of a wave.
func (c *campaign) configuration(id string, ids []string) iothub.Configuration {
	in := func(cond string) string {
		return fmt.Sprintf("SELECT deviceId FROM devices WHERE configurations.[[%s]].status = 'Applied' AND %s", id, cond)
	}
	fw := "properties.reported." + iothub.FirmwareProperty + "."
	status := func(s string) string { return in(fw + iothub.FwUpdateStatus + " = " + service.QuoteString(s)) }
	return iothub.Configuration{
		ID:              id,
		SchemaVersion:   "1.0",
		Labels:          map[string]string{"campaign": c.opts.IDPrefix, "fwVersion": c.opts.Version},
		TargetCondition: service.IDListCondition(ids),
		Priority:        c.opts.Priority,
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{
			"properties.desired." + iothub.FirmwareProperty: map[string]any{
				iothub.FwVersion:           c.opts.Version,
				iothub.FwPackageURI:        c.opts.PackageURI,
				iothub.FwPackageCheckValue: c.opts.Checksum,
			},
		}},
		// IoT Hub takes at most five custom metrics per configuration.
		Metrics: &iothub.ConfigurationMetrics{Queries: map[string]string{
			"current": in(fw + iothub.FwUpdateStatus + " = 'current' AND " + fw + iothub.CurrentFwVersion + " = " + service.QuoteString(c.opts.Version)),
			"updating": in(fw + iothub.FwUpdateStatus + " IN ['" + iothub.FwStatusDownloading + "', '" + iothub.FwStatusVerifying +
				"', '" + iothub.FwStatusApplying + "', '" + iothub.FwStatusRebooting + "']"),
			"error":      status(iothub.FwStatusError),
			"rolledback": status(iothub.FwStatusRolledBack),
		}},
	}
}
