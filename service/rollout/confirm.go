package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// rebootTimeQuery selects the deviceId and reported rebootTime of the
// devices cond picks.
func rebootTimeQuery(cond string) string {
	return "SELECT deviceId, properties.reported." + service.RebootTimeProperty + " AS " + service.RebootTimeProperty +
		" FROM devices WHERE " + cond
}

// readBaseline reads the matching devices and their rebootTime, each
// device once, and sorts them by deviceId.
func (r *rollout) readBaseline(ctx context.Context) error {
	cond := r.opts.Condition
	seen := map[string]bool{}
	err := r.c.Query(ctx, rebootTimeQuery(cond), baselinePageSize, func(raw json.RawMessage) error {
		row, err := decodeRebootRow(raw)
		if err != nil {
			return err
		}
		if row.id == "" || seen[row.id] {
			return nil
		}
		seen[row.id] = true
		r.res.Devices = append(r.res.Devices, Device{DeviceID: row.id, PreviousRebootTime: row.rebootTime, HasPreviousTime: row.has})
		return nil
	})
	if err != nil {
		return fmt.Errorf("fleet reboot where %s: read devices and their rebootTime: %w", cond, err)
	}
	slices.SortFunc(r.res.Devices, func(a, b Device) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	return nil
}

// rebootRow is one row of a rebootTimeQuery.
type rebootRow struct {
	id         string
	rebootTime string
	has        bool // the device reported a rebootTime
}

// decodeRebootRow reads {"deviceId": ..., "rebootTime": ...}.
func decodeRebootRow(raw json.RawMessage) (rebootRow, error) {
	var row struct {
		DeviceID   string          `json:"deviceId"`
		RebootTime json.RawMessage `json:"rebootTime"`
	}
	if err := json.Unmarshal(raw, &row); err != nil {
		return rebootRow{}, fmt.Errorf("decode query row: %w", err)
	}
	rt, ok := rawRebootTime(row.RebootTime)
	return rebootRow{id: row.DeviceID, rebootTime: rt, has: ok}, nil
}

// rawRebootTime renders a rebootTime value as the service's single-device
// reboot does: the string itself, compact JSON otherwise; ok is false when
// absent or null.
func rawRebootTime(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) == nil {
		return buf.String(), true
	}
	return string(raw), true
}

// confirm reads the rebootTime of devs[pending] in batched queries (at
// most confirmParallel at a time) and marks the devices whose rebootTime
// differs from their baseline succeeded. It returns the first failed
// batch's error after applying what the others read.
func confirm(ctx context.Context, c *service.Client, devs []Device, pending []int) error {
	type batch struct {
		idx  []int
		seen map[string]rebootRow
		err  error
	}
	var batches []*batch
	for lo := 0; lo < len(pending); lo += ConfirmBatch {
		batches = append(batches, &batch{idx: pending[lo:min(lo+ConfirmBatch, len(pending))], seen: map[string]rebootRow{}})
	}
	sem := make(chan struct{}, confirmParallel)
	var wg sync.WaitGroup
	for _, b := range batches {
		ids := make([]string, len(b.idx))
		for k, i := range b.idx {
			ids[k] = devs[i].DeviceID
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			b.err = c.Query(ctx, rebootTimeQuery(service.IDListCondition(ids)), ConfirmBatch, func(raw json.RawMessage) error {
				row, err := decodeRebootRow(raw)
				if err == nil {
					b.seen[row.id] = row
				}
				return err
			})
		}()
	}
	wg.Wait()
	var firstErr error
	for _, b := range batches {
		if b.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("confirm reboots: %w", b.err)
		}
		for _, i := range b.idx {
			d := &devs[i]
			row, ok := b.seen[d.DeviceID]
			if !ok {
				continue
			}
			d.RebootTime, d.HasRebootTime = row.rebootTime, row.has
			if d.HasRebootTime && (!d.HasPreviousTime || d.RebootTime != d.PreviousRebootTime) {
				d.Outcome = OutcomeSucceeded
			}
		}
	}
	return firstErr
}

// undecided lists the indexes of devs without an outcome.
func undecided(devs []Device) []int {
	var out []int
	for i := range devs {
		if devs[i].Outcome == "" {
			out = append(out, i)
		}
	}
	return out
}

// applyRows records the job rows of devs[idx] and settles the outcomes a
// row decides: a device that answered >= 400 failed (even if its rebootTime
// changed meanwhile); one that was offline, no longer exists, or that the
// job never called failed at once (unless its new rebootTime was already
// seen). A row that failed while the call may have reached the device
// (method timeout, hub restart) keeps the device waiting for its
// rebootTime: it succeeds if one comes, and fails with the row's reason
// otherwise.
func applyRows(devs []Device, idx []int, rows map[string]iothub.DeviceJob) {
	for _, i := range idx {
		d := &devs[i]
		row, ok := rows[d.DeviceID]
		if !ok {
			if d.Outcome == "" {
				d.Outcome, d.Failure = OutcomeFailed, FailureNotFound
				d.Reason = "the job did not include the device (deleted since the query?)"
			}
			continue
		}
		applyRow(d, row)
	}
}

// applyRow records one device's job row; see applyRows.
func applyRow(d *Device, row iothub.DeviceJob) {
	d.RowStatus = row.Status
	if mr := row.MethodResponse(); mr != nil {
		d.Status, d.Payload = mr.Status, mr.Payload
	}
	d.ErrorCode = row.Error.CodeInt()
	desc := ""
	if row.Error != nil {
		desc = row.Error.Description
	}
	switch {
	case row.MethodResponse() != nil && d.Status >= 400:
		// Completed here; IoT Hub may also mark such a row failed.
		d.Outcome, d.Failure = OutcomeFailed, FailureDeviceStatus
		d.Reason = fmt.Sprintf("device answered with status %d", d.Status)
		if p := strings.TrimSpace(string(d.Payload)); p != "" && p != "null" {
			d.Reason += ": " + service.Excerpt(p)
		}
	case d.Outcome != "":
		// Already confirmed: the reboot happened whatever the row says.
	case row.Status == iothub.RowCompleted:
		// Answered < 400: waits for its rebootTime.
	case row.Status == iothub.RowFailed && d.ErrorCode == iothub.CodeDeviceNotOnline:
		d.Outcome, d.Reason = OutcomeOffline, withDesc("device not online", desc)
	case row.Status == iothub.RowFailed && d.ErrorCode == iothub.CodeDeviceNotFound:
		d.Outcome, d.Failure = OutcomeFailed, FailureNotFound
		d.Reason = withDesc("device not found", desc)
	case row.Status == iothub.RowCanceled:
		d.Outcome, d.Failure = OutcomeFailed, FailureJob
		d.Reason = withDesc("the job stopped before calling the device", desc)
	case row.Status == iothub.RowFailed && d.ErrorCode == iothub.CodeGatewayTimeout:
		d.laterFailure = FailureMethodTimeout
		d.laterReason = withDesc("device did not answer in time", desc)
	case row.Status == iothub.RowFailed:
		d.laterFailure = FailureJob
		what := "job row failed"
		if row.Error != nil && row.Error.Code != "" {
			what += " (error " + row.Error.Code + ")"
		}
		d.laterReason = withDesc(what, desc)
	default:
		d.Outcome, d.Failure = OutcomeFailed, FailureJob
		d.Reason = fmt.Sprintf("job row still %s after the job ended", row.Status)
	}
}

func withDesc(what, desc string) string {
	if desc = strings.TrimSpace(desc); desc != "" {
		return what + ": " + service.Excerpt(desc)
	}
	return what
}
