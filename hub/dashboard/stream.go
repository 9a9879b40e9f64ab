package dashboard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub/events"
)

// Stream timing.
const (
	// Heartbeat is how often an idle stream sends a comment, so that
	// proxies and browsers keep it open and a gone client is noticed.
	Heartbeat = 15 * time.Second
	// streamWriteTimeout bounds each write (batch) to a stream.
	streamWriteTimeout = 30 * time.Second
	// batchSize is how many events one read of the ring takes; they are
	// written and flushed together.
	batchSize = 512
	// replayMax bounds the held events a device page's stream starts with.
	replayMax = 500
	// jobsPoll is how often /stream/jobs looks at the store.
	jobsPoll = 500 * time.Millisecond
	// retryMillis is the reconnection delay the streams ask browsers for.
	retryMillis = 2000
)

// sse writes server-sent events through a buffer, flushed once per batch
// with a fresh write deadline.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	b  *bufio.Writer
}

func startSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s := &sse{w: w, rc: http.NewResponseController(w), b: bufio.NewWriterSize(w, 32<<10)}
	// A stream reads nothing more from the client: the server's read
	// timeout must not end it.
	_ = s.rc.SetReadDeadline(time.Time{})
	s.b.WriteString("retry: " + strconv.Itoa(retryMillis) + "\n\n")
	return s
}

// event queues one event; data must hold no newline (compact JSON).
func (s *sse) event(id, kind string, data []byte) {
	if id != "" {
		s.b.WriteString("id: " + id + "\n")
	}
	s.b.WriteString("event: " + kind + "\ndata: ")
	s.b.Write(data)
	s.b.WriteString("\n\n")
}

func (s *sse) comment(text string) { s.b.WriteString(": " + text + "\n\n") }

// flush sends what is queued; false when the client is gone.
func (s *sse) flush() bool {
	_ = s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if err := s.b.Flush(); err != nil {
		return false
	}
	return s.rc.Flush() == nil
}

// eventFilter selects the events of a device (and its modules), or of one
// module; the zero value selects everything.
type eventFilter struct{ device, module string }

func (f eventFilter) match(e *events.Event) bool {
	if f.device == "" {
		return true
	}
	if e.DeviceID != f.device {
		return false
	}
	return f.module == "" || e.ModuleID == f.module
}

// replayStart is where a device page's stream starts without Last-Event-ID:
// so that it shows up to replayMax of the held events of that device.
func (s *Server) replayStart(f eventFilter) uint64 {
	evs, _ := s.cfg.Events.Since(0, 0)
	n := 0
	for i := len(evs) - 1; i >= 0; i-- {
		if f.match(&evs[i]) {
			if n++; n == replayMax {
				return evs[i].Seq - 1
			}
		}
	}
	if len(evs) == 0 {
		return s.cfg.Events.Last()
	}
	return evs[0].Seq - 1
}

// streamEvents serves /stream/events[?device=ID[&module=MID]]: the ring's
// events from Last-Event-ID (or, for a device, its held events; else from
// now) until the ring closes, the dashboard's context ends or the client
// goes.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request, _ *session) {
	q := r.URL.Query()
	f := eventFilter{device: q.Get("device"), module: q.Get("module")}
	if f.module != "" && f.device == "" {
		http.Error(w, "module needs device", http.StatusBadRequest)
		return
	}
	ring := s.cfg.Events
	var last uint64
	if v := strings.TrimSpace(r.Header.Get("Last-Event-ID")); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			http.Error(w, "Last-Event-ID must be an event number", http.StatusBadRequest)
			return
		}
		last = n
	} else if f.device != "" {
		last = s.replayStart(f)
	} else {
		last = ring.Last()
	}
	out := startSSE(w)
	if !out.flush() {
		return
	}
	ctx := r.Context()
	beat := time.NewTicker(Heartbeat)
	defer beat.Stop()
	var buf bytes.Buffer
	for {
		changed := ring.Changed()
		evs, lost := ring.Since(last, batchSize)
		if lost > 0 {
			out.event("", "lost", []byte(`{"lost":`+strconv.FormatUint(lost, 10)+`}`))
		}
		for i := range evs {
			e := &evs[i]
			last = e.Seq
			if !f.match(e) {
				continue
			}
			buf.Reset()
			_ = json.NewEncoder(&buf).Encode(e) // an Event always encodes
			out.event(strconv.FormatUint(e.Seq, 10), string(e.Kind), bytes.TrimRight(buf.Bytes(), "\n"))
		}
		if out.b.Buffered() > 0 && !out.flush() {
			return
		}
		if len(evs) == batchSize {
			continue // more are waiting
		}
		if ring.Closed() {
			return
		}
		select {
		case <-changed:
		case <-beat.C:
			out.comment("heartbeat")
			if !out.flush() {
				return
			}
		case <-ctx.Done():
			return
		case <-s.cfg.Context.Done():
			return
		}
	}
}

// streamJobs serves /stream/jobs: the jobs and configurations snapshot at
// once and whenever it changes.
func (s *Server) streamJobs(w http.ResponseWriter, r *http.Request, _ *session) {
	out := startSSE(w)
	ctx := r.Context()
	poll := time.NewTicker(jobsPoll)
	defer poll.Stop()
	quiet := 0
	var sent []byte
	for {
		snap, err := s.snapshot()
		if err != nil {
			s.log.Error().Err(err).Msg("dashboard: jobs stream")
			return
		}
		b, _ := json.Marshal(snap) // strings and numbers: cannot fail
		if !bytes.Equal(b, sent) {
			out.event("", "jobs", b)
			sent, quiet = b, 0
		} else if quiet++; quiet*int(jobsPoll) >= int(Heartbeat) {
			out.comment("heartbeat")
			quiet = 0
		}
		if out.b.Buffered() > 0 && !out.flush() {
			return
		}
		select {
		case <-poll.C:
		case <-ctx.Done():
			return
		case <-s.cfg.Context.Done():
			return
		}
	}
}
