package dashboard_test

import (
	"strconv"
	"testing"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/events"
	"github.com/rs/zerolog"
)

// BenchmarkEventStream measures how many events per second /stream/events
// delivers to one reader over TLS, in bursts of 1,000 (a fleet reboot).
func BenchmarkEventStream(b *testing.B) {
	e := newEnv(b, func(c *hub.Config) { c.Log = zerolog.Nop() })
	c, _ := e.login(b)
	s := e.openStream(b, "/stream/events", c, nil)
	ring := e.h.Events()
	const burst = 1000
	b.ResetTimer()
	for range b.N {
		for range burst {
			ring.Add(events.Event{Kind: events.ReportedPatch, DeviceID: "dev-0001", Version: 2, Body: `{"rebootTime":"2026-12-01T15:00:00Z"}`})
		}
		want := strconv.FormatUint(ring.Last(), 10)
		for {
			ev := s.next(b, "event "+want)
			if ev.kind == "lost" {
				b.Fatalf("the reader lost events: %s", ev.data)
			}
			if ev.id == want {
				break
			}
		}
	}
	b.ReportMetric(float64(b.N*burst)/b.Elapsed().Seconds(), "events/s")
}
