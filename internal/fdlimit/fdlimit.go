// Package fdlimit reads this process's open-file limit and says, with the
// numbers and the fix, when a job needs more descriptors than it may open.
//
// Go raises the soft limit (RLIMIT_NOFILE) to the hard one at start on
// Linux and the BSDs, so Open reports what the process may really use. A
// TCP connection costs one descriptor; the process needs a few dozen more
// of its own (files, the store, pipes, the runtime's poller).
package fdlimit

import (
	"errors"
	"fmt"
	"syscall"
)

// Reserve is how many descriptors a dmctl process keeps for itself beyond
// its connections.
const Reserve = 64

// Limit is a process's open-file limit.
type Limit struct {
	Soft uint64 // what it may open now
	Hard uint64 // what the soft limit may be raised to without privilege
}

// Unlimited reports whether the limit is too large to matter.
func (l Limit) Unlimited() bool { return l.Soft >= 1<<40 }

// Connections is how many connections fit under the soft limit, keeping
// Reserve descriptors aside.
func (l Limit) Connections() int {
	if l.Unlimited() {
		return 1 << 40
	}
	if l.Soft <= Reserve {
		return 0
	}
	return int(l.Soft - Reserve)
}

// ErrTooMany: a job needs more connections than the limit holds.
var ErrTooMany = errors.New("more connections than the open-file limit allows")

// Check returns nil when n connections fit in l, else an error wrapping
// ErrTooMany that names the numbers; Hint says what to do.
func (l Limit) Check(n int) error {
	if n <= l.Connections() {
		return nil
	}
	return fmt.Errorf("%d connections need about %d open files; this process may open %d (ulimit -n): %w", n, n+Reserve, l.Soft, ErrTooMany)
}

// Hint is the fix for running n connections under l: raise the soft limit
// (up to the hard one), or split the work into shards of at most
// l.Connections() each (shardFlag names the option that does, "" for none).
func (l Limit) Hint(n int, shardFlag string) string {
	need := uint64(n + Reserve)
	var raise string
	if need <= l.Hard {
		raise = fmt.Sprintf("raise the limit first: ulimit -n %d (the hard limit is %d)", need, l.Hard)
	} else {
		raise = fmt.Sprintf("the hard limit is %d: raise it as root (limits.conf, systemd LimitNOFILE=, or ulimit -Hn %d)", l.Hard, need)
	}
	per := l.Connections()
	if shardFlag == "" || per <= 0 {
		return raise
	}
	shards := (n + per - 1) / per
	return fmt.Sprintf("%s, or split it over processes: %s %d (at most %d connections each)", raise, shardFlag, shards, per)
}

// Near reports whether open connections have reached 90% of what l holds.
func (l Limit) Near(open int) bool {
	c := l.Connections()
	return !l.Unlimited() && c > 0 && open*10 >= c*9
}

// IsExhausted reports whether err is the kernel refusing a new descriptor:
// this process's limit (EMFILE) or the system's (ENFILE).
func IsExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
