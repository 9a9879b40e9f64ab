package device

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// FactoryResetMethod is the direct method that resets the device to its
// factory state.
const FactoryResetMethod = "factoryReset"

// FactoryResetTimeProperty is the reported property that carries the time
// of the last factory reset (RFC 3339 UTC with nanoseconds, like
// rebootTime).
const FactoryResetTimeProperty = "factoryResetTime"

// FactoryResetResponse is the payload of a successful factoryReset answer.
type FactoryResetResponse struct {
	Message      string `json:"message"`
	DelaySeconds int    `json:"delaySeconds"`
}

// handleFactoryReset answers first, then (on a goroutine Run awaits) resets
// the device: an update in progress is abandoned, the firmware returns to
// the factory version (Config.FirmwareVersion) with firmware reported as
// current on it and every other firmware field empty, rebootTime is
// removed from the reported properties, a rolled-back desired firmware may
// be tried again, and the device goes offline for the reboot delay like
// rebootDevice. Back online it reports factoryResetTime. A desired
// firmware still in the twin then starts an update again, as automatic
// device management would reapply it. The payload is rebootDevice's
// ({"delaySeconds": N}, null or {}); a reset or reboot in progress gives 409.
func (d *Device) handleFactoryReset(_ context.Context, payload json.RawMessage) (int, any) {
	delay, err := d.parseRebootPayload(payload)
	if err != nil {
		return http.StatusBadRequest, errorBody{Error: err.Error(), Method: FactoryResetMethod}
	}
	d.mu.Lock()
	ctx, busy := d.runCtx, d.rebooting
	if ctx == nil {
		busy = true
	}
	if !busy {
		d.info().Str("event", "factory_reset_accepted").Str("delay", delay.String()).Msg("factory reset requested")
		d.rebooting, d.fwBlocked = true, true
		if d.fwStop != nil {
			d.fwStop()
		}
		stopped := d.fwStopped
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if stopped != nil {
				<-stopped // the worker ends at once: its context is cancelled
			}
			d.factoryReset(ctx, delay)
			d.mu.Lock()
			d.fwBlocked = false
			if ctx.Err() == nil {
				d.rebooting = false
				d.startFirmwareLocked()
			}
			d.mu.Unlock()
		}()
	}
	d.mu.Unlock()
	if busy {
		return http.StatusConflict, errorBody{Error: "reboot or factory reset already in progress", Method: FactoryResetMethod}
	}
	return http.StatusOK, FactoryResetResponse{
		Message:      fmt.Sprintf("factory reset: firmware %s restored, offline for %s, then %s is reported", d.fwFactory, delay, FactoryResetTimeProperty),
		DelaySeconds: int(delay / time.Second),
	}
}

func (d *Device) factoryReset(ctx context.Context, delay time.Duration) {
	d.mu.Lock()
	d.fwCurrent, d.fwFailed, d.fwReported = d.fwFactory, "", ""
	d.fwSeq++ // the desired firmware is looked at again afterwards
	d.mu.Unlock()
	r := FirmwareReport{CurrentFwVersion: d.fwFactory, FwUpdateStatus: iothub.FwStatusCurrent}
	patch, _ := json.Marshal(map[string]any{iothub.FirmwareProperty: r, RebootTimeProperty: nil})
	if err := d.conn.Report(ctx, patch); err != nil {
		if ctx.Err() == nil {
			d.log.Error().Str("event", "factory_reset_failed").Err(err).Msg("could not clear the reported state")
		}
		return
	}
	d.mu.Lock()
	d.fwReported = r.FwUpdateStatus + " " + r.CurrentFwVersion
	d.mu.Unlock()
	d.emit(Event{Kind: EventFirmware, Firmware: &r})
	d.info().Str("event", "reboot_started").Str("delay", delay.String()).Msg("factory reset: going offline")
	d.emit(Event{Kind: EventRebootStarted, Delay: delay})
	if d.cycle(ctx, delay) != nil {
		return
	}
	at := d.stamp()
	patch, _ = json.Marshal(map[string]string{FactoryResetTimeProperty: at})
	if err := d.conn.Report(ctx, patch); err != nil {
		if ctx.Err() == nil {
			d.log.Error().Str("event", "factory_reset_failed").Err(err).Msg("could not report " + FactoryResetTimeProperty)
		}
		return
	}
	d.info().Str("event", "factory_reset").Str(FactoryResetTimeProperty, at).Msg("factory reset complete, " + FactoryResetTimeProperty + " reported")
	d.emit(Event{Kind: EventFactoryReset, ResetTime: at})
}
