// Package servicetest holds the test helpers that the service client's
// tests and the rollout's tests share: a local hub with a service client,
// and a deadline-bound wait for a device to listen for direct methods.
package servicetest

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

// WaitTimeout bounds every wait of these helpers.
const WaitTimeout = 30 * time.Second

// HubClient starts a local hub and returns it with a service client that
// logs to the test; both stop when the test ends.
func HubClient(t testing.TB) (*hubtest.Server, *service.Client) {
	t.Helper()
	h := hubtest.NewServer(t)
	cs, err := sas.ParseService(h.ServiceConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	c, err := service.New(cs, service.WithRootCAs(h.CAPool()),
		service.WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return h, c
}

// WaitMethods waits, at most WaitTimeout, until device id listens for the
// reboot method.
func WaitMethods(t testing.TB, h *hubtest.Server, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), WaitTimeout)
	defer cancel()
	if err := h.WaitSubscribed(ctx, id, iothub.MethodRequestTopic(service.RebootMethod, "1")); err != nil {
		t.Fatalf("device %s did not subscribe to methods within %v: %v", id, WaitTimeout, err)
	}
}

// Within runs wait and fails the test, naming what, when it has not
// returned after d. A wait that never returns is left behind: the test has
// failed by then.
func Within(t testing.TB, d time.Duration, what string, wait func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: not done within %v", what, d)
	}
}
