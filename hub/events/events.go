// Package events is the local hub's record of what just happened: a bounded
// ring of typed events (connections, method calls and answers, twin patches,
// device-to-cloud messages) that the dashboard shows live. Adding never
// blocks the hub: a reader that falls more than the ring's size behind loses
// the oldest events and is told how many.
package events

import (
	"encoding/json"
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultSize is how many events a hub keeps.
const DefaultSize = 10_000

// MaxBody is how many bytes of a payload an event keeps; longer bodies are
// cut there and marked Truncated (Bytes keeps the whole size). It bounds the
// ring to about DefaultSize × MaxBody of payload.
const MaxBody = 4 << 10

// Kind says what happened.
type Kind string

// The kinds of event.
const (
	// Connected: an identity's MQTT connection was accepted and recorded.
	Connected Kind = "connected"
	// Disconnected: it ended; Reason says why when the hub knows.
	Disconnected Kind = "disconnected"
	// MethodCall: a direct method was sent to the identity (Method, Body
	// the request payload).
	MethodCall Kind = "methodCall"
	// MethodAnswer: the call ended: Status and Body are the device's
	// answer, or Error says why there was none (offline, timeout).
	MethodAnswer Kind = "methodAnswer"
	// ReportedPatch: the identity patched its reported properties (Body;
	// Version is the new reported $version).
	ReportedPatch Kind = "reportedPatch"
	// DesiredPatch: the desired properties changed (Body is the patch the
	// device is sent; Version the new desired $version).
	DesiredPatch Kind = "desiredPatch"
	// Message: a device-to-cloud message (Body, Properties: its
	// application and system properties as the topic carried them).
	Message Kind = "message"
)

// Event is one thing that happened to a device or module.
type Event struct {
	Seq      uint64    `json:"seq"` // 1, 2, ... in the order Add saw them
	Time     time.Time `json:"time"`
	Kind     Kind      `json:"kind"`
	DeviceID string    `json:"deviceId"`
	ModuleID string    `json:"moduleId,omitempty"`

	Reason  string `json:"reason,omitempty"`  // Disconnected
	Method  string `json:"method,omitempty"`  // MethodCall, MethodAnswer
	Status  int    `json:"status,omitempty"`  // MethodAnswer
	Error   string `json:"error,omitempty"`   // MethodAnswer without an answer
	Version int64  `json:"version,omitempty"` // ReportedPatch, DesiredPatch

	// Body is the payload as text (valid UTF-8, at most MaxBody bytes);
	// Bytes its whole length.
	Body      string `json:"body,omitempty"`
	Bytes     int    `json:"bytes,omitempty"`
	Truncated bool   `json:"truncated,omitempty"`
	// Binary: the payload was not UTF-8 text; Body is left empty.
	Binary bool `json:"binary,omitempty"`

	Properties map[string]string `json:"properties,omitempty"` // Message
}

// SetBody keeps at most MaxBody bytes of b as the event's body.
func (e *Event) SetBody(b []byte) {
	e.Bytes = len(b)
	if !utf8.Valid(b) {
		e.Binary, e.Body = true, ""
		return
	}
	if len(b) > MaxBody {
		cut := MaxBody
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		b, e.Truncated = b[:cut], true
	}
	e.Body = string(b)
}

// JSON is the event as JSON.
func (e Event) JSON() []byte {
	b, _ := json.Marshal(e) // strings, ints, a time and a map of strings: cannot fail
	return b
}

// Ring holds the most recent events. The zero value is not usable; create
// one with New. A nil *Ring drops everything (Add is then a no-op), so that
// parts of the hub may record events unconditionally.
type Ring struct {
	now func() time.Time

	mu      sync.Mutex
	buf     []Event // len == size; slot of seq s is (s-1) % size
	next    uint64  // seq of the next event
	changed chan struct{}
	closed  bool
}

// New returns a ring that keeps the last size events (DefaultSize when size
// <= 0). now stamps events whose Time is zero (time.Now when nil).
func New(size int, now func() time.Time) *Ring {
	if size <= 0 {
		size = DefaultSize
	}
	if now == nil {
		now = time.Now
	}
	return &Ring{now: now, buf: make([]Event, size), next: 1, changed: make(chan struct{})}
}

// Add records e, giving it the next Seq (and a Time if it has none), and
// wakes every waiter. It never blocks on readers.
func (r *Ring) Add(e Event) {
	if r == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = r.now()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	e.Seq = r.next
	r.buf[(e.Seq-1)%uint64(len(r.buf))] = e
	r.next++
	close(r.changed)
	r.changed = make(chan struct{})
}

// Since returns up to max events (all when max <= 0) with Seq > after,
// oldest first, and lost: how many events after `after` the ring no longer
// holds (they came before the returned ones). Pass the last Seq a reader
// saw, or 0 for everything held.
func (r *Ring) Since(after uint64, max int) (evs []Event, lost uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := uint64(len(r.buf))
	first := uint64(1) // oldest seq held
	if r.next-1 > size {
		first = r.next - size
	}
	from := after + 1
	if from < first {
		lost = first - from
		from = first
	}
	for s := from; s < r.next; s++ {
		if max > 0 && len(evs) == max {
			break
		}
		evs = append(evs, r.buf[(s-1)%size])
	}
	return evs, lost
}

// Last is the Seq of the newest event, 0 when there is none yet.
func (r *Ring) Last() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next - 1
}

// Changed returns a channel closed at the next Add, or at Close. Readers
// take it before calling Since, so that no event slips between the two.
func (r *Ring) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Close wakes every waiter for good; later Adds are dropped. A closed ring
// still answers Since.
func (r *Ring) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	close(r.changed)
}

// Closed reports whether Close was called.
func (r *Ring) Closed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}
