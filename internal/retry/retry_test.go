package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCeiling(t *testing.T) {
	for _, tc := range []struct {
		base, limit time.Duration
		attempt     int
		want        time.Duration
	}{
		{100 * time.Millisecond, time.Second, 0, 100 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 1, 100 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 3, 400 * time.Millisecond},
		{100 * time.Millisecond, time.Second, 5, time.Second},
		{100 * time.Millisecond, time.Second, 200, time.Second}, // no shift overflow
		{time.Hour, time.Second, 1, time.Second},
		{0, 0, 4, 0},
		{time.Second, -time.Second, 1, 0},
	} {
		if got := Ceiling(tc.base, tc.limit, tc.attempt); got != tc.want {
			t.Errorf("Ceiling(%v, %v, %d) = %v, want %v", tc.base, tc.limit, tc.attempt, got, tc.want)
		}
	}
}

func TestExponentialStaysUnderCeiling(t *testing.T) {
	b := Exponential(10*time.Millisecond, 80*time.Millisecond)
	seenAboveBase := false
	for attempt := 1; attempt <= 10; attempt++ {
		ceil := Ceiling(10*time.Millisecond, 80*time.Millisecond, attempt)
		for range 200 {
			d := b(attempt)
			if d < 0 || d > ceil {
				t.Fatalf("attempt %d: delay %v outside [0, %v]", attempt, d, ceil)
			}
			if d > 10*time.Millisecond {
				seenAboveBase = true
			}
		}
	}
	if !seenAboveBase {
		t.Fatal("the delay never grew past the base: the backoff is not exponential")
	}
	if d := Exponential(0, 0)(3); d != 0 {
		t.Fatalf("zero backoff waited %v", d)
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(t.Context(), time.Millisecond); err != nil {
		t.Fatalf("Sleep: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on a cancelled context = %v, want context.Canceled", err)
	}
	if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) on a cancelled context = %v, want context.Canceled", err)
	}
	if err := Sleep(t.Context(), -time.Second); err != nil {
		t.Fatalf("Sleep(negative) = %v", err)
	}
	if d := Constant(3 * time.Millisecond)(9); d != 3*time.Millisecond {
		t.Fatalf("Constant = %v", d)
	}
}
