package mqtt

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
)

type twinResult struct {
	status  int
	version int64
	body    []byte
}

var errLinkDown = errors.New("connection lost before the hub answered")

// request publishes a twin request and waits for its correlated response.
func (c *Conn) request(ctx context.Context, s *session, topic func(rid string) string, body []byte) (twinResult, error) {
	rid := strconv.FormatUint(c.ridSeq.Add(1), 10)
	ch := make(chan twinResult, 1)
	c.mu.Lock()
	if c.pending == nil {
		c.pending = make(map[string]chan twinResult)
	}
	c.pending[rid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.forgetLocked(rid)
		c.mu.Unlock()
	}()
	if err := s.link.publish(topic(rid), body); err != nil {
		return twinResult{}, err
	}
	t := time.NewTimer(c.cfg.RequestTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-s.down:
		return twinResult{}, errLinkDown
	case <-s.dead:
		return twinResult{}, errLinkDown
	case <-t.C:
		return twinResult{}, fmt.Errorf("no twin response within %s", c.cfg.RequestTimeout)
	case <-ctx.Done():
		return twinResult{}, ctx.Err()
	}
}

// forgetLocked drops the twin request rid. A map keeps its table when
// emptied: an idle connection holds none.
func (c *Conn) forgetLocked(rid string) {
	delete(c.pending, rid)
	if len(c.pending) == 0 {
		c.pending = nil
	}
}

// syncTwin reads the twin after a connect and hands it to the handler.
func (c *Conn) syncTwin(ctx context.Context, s *session) {
	r, err := c.request(ctx, s, iothub.TwinGetTopic, []byte(" "))
	if ctx.Err() != nil {
		return
	}
	if err == nil && r.status != http.StatusOK {
		err = fmt.Errorf("hub answered status %d: %s", r.status, truncate(r.body))
	}
	if err != nil {
		c.warn().Str("event", "twin_get_failed").Err(err).Msg("could not read the twin after connecting")
		c.emit(device.Event{Kind: device.EventTwinGetFailed, Err: err})
		return
	}
	c.log.Debug().Str("event", "twin_synced").Msg("twin read after connect")
	c.mu.Lock()
	c.inbox = append(c.inbox, inbound{kind: inTwin, payload: r.body})
	c.startDispatchLocked()
	c.mu.Unlock()
}

func truncate(b []byte) string {
	const max = 200
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
