// Package testwait bounds the waits of the hub's tests: each gives up after
// Timeout and fails the test with what it was waiting for, instead of
// hanging until go test's own timeout. Call them from the test's goroutine.
package testwait

import (
	"sync"
	"testing"
	"time"
)

// Timeout is how long any single wait lasts before the test fails.
const Timeout = 15 * time.Second

// Recv returns the next value from ch (or the zero value once ch is
// closed), failing t if none comes within Timeout.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("gave up after %v waiting for %s", Timeout, what)
		panic("unreachable")
	}
}

// Group waits for wg, failing t if it is not done within Timeout.
func Group(t testing.TB, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	Recv(t, done, what)
}

// Until polls cond every few milliseconds, failing t if it does not hold
// within Timeout.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", Timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
