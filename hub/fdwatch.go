package hub

import (
	"fmt"
	"sync"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/internal/fdlimit"
)

// fdWatch says when the hub nears or reaches its open-file limit: once
// when the MQTT connections reach 90% of what the limit holds (again only
// after they fall below 80%), and once per run of accepts the kernel
// refuses for want of descriptors (EMFILE, ENFILE), with the numbers and
// the fix. Without it a full hub just stops taking connections.
type fdWatch struct {
	limit fdlimit.Limit
	log   zerolog.Logger

	mu        sync.Mutex
	near      bool // warned; cleared below 80%
	exhausted bool // an accept was refused; cleared by the next accept
	refused   int  // accepts refused in the current run
}

func newFDWatch(l fdlimit.Limit, log zerolog.Logger) *fdWatch {
	return &fdWatch{limit: l, log: log}
}

// hint is what to do about a full hub.
func (w *fdWatch) hint() string {
	if w.limit.Soft < w.limit.Hard {
		return fmt.Sprintf("restart the hub after raising its open-file limit (ulimit -n %d, the hard limit), or spread the devices over several hubs", w.limit.Hard)
	}
	return fmt.Sprintf("the open-file limit is the hard limit (%d): raise it as root (limits.conf, systemd LimitNOFILE=, ulimit -Hn), or spread the devices over several hubs", w.limit.Hard)
}

// opened is called with the number of MQTT connections open now.
func (w *fdWatch) opened(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.near && w.limit.Near(n):
		w.near = true
		w.log.Warn().Str("event", "fd_limit_near").Int("connections", n).Int("capacity", w.limit.Connections()).
			Uint64("limit", w.limit.Soft).Str("hint", w.hint()).
			Msg("the hub nears its open-file limit: new connections will soon be refused")
	case w.near && n*10 < w.limit.Connections()*8:
		w.near = false
	}
}

// acceptFailed is called with an accept error; it reports whether the
// kernel refused the connection for want of descriptors.
func (w *fdWatch) acceptFailed(err error) bool {
	if !fdlimit.IsExhausted(err) {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refused++
	if !w.exhausted {
		w.exhausted = true
		w.log.Error().Str("event", "fd_exhausted").Err(err).Uint64("limit", w.limit.Soft).Str("hint", w.hint()).
			Msg("connections refused: the hub has no file descriptor left")
	}
	return true
}

// accepted is called after each accepted connection; it ends a run of
// refusals.
func (w *fdWatch) accepted() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.exhausted {
		w.exhausted = false
		w.log.Info().Str("event", "fd_recovered").Int("refused", w.refused).Msg("accepting connections again")
		w.refused = 0
	}
}
