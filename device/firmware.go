package device

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
)

// Firmware update, following the twin schema of the Azure firmware-update
// tutorial (see internal/iothub): a desired "firmware" object whose
// fwVersion differs from the running version starts an update; its steps
// are reported, each acknowledged by the hub before the next begins:
//
//	downloading → verifying → applying → rebooting → current (new version)
//
// The package is really downloaded (Downloader) and its SHA-256 compared
// with fwPackageCheckValue (ParseCheckValue); applying is simulated
// (Config.FirmwareApplyDelay); the reboot goes offline for the reboot delay
// exactly as rebootDevice does. A failure reports error (fwUpdateSubstatus
// says why) then rolledback, keeping the old currentFwVersion; the same
// desired object is not tried again (not even after a reconnect) until it
// changes.
//
// A newer desired firmware arriving during an update wins: an update still
// downloading, verifying or applying is abandoned at once (nothing is
// reported for it; the old version stays) and the newer one starts; an
// update already rebooting has installed its version and finishes first,
// then the newer one starts. A desired version equal to the running one
// reports current and does nothing else.
//
// The running version lives in memory: it survives the device's reboots
// (the process is the device), not a restart of the process.

// DefaultFirmwareVersion is the version a device runs unless
// Config.FirmwareVersion says otherwise; factoryReset returns to it.
const DefaultFirmwareVersion = "1.0.0"

// DefaultFirmwareApplyDelay is how long applying a package takes unless
// Config.FirmwareApplyDelay says otherwise.
const DefaultFirmwareApplyDelay = 2 * time.Second

// FirmwareReport is the reported "firmware" object. Every report carries
// all six fields, so the twin never mixes two updates.
type FirmwareReport struct {
	CurrentFwVersion      string `json:"currentFwVersion"`
	PendingFwVersion      string `json:"pendingFwVersion"`
	FwUpdateStatus        string `json:"fwUpdateStatus"`
	FwUpdateSubstatus     string `json:"fwUpdateSubstatus"`
	LastFwUpdateStartTime string `json:"lastFwUpdateStartTime"`
	LastFwUpdateEndTime   string `json:"lastFwUpdateEndTime"`
}

// desiredFirmware is the desired "firmware" object.
type desiredFirmware struct {
	Version    string `json:"fwVersion"`
	URI        string `json:"fwPackageURI"`
	CheckValue string `json:"fwPackageCheckValue"`
}

// fwJob is the update in progress.
type fwJob struct {
	version   string
	abandon   context.CancelFunc // ends the download, verify and apply steps
	committed bool               // rebooting: no longer abandoned for a newer version
}

// FirmwareVersion returns the version the device runs.
func (d *Device) FirmwareVersion() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fwCurrent
}

// setDesiredFirmware records the desired firmware object: from the full
// twin (replace) or a patch (merged into what is known, as desired patches
// are). It returns false when nothing about firmware changed.
func (d *Device) setDesiredFirmware(raw json.RawMessage, present, replace bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if replace {
		d.fwDesired = nil
	} else if !present {
		return false
	}
	var obj map[string]json.RawMessage
	if present && json.Unmarshal(raw, &obj) == nil && obj != nil {
		if d.fwDesired == nil || replace {
			d.fwDesired = map[string]json.RawMessage{}
		}
		for k, v := range obj {
			if string(v) == "null" {
				delete(d.fwDesired, k)
			} else {
				d.fwDesired[k] = v
			}
		}
	} else if present {
		d.fwDesired = nil // null or not an object: no desired firmware
	}
	d.fwSeq++
	if d.fwJob != nil && !d.fwJob.committed {
		if w, _ := d.wantedLocked(); w == nil || w.Version != d.fwJob.version {
			d.fwJob.abandon()
		}
	}
	d.startFirmwareLocked()
	return true
}

// wantedLocked decodes the desired firmware and the key that identifies it.
func (d *Device) wantedLocked() (*desiredFirmware, string) {
	if d.fwDesired == nil {
		return nil, ""
	}
	key, _ := json.Marshal(d.fwDesired) // sorted keys: a canonical form
	var w desiredFirmware
	for k, p := range map[string]*string{iothub.FwVersion: &w.Version, iothub.FwPackageURI: &w.URI, iothub.FwPackageCheckValue: &w.CheckValue} {
		if v, ok := d.fwDesired[k]; ok && json.Unmarshal(v, p) != nil {
			*p = strings.TrimSpace(string(v)) // a number or other JSON: its text
		}
	}
	return &w, string(key)
}

// startFirmwareLocked starts the firmware worker if there is work and none
// runs. d.mu is held.
func (d *Device) startFirmwareLocked() {
	if d.fwWorker || d.fwBlocked || d.stopped || d.runCtx == nil || d.fwSeq == d.fwDone {
		return
	}
	ctx, cancel := context.WithCancel(d.runCtx)
	d.fwWorker, d.fwStop, d.fwStopped = true, cancel, make(chan struct{})
	d.wg.Add(1)
	go d.firmwareWorker(ctx, cancel, d.fwStopped)
}

// firmwareWorker handles desired firmware until there is nothing new; it
// is the only goroutine that reports firmware, so reports keep their order.
func (d *Device) firmwareWorker(ctx context.Context, cancel context.CancelFunc, stopped chan struct{}) {
	defer d.wg.Done()
	defer cancel()
	for {
		d.mu.Lock()
		if d.fwSeq == d.fwDone || d.fwBlocked || ctx.Err() != nil {
			d.fwWorker = false
			close(stopped)
			d.fwStop, d.fwStopped = nil, nil // an idle device keeps neither
			d.mu.Unlock()
			return
		}
		d.fwDone = d.fwSeq
		want, key := d.wantedLocked()
		cur, failed, reported := d.fwCurrent, d.fwFailed, d.fwReported
		d.mu.Unlock()
		switch {
		case want != nil && key == failed:
			// Tried and rolled back: wait for a different desired object.
		case want == nil || want.Version == cur:
			if reported != iothub.FwStatusCurrent+" "+cur {
				d.reportFirmware(ctx, FirmwareReport{CurrentFwVersion: cur, FwUpdateStatus: iothub.FwStatusCurrent})
			}
		default:
			d.updateFirmware(ctx, *want, key, cur)
		}
	}
}

// updateFirmware runs one update from version from to want.
func (d *Device) updateFirmware(ctx context.Context, want desiredFirmware, key, from string) {
	soft, abandon := context.WithCancel(ctx)
	defer abandon()
	job := &fwJob{version: want.Version, abandon: abandon}
	d.mu.Lock()
	d.fwJob = job
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.fwJob = nil
		d.mu.Unlock()
	}()
	r := FirmwareReport{CurrentFwVersion: from, PendingFwVersion: want.Version, LastFwUpdateStartTime: d.stamp()}
	d.info().Str("event", "firmware_update").Str("from", from).Str("to", want.Version).Msg("firmware update requested")
	fail := func(why string) {
		r.FwUpdateStatus, r.FwUpdateSubstatus = iothub.FwStatusError, why
		d.reportFirmware(ctx, r)
		r.PendingFwVersion, r.FwUpdateStatus, r.LastFwUpdateEndTime = "", iothub.FwStatusRolledBack, d.stamp()
		d.reportFirmware(ctx, r)
		d.mu.Lock()
		d.fwFailed = key
		d.mu.Unlock()
	}
	abandoned := func() bool {
		if soft.Err() != nil && ctx.Err() == nil {
			d.info().Str("event", "firmware_abandoned").Str("version", want.Version).Msg("firmware update abandoned for a newer desired firmware")
			d.emit(Event{Kind: EventFirmwareAbandoned, Firmware: &FirmwareReport{CurrentFwVersion: from, PendingFwVersion: want.Version}})
		}
		return soft.Err() != nil
	}
	want.URI = strings.TrimSpace(want.URI)
	sum, err := ParseCheckValue(want.CheckValue)
	switch {
	case want.Version == "":
		fail("desired firmware has no " + iothub.FwVersion)
		return
	case want.URI == "":
		fail("desired firmware has no " + iothub.FwPackageURI)
		return
	case want.CheckValue == "":
		fail("desired firmware has no " + iothub.FwPackageCheckValue + " (the package's SHA-256)")
		return
	case err != nil:
		fail(err.Error())
		return
	}
	r.FwUpdateStatus = iothub.FwStatusDownloading
	d.reportFirmware(ctx, r)
	if abandoned() {
		return
	}
	pkg, err := d.dl.Fetch(soft, want.URI)
	if abandoned() {
		return
	}
	if err != nil {
		fail(err.Error())
		return
	}
	r.FwUpdateStatus = iothub.FwStatusVerifying
	d.reportFirmware(ctx, r)
	if abandoned() {
		return
	}
	if pkg.SHA256 != sum {
		fail(fmt.Sprintf("checksum mismatch: got %s, want %s", hex.EncodeToString(pkg.SHA256[:]), want.CheckValue))
		return
	}
	r.FwUpdateStatus = iothub.FwStatusApplying
	d.reportFirmware(ctx, r)
	if retry.Sleep(soft, d.fwApply); abandoned() {
		return
	}
	d.mu.Lock()
	job.committed = soft.Err() == nil
	d.mu.Unlock()
	if abandoned() {
		return
	}
	r.FwUpdateStatus = iothub.FwStatusRebooting
	d.reportFirmware(ctx, r)
	if err := d.firmwareReboot(ctx); err != nil {
		return
	}
	d.mu.Lock()
	d.fwCurrent = want.Version
	d.mu.Unlock()
	d.reportFirmware(ctx, FirmwareReport{CurrentFwVersion: want.Version, FwUpdateStatus: iothub.FwStatusCurrent,
		LastFwUpdateStartTime: r.LastFwUpdateStartTime, LastFwUpdateEndTime: d.stamp()})
}

// firmwareReboot goes offline for the reboot delay once no other reboot
// runs (a rebootDevice in progress finishes first).
func (d *Device) firmwareReboot(ctx context.Context) error {
	for {
		d.mu.Lock()
		free := !d.rebooting
		if free {
			d.rebooting = true
		}
		d.mu.Unlock()
		if free {
			break
		}
		if err := retry.Sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	defer func() {
		d.mu.Lock()
		if !d.stopped {
			d.rebooting = false
		}
		d.mu.Unlock()
	}()
	d.info().Str("event", "reboot_started").Str("delay", d.delay.String()).Msg("rebooting into the new firmware: going offline")
	d.emit(Event{Kind: EventRebootStarted, Delay: d.delay})
	return d.cycle(ctx, d.delay)
}

// reportFirmware reports r as the "firmware" property and emits it.
func (d *Device) reportFirmware(ctx context.Context, r FirmwareReport) {
	patch, _ := json.Marshal(map[string]FirmwareReport{iothub.FirmwareProperty: r})
	if err := d.conn.Report(ctx, patch); err != nil {
		if ctx.Err() == nil {
			d.log.Error().Str("event", "firmware_report_failed").Str("status", r.FwUpdateStatus).Err(err).Msg("could not report firmware")
		}
		return
	}
	d.mu.Lock()
	d.fwReported = r.FwUpdateStatus + " " + r.CurrentFwVersion
	d.mu.Unlock()
	ev := d.info()
	if r.FwUpdateStatus == iothub.FwStatusError {
		ev = d.warn()
	}
	ev.Str("event", "firmware").Str("status", r.FwUpdateStatus).Str("current", r.CurrentFwVersion).
		Str("pending", r.PendingFwVersion).Str("substatus", r.FwUpdateSubstatus).Msg("firmware " + r.FwUpdateStatus)
	d.emit(Event{Kind: EventFirmware, Firmware: &r})
}

func (d *Device) stamp() string { return d.now().UTC().Format(time.RFC3339Nano) }

// firmwareOf picks the "firmware" member of a JSON object.
func firmwareOf(doc map[string]json.RawMessage) (json.RawMessage, bool) {
	raw, ok := doc[iothub.FirmwareProperty]
	return bytes.TrimSpace(raw), ok
}

// redactPackageURI returns doc (a desired document or patch) with the
// query and user information of firmware.fwPackageURI replaced, for logs:
// a storage URI's query often holds a SAS token.
func redactPackageURI(doc []byte) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(doc, &m) != nil {
		return doc
	}
	var fw map[string]json.RawMessage
	var uri string
	if json.Unmarshal(m[iothub.FirmwareProperty], &fw) != nil || json.Unmarshal(fw[iothub.FwPackageURI], &uri) != nil {
		return doc
	}
	u, err := url.Parse(uri)
	switch {
	case err != nil:
		uri = "(not a URL)"
	case u.RawQuery == "" && u.User == nil:
		return doc
	default:
		u.User = nil
		u.RawQuery = "REDACTED"
		uri = u.String()
	}
	fw[iothub.FwPackageURI], _ = json.Marshal(uri)
	m[iothub.FirmwareProperty], _ = json.Marshal(fw)
	out, _ := json.Marshal(m)
	return out
}
