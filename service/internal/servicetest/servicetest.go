// Package servicetest holds the test helpers that the service client's
// tests and the rollout's tests share: a test context with a deadline, a
// local hub with a service client, and a bounded wait for a device to
// listen for direct methods.
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

const (
	// WaitTimeout bounds every wait of these helpers, and the tests' waits
	// for one thing (a device to stop, a message).
	WaitTimeout = 30 * time.Second
	// Timeout bounds a whole test's calls through Context.
	Timeout = 60 * time.Second
)

// Context is t.Context() with a deadline Timeout from now: the calls of a
// test that blocks fail with context.DeadlineExceeded instead of hanging.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

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
