package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

var errStoreNotFound = store.ErrNotFound

// ErrShuttingDown is returned by a method call cut short by Close.
var ErrShuttingDown = errors.New("hub: shutting down")

// ErrInvalidMethodName is returned for a method name that cannot be a topic
// level ("", or containing '/', '+', '#', '?' or NUL).
var ErrInvalidMethodName = errors.New("hub: invalid method name")

// call is a direct method waiting for the answer of an identity.
type call struct {
	device string            // identity key
	result chan methodResult // buffered, receives at most one value
	done   chan struct{}     // closed by cancel
}

type methodResult struct {
	status int
	body   []byte
	err    error // the answer was refused (hubapi.ErrResponseTooLarge)
}

func (c *call) cancel() {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
}

var _ hubapi.Devices = (*broker)(nil)

// Invoke sends a direct method to a device, or a module (deviceID is then
// its key "{deviceId}/{moduleId}"), and waits for its answer. It
// waits up to connectTimeout for the device to be connected and subscribed
// to method requests (hubapi.ErrDeviceNotOnline otherwise), then up to
// responseTimeout for the answer (hubapi.ErrTimeout). The request body is
// payload as given.
//
// Every call with a valid method name ends in one MethodAnswer event (the
// device's status and body, or the error); a MethodCall event comes before
// it only if the request was written to the device, so a call to a device
// that was not online shows as an answer with Error alone.
func (b *broker) Invoke(ctx context.Context, deviceID, method string, payload []byte, connectTimeout, responseTimeout time.Duration) (int, []byte, error) {
	if method == "" || strings.ContainsAny(method, "/+#?\x00") {
		return 0, nil, fmt.Errorf("invoke %q on %s: %w", method, describe(deviceID), ErrInvalidMethodName)
	}
	status, body, err := b.invoke(ctx, deviceID, method, payload, connectTimeout, responseTimeout)
	answer := events.Event{Kind: events.MethodAnswer, Method: method}
	if err != nil {
		answer.Error = methodError(err)
	} else {
		answer.Status = status
		answer.SetBody(body)
	}
	b.record(deviceID, answer)
	if err != nil {
		return 0, nil, fmt.Errorf("invoke %q on %s: %w", method, describe(deviceID), err)
	}
	return status, body, nil
}

// invoke is Invoke after the name check; it records the MethodCall event
// once the request is written.
func (b *broker) invoke(ctx context.Context, deviceID, method string, payload []byte, connectTimeout, responseTimeout time.Duration) (int, []byte, error) {
	rid := strconv.FormatUint(b.rid.Add(1), 10)
	topic := iothub.MethodRequestTopic(method, rid)

	cl, err := b.awaitSubscriber(ctx, deviceID, topic, connectTimeout)
	if err != nil {
		return 0, nil, err
	}
	if b.revoked(cl) {
		return 0, nil, hubapi.ErrDeviceNotOnline
	}

	c := &call{device: deviceID, result: make(chan methodResult, 1), done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, nil, ErrShuttingDown
	}
	b.pending[rid] = c
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pending, rid)
		b.mu.Unlock()
	}()

	// Recorded before the write: the device may answer, and its answer be
	// recorded, before send returns.
	req := events.Event{Kind: events.MethodCall, Method: method}
	req.SetBody(payload)
	b.record(deviceID, req)
	if ok, err := b.send(cl, topic, payload); err != nil || !ok {
		return 0, nil, hubapi.ErrDeviceNotOnline
	}
	b.log.Debug().Func(ident(deviceID)).Str("method", method).Str("rid", rid).Msg("method request sent")

	timer := time.NewTimer(responseTimeout)
	defer timer.Stop()
	select {
	case r := <-c.result:
		if r.err != nil {
			return 0, nil, r.err
		}
		return r.status, r.body, nil
	case <-timer.C:
		return 0, nil, hubapi.ErrTimeout
	case <-ctx.Done():
		if b.s.ctx.Err() != nil {
			return 0, nil, ErrShuttingDown
		}
		return 0, nil, ctx.Err()
	case <-c.done:
		return 0, nil, ErrShuttingDown
	}
}

// awaitSubscriber waits until the device is connected with a subscription
// matching topic, for at most connectTimeout.
func (b *broker) awaitSubscriber(ctx context.Context, deviceID, topic string, connectTimeout time.Duration) (*mqttClient, error) {
	var timeout <-chan time.Time
	if connectTimeout > 0 {
		t := time.NewTimer(connectTimeout)
		defer t.Stop()
		timeout = t.C
	}
	for {
		changed := b.changed()
		if cl, ok := b.current(deviceID); ok && subscribed(cl, topic) {
			return cl, nil
		}
		if timeout == nil {
			return nil, hubapi.ErrDeviceNotOnline
		}
		select {
		case <-changed:
		case <-timeout:
			return nil, hubapi.ErrDeviceNotOnline
		case <-b.s.ctx.Done():
			return nil, ErrShuttingDown
		case <-ctx.Done():
			if b.s.ctx.Err() != nil {
				return nil, ErrShuttingDown
			}
			return nil, ctx.Err()
		}
	}
}

// methodResponse completes the pending call rid if deviceID is the device
// it was sent to; other devices cannot answer for it. A payload over IoT
// Hub's 128 KB limit is dropped and fails the call at once with
// hubapi.ErrResponseTooLarge; the device stays connected.
func (b *broker) methodResponse(deviceID, rid string, status int, body []byte) {
	b.mu.Lock()
	c, ok := b.pending[rid]
	b.mu.Unlock()
	if !ok || c.device != deviceID {
		b.log.Debug().Func(ident(deviceID)).Str("rid", rid).Msg("method response matches no pending call")
		return
	}
	// body is kept as is: mochi decodes every packet from a buffer of its
	// own that it never reuses.
	r := methodResult{status: status, body: body}
	switch {
	case len(body) > iothub.MaxMethodPayload:
		b.log.Info().Func(ident(deviceID)).Str("rid", rid).Int("bytes", len(body)).Msg("method response over 128 KB dropped")
		r = methodResult{err: fmt.Errorf("%w (%d bytes)", hubapi.ErrResponseTooLarge, len(body))}
	case len(bytes.TrimSpace(body)) == 0:
		r.body = []byte("null")
	}
	select {
	case c.result <- r:
	default: // already answered
	}
}

// NotifyDesired sends a desired-properties patch to the device if it is
// connected and subscribed; otherwise the device reads the twin when it
// next connects.
//
// The store calls it for every desired change, whatever its source (REST,
// jobs, configurations) and whether the device is connected or not, so it
// also records the DesiredPatch event.
func (b *broker) NotifyDesired(deviceID string, version int64, patch []byte) {
	e := events.Event{Kind: events.DesiredPatch, Version: version}
	e.SetBody(patch)
	b.record(deviceID, e)
	cl, ok := b.current(deviceID)
	if !ok || b.revoked(cl) {
		return
	}
	sent, err := b.send(cl, iothub.DesiredPatchTopic(version), patch)
	switch {
	case err != nil:
		b.log.Debug().Err(err).Func(ident(deviceID)).Msg("write desired patch")
	case sent:
		b.log.Debug().Func(ident(deviceID)).Int64("version", version).Msg("desired patch sent")
	}
}

// storeErrorCode maps a store error to an IoT Hub error code and a message
// fit for the device.
func storeErrorCode(err error) (int, string) {
	var ve *store.ValidationError
	switch {
	case errors.As(err, &ve):
		return ve.Code, ve.Msg
	case errors.Is(err, store.ErrModuleNotFound):
		return iothub.CodeModuleNotFound, "module not found"
	case errors.Is(err, store.ErrNotFound):
		return iothub.CodeDeviceNotFound, "device not found"
	default:
		return iothub.CodeServerError, "internal error"
	}
}

func twinErrorBody(code int, msg string) []byte {
	b, _ := json.Marshal(struct {
		ErrorCode int    `json:"errorCode"`
		Message   string `json:"message"`
	}{code, msg})
	return b
}

func jsonValid(b []byte) bool { return json.Valid(b) }
