// Package retry is the one retry vocabulary that the device transport and
// the service client share: an exponential backoff with full jitter and a
// sleep that ends early when its context does.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff returns the delay before retry attempt n (n >= 1).
type Backoff func(attempt int) time.Duration

// Exponential is exponential backoff with full jitter: attempt n waits a
// uniform random duration in [0, min(limit, base·2^(n-1))]. Attempts below 1
// count as 1; a non-positive ceiling gives no delay.
func Exponential(base, limit time.Duration) Backoff {
	return func(attempt int) time.Duration {
		return rand.N(Ceiling(base, limit, attempt) + 1)
	}
}

// Ceiling is the largest delay Exponential(base, limit) may return for
// attempt: min(limit, base·2^(attempt-1)), never negative.
func Ceiling(base, limit time.Duration, attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	ceil := limit
	if attempt <= 62 {
		if d := base << (attempt - 1); d > 0 && d < limit {
			ceil = d
		}
	}
	return max(ceil, 0)
}

// Constant always waits d: for tests that want a fast, fixed retry.
func Constant(d time.Duration) Backoff {
	return func(int) time.Duration { return d }
}

// Sleep waits for d or until ctx ends, whichever is first. It returns
// ctx.Err() when ctx ended (also when d <= 0 and ctx is already done), nil
// otherwise.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
