package firmware

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// Outcome is where a device stands in the campaign.
type Outcome string

const (
	OutcomeCurrent Outcome = "current" // reports the new version as current
	OutcomeFailed  Outcome = "failed"  // reported error or rolledback in this campaign
	OutcomePending Outcome = "pending" // neither (yet)
	// OutcomeOverridden: a configuration of higher priority applies to the
	// device and tells it another version; it stays so until that one
	// is deleted or ranks lower.
	OutcomeOverridden Outcome = "overridden"
)

// StatusWaiting is the status shown for a device whose reported firmware
// has not changed since its wave began (or that reports none).
const StatusWaiting = "waiting"

// Device is one device of the campaign, as last read.
type Device struct {
	DeviceID       string  `json:"deviceId"`
	Wave           int     `json:"wave"`
	ConfigID       string  `json:"configurationId"`
	Outcome        Outcome `json:"outcome"`
	Status         string  `json:"fwUpdateStatus"` // StatusWaiting or the reported fwUpdateStatus
	Substatus      string  `json:"fwUpdateSubstatus,omitempty"`
	CurrentVersion string  `json:"currentFwVersion,omitempty"`
	// OverriddenBy is the configuration that applies instead of the
	// wave's (OutcomeOverridden), and DesiredVersion the version it sets.
	OverriddenBy   string `json:"overriddenBy,omitempty"`
	DesiredVersion string `json:"desiredFwVersion,omitempty"`
	baseline       []byte // reported firmware when the wave began, compacted; nil: none
}

// reportedFirmware is the reported firmware object (the tutorial's schema).
type reportedFirmware struct {
	CurrentFwVersion      string `json:"currentFwVersion"`
	FwUpdateStatus        string `json:"fwUpdateStatus"`
	FwUpdateSubstatus     string `json:"fwUpdateSubstatus"`
	LastFwUpdateStartTime string `json:"lastFwUpdateStartTime"`
}

// desiredSection is what a progress query reads of the desired properties:
// the firmware version and when the hub last set the firmware object.
type desiredSection struct {
	Firmware struct {
		FwVersion string `json:"fwVersion"`
	} `json:"firmware"`
	Metadata struct {
		Firmware struct {
			LastUpdated string `json:"$lastUpdated"`
		} `json:"firmware"`
	} `json:"$metadata"`
}

// failedOnDesired reports whether a failure report is the device's answer
// to the desired firmware it has now: the desired version is the campaign's
// and the failed attempt started after the hub last set it. It catches a
// device that failed on this version before its wave's baseline was read
// (for instance because a configuration of higher priority gave it the
// version with another package).
func failedOnDesired(fw reportedFirmware, des desiredSection, version string) bool {
	if des.Firmware.FwVersion != version {
		return false
	}
	started, err1 := time.Parse(time.RFC3339Nano, fw.LastFwUpdateStartTime)
	set, err2 := time.Parse(time.RFC3339Nano, des.Metadata.Firmware.LastUpdated)
	return err1 == nil && err2 == nil && !started.Before(set)
}

// wave is one wave: its devices and configurations.
type wave struct {
	c       *campaign
	n       int
	devs    []Device
	parts   [][]string
	cfgIDs  []string
	created int // configurations created
	start   time.Time
	dur     time.Duration
	index   map[string]int
}

func newWave(c *campaign, n int, ids []string) *wave {
	w := &wave{c: c, n: n, start: time.Now(), index: make(map[string]int, len(ids))}
	w.parts = splitIDs(ids, MaxConditionLength)
	for k, part := range w.parts {
		id := fmt.Sprintf("%s-w%d", c.opts.IDPrefix, n)
		if len(w.parts) > 1 {
			id += fmt.Sprintf("-%d", k+1)
		}
		w.cfgIDs = append(w.cfgIDs, id)
		for _, d := range part {
			w.index[d] = len(w.devs)
			w.devs = append(w.devs, Device{DeviceID: d, Wave: n, ConfigID: id, Outcome: OutcomePending, Status: StatusWaiting})
		}
	}
	return w
}

// run reads the baseline, creates the configurations and follows the
// devices until none is pending.
func (w *wave) run(ctx context.Context) error {
	defer func() { w.dur = time.Since(w.start) }()
	if err := w.poll(ctx, true); err != nil {
		return fmt.Errorf("wave %d: read the devices' firmware: %w", w.n, err)
	}
	for k, part := range w.parts {
		if _, err := w.c.hub.CreateConfiguration(ctx, w.c.configuration(w.cfgIDs[k], part)); err != nil {
			return fmt.Errorf("wave %d: create configuration %s: %w", w.n, w.cfgIDs[k], err)
		}
		w.created++
	}
	w.report(StageWaveStarted, nil)
	t := time.NewTicker(w.c.opts.PollInterval)
	defer t.Stop()
	for w.counts().Pending > 0 {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
		err := w.poll(ctx, false)
		if err != nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
		w.report(StageWavePolled, err)
	}
	w.report(StageWaveDone, nil)
	return nil
}

// poll reads the reported firmware of the wave's devices that are not
// current yet, in batches; baseline marks the first read.
func (w *wave) poll(ctx context.Context, baseline bool) error {
	var ids []string
	for _, d := range w.devs {
		if d.Outcome != OutcomeCurrent {
			ids = append(ids, d.DeviceID)
		}
	}
	for _, batch := range chunk(ids, PollBatch) {
		q := "SELECT deviceId, properties.reported." + iothub.FirmwareProperty + " AS firmware, properties.desired AS desired, configurations FROM devices WHERE " + service.IDListCondition(batch)
		err := w.c.hub.Query(ctx, q, 0, func(raw json.RawMessage) error {
			var row struct {
				DeviceID       string                              `json:"deviceId"`
				Firmware       json.RawMessage                     `json:"firmware"`
				Desired        json.RawMessage                     `json:"desired"`
				Configurations map[string]iothub.TwinConfiguration `json:"configurations"`
			}
			if err := json.Unmarshal(raw, &row); err != nil {
				return fmt.Errorf("unexpected query row %s", raw)
			}
			if i, ok := w.index[row.DeviceID]; ok {
				var des desiredSection
				_ = json.Unmarshal(row.Desired, &des) // absent or not an object: nothing desired
				w.devs[i].update(row.Firmware, des, row.Configurations, baseline, w.c.opts.Version)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// overriddenBy returns the configuration that applies to a twin in place of
// own, the wave's configuration, which is only targeted there; "" when own
// applies or the hub has not evaluated it yet.
//
// The statuses compare without case: the local hub writes them as the
// documentation's metric queries spell them (Targeted, Applied), and a
// cloud hub's spelling in twin JSON has not been checked here.
func overriddenBy(cfgs map[string]iothub.TwinConfiguration, own string) string {
	if !strings.EqualFold(cfgs[own].Status, iothub.ConfigurationTargeted) {
		return ""
	}
	winner := ""
	for id, c := range cfgs {
		if strings.EqualFold(c.Status, iothub.ConfigurationApplied) && (winner == "" || id < winner) {
			winner = id
		}
	}
	return winner
}

// update applies one read of a device's reported firmware, desired firmware
// and configuration statuses.
func (d *Device) update(raw json.RawMessage, des desiredSection, cfgs map[string]iothub.TwinConfiguration, baseline bool, version string) {
	var compact []byte
	var fw reportedFirmware
	if t := bytes.TrimSpace(raw); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		var b bytes.Buffer
		if json.Compact(&b, t) == nil {
			compact = b.Bytes()
		}
		_ = json.Unmarshal(t, &fw) // not an object: no firmware reported
	}
	if baseline {
		d.baseline = compact
	}
	changed := !bytes.Equal(compact, d.baseline)
	d.CurrentVersion, d.Substatus = fw.CurrentFwVersion, fw.FwUpdateSubstatus
	d.OverriddenBy, d.DesiredVersion = "", ""
	by := overriddenBy(cfgs, d.ConfigID)
	switch {
	case fw.FwUpdateStatus == iothub.FwStatusCurrent && fw.CurrentFwVersion == version:
		d.Outcome, d.Status = OutcomeCurrent, fw.FwUpdateStatus
	case by != "" && des.Firmware.FwVersion != version:
		// Told another version: what it reports, failures included, is
		// that configuration's business, not this campaign's.
		d.Outcome, d.OverriddenBy, d.DesiredVersion = OutcomeOverridden, by, des.Firmware.FwVersion
		d.Status = fw.FwUpdateStatus
		if d.Status == "" || !changed {
			d.Status = StatusWaiting
		}
	case (fw.FwUpdateStatus == iothub.FwStatusError || fw.FwUpdateStatus == iothub.FwStatusRolledBack) &&
		(changed || failedOnDesired(fw, des, version)):
		d.Outcome, d.Status = OutcomeFailed, fw.FwUpdateStatus
	case !changed:
		d.Outcome, d.Status = OutcomePending, StatusWaiting
	default:
		d.Outcome, d.Status = OutcomePending, fw.FwUpdateStatus
		if d.Status == "" {
			d.Status = StatusWaiting
		}
	}
}

func (w *wave) counts() Counts {
	var c Counts
	for _, d := range w.devs {
		c.add(d)
	}
	return c
}

func (w *wave) report(s Stage, err error) {
	w.c.report(Progress{
		Stage: s, Devices: w.c.res.Devices, Wave: w.n, Waves: w.c.res.Planned, WaveSize: len(w.devs),
		ConfigIDs: w.cfgIDs[:w.created], Counts: w.counts(), Err: err,
	})
}

func (w *wave) result() WaveResult {
	wr := WaveResult{
		Wave: w.n, ConfigIDs: append([]string(nil), w.cfgIDs[:w.created]...), Size: len(w.devs),
		Counts: w.counts(), Duration: w.dur, devices: w.devs,
	}
	if wr.Size > 0 {
		wr.FailureRate = float64(wr.Counts.Failed) / float64(wr.Size)
	}
	return wr
}
