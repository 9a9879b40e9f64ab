package fleet

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The limiter paces callers at its rate, whoever they are, and a caller
// whose context ends stops waiting at once.
func TestLimiterPacesAndCancels(t *testing.T) {
	l := newLimiter(100) // one slot every 10 ms
	start := time.Now()
	for range 10 {
		if err := l.Wait(t.Context()); err != nil {
			t.Fatalf("Wait: %v", err)
		}
	}
	// Ten slots: the last one is at least 9 intervals after the first.
	if took := time.Since(start); took < 85*time.Millisecond || took > 2*time.Second {
		t.Fatalf("10 slots at 100/s took %v, want about 100 ms", took)
	}

	slow := newLimiter(0.001) // one slot every 1000 s
	slow.lim.Reserve()        // taken: the next caller waits 1000 s
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if err := slow.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait past the deadline = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("a cancelled Wait took %v", took)
	}

	cancelled, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if err := l.Wait(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a cancelled context = %v, want Canceled", err)
	}

	var none limiter // ConnectRate unlimited
	if err := none.Wait(t.Context()); err != nil {
		t.Fatalf("unlimited Wait: %v", err)
	}
}
