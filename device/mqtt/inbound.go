package mqtt

import (
	"context"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
)

type inboundKind int

const (
	inMethod inboundKind = iota + 1
	inDesired
	inTwin
)

type inbound struct {
	kind    inboundKind
	name    string
	rid     string
	version int64
	payload []byte
}

// route is the link's message handler for every topic. It never blocks: method
// calls and desired patches are queued for dispatch, twin responses are
// handed to the waiting request.
func (c *Conn) route(topic string, payload []byte) {
	if name, rid, ok := iothub.ParseMethodRequestTopic(topic); ok {
		c.push(inbound{kind: inMethod, name: name, rid: rid, payload: payload}, true)
		return
	}
	if status, rid, version, ok := iothub.ParseTwinResponseTopic(topic); ok {
		c.mu.Lock()
		ch := c.pending[rid]
		c.forgetLocked(rid)
		c.mu.Unlock()
		if ch != nil {
			ch <- twinResult{status: status, version: version, body: payload} // buffered 1, one sender
		}
		return
	}
	if version, ok := iothub.ParseDesiredPatchTopic(topic); ok {
		c.push(inbound{kind: inDesired, version: version, payload: payload}, false)
		return
	}
	c.log.Debug().Str("event", "unexpected_message").Str("topic", topic).Msg("message on an unknown topic ignored")
}

func (c *Conn) push(in inbound, method bool) {
	c.mu.Lock()
	if method {
		c.inflight++
		// Nothing queued or being delivered ahead of it: start the call
		// at once, as the dispatcher would, without starting one.
		if !c.dispatching && len(c.inbox) == 0 && c.runCtx != nil && c.runCtx.Err() == nil {
			ctx, h := c.runCtx, c.handler
			c.wg.Add(1)
			c.mu.Unlock()
			go func() {
				defer c.wg.Done()
				c.serveMethod(ctx, h, in)
			}()
			return
		}
	}
	c.inbox = append(c.inbox, in)
	c.startDispatchLocked()
	c.mu.Unlock()
}

// startDispatchLocked starts the dispatcher if Run runs and none is running.
func (c *Conn) startDispatchLocked() {
	if c.dispatching || c.runCtx == nil || c.runCtx.Err() != nil || len(c.inbox) == 0 {
		return
	}
	c.dispatching = true
	ctx, h := c.runCtx, c.handler
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.dispatch(ctx, h)
	}()
}

// dispatch delivers the inbox to h until it is empty: methods each on their
// own goroutine, twin documents and desired patches in order on this one.
func (c *Conn) dispatch(ctx context.Context, h device.Handler) {
	for {
		c.mu.Lock()
		if len(c.inbox) == 0 || ctx.Err() != nil {
			c.dispatching = false
			if len(c.inbox) == 0 {
				c.inbox = nil // let a burst's backing array go
			}
			c.mu.Unlock()
			return
		}
		in := c.inbox[0]
		c.inbox[0] = inbound{}
		c.inbox = c.inbox[1:]
		c.mu.Unlock()
		switch in.kind {
		case inMethod:
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.serveMethod(ctx, h, in)
			}()
		case inDesired:
			h.HandleDesired(in.version, in.payload)
		case inTwin:
			h.HandleTwin(in.payload)
		}
	}
}

func (c *Conn) serveMethod(ctx context.Context, h device.Handler, in inbound) {
	defer func() {
		c.mu.Lock()
		c.inflight--
		if c.drained != nil { // drain waits
			select {
			case c.drained <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
	}()
	status, body := h.HandleMethod(ctx, device.MethodRequest{Name: in.name, Payload: in.payload})
	if err := c.publish(ctx, iothub.MethodResponseTopic(status, in.rid), body); err != nil && ctx.Err() == nil {
		c.warn().Str("event", "method_response_failed").Str("method", in.name).Err(err).Msg("method answer not sent")
		c.emit(device.Event{Kind: device.EventMethodResponseFailed, Method: in.name, Err: err})
	}
}

// publish sends a QoS 0 message on the live session, waiting for one if
// the link is down, at most maxResponseWait.
func (c *Conn) publish(ctx context.Context, topic string, body []byte) error {
	// The common case, a live session, needs no timer.
	if s, _ := c.current(); s != nil {
		if err := s.link.publish(topic, body); err == nil || ctx.Err() != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, maxResponseWait)
	defer cancel()
	for {
		s := c.waitSession(ctx)
		if s == nil {
			return ctx.Err()
		}
		err := s.link.publish(topic, body)
		if err == nil || ctx.Err() != nil {
			return err
		}
		// The client is going down: wait for the loop to notice, then retry.
		select {
		case <-ctx.Done():
			return err
		case <-s.down:
		}
	}
}
