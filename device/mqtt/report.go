package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
)

type report struct {
	patch []byte
	done  chan error // buffered 1
}

// Report implements device.Conn.
func (c *Conn) Report(ctx context.Context, patch []byte) error {
	done, err := c.Queue(patch)
	if err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// Queue appends a reported-properties patch to the send queue and returns at
// once. The channel yields nil when the hub acknowledged the patch, or the
// hub's refusal. Patches are sent in the order they were queued; while the
// link is down they wait.
func (c *Conn) Queue(patch []byte) (<-chan error, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(patch, &obj); err != nil {
		return nil, fmt.Errorf("reported properties must be a JSON object: %w", err)
	}
	select {
	case <-c.done:
		return nil, ErrClosed
	default:
	}
	r := &report{patch: append([]byte(nil), patch...), done: make(chan error, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, r)
	c.startReporterLocked()
	c.mu.Unlock()
	return r.done, nil
}

// startReporterLocked starts the reporter if Run runs, patches are queued
// and none is running.
func (c *Conn) startReporterLocked() {
	if c.reporting || c.runCtx == nil || c.runCtx.Err() != nil || len(c.queue) == 0 {
		return
	}
	c.reporting = true
	ctx := c.runCtx
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.reporter(ctx)
	}()
}

// reporter sends queued reported patches one at a time, in order, until the
// queue is empty. A patch leaves the queue only when the hub acknowledged it
// or refused it for good.
func (c *Conn) reporter(ctx context.Context) {
	defer func() {
		c.mu.Lock()
		c.reporting = false
		c.startReporterLocked() // a patch queued as this one was stopping
		c.mu.Unlock()
	}()
	for {
		c.mu.Lock()
		var r *report
		if len(c.queue) > 0 {
			r = c.queue[0]
		} else {
			c.queue = nil
		}
		c.mu.Unlock()
		if r == nil || ctx.Err() != nil {
			return
		}
		s := c.waitSession(ctx)
		if s == nil {
			return
		}
		res, err := c.request(ctx, s, iothub.TwinPatchReportedTopic, r.patch)
		if ctx.Err() != nil {
			return
		}
		var final error
		switch {
		case err != nil:
			c.warn().Str("event", "report_retry").Err(err).Msg("reported properties not acknowledged, will resend")
			c.emit(device.Event{Kind: device.EventReportRetry, Err: err})
			c.pause(ctx, s)
			continue
		case res.status/100 == 2:
		case res.status == http.StatusTooManyRequests || res.status >= 500:
			c.warn().Str("event", "report_retry").Int("status", res.status).Msg("hub busy, will resend reported properties")
			c.emit(device.Event{Kind: device.EventReportRetry, Status: res.status})
			c.pause(ctx, s)
			continue
		default:
			final = fmt.Errorf("hub refused reported properties: status %d: %s", res.status, truncate(res.body))
			c.log.Error().Str("event", "report_rejected").Int("status", res.status).Msg("reported properties refused")
			c.emit(device.Event{Kind: device.EventReportRejected, Status: res.status, Err: final})
		}
		c.mu.Lock()
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.mu.Unlock()
		r.done <- final
		if final == nil {
			c.log.Debug().Str("event", "reported").Int64("version", res.version).Msg("reported properties acknowledged")
			c.emit(device.Event{Kind: device.EventReported, Version: res.version})
		}
	}
}

// pause waits a backoff step before a resend, or until the session ends.
func (c *Conn) pause(ctx context.Context, s *session) {
	t := time.NewTimer(c.cfg.Backoff(1))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-s.down:
	case <-t.C:
	}
}
