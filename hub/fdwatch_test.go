package hub_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/fdlimit"
)

// logEvents is a zerolog sink that keeps the "event" records it is given.
type logEvents struct {
	mu   sync.Mutex
	recs []map[string]any
}

func (l *logEvents) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["event"] != nil {
			l.recs = append(l.recs, m)
		}
	}
	return len(p), nil
}

func (l *logEvents) of(event string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.recs {
		if m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// A hub whose open-file limit holds 10 connections says so, once, when
// the ninth device connects, with the numbers and the fix.
func TestHubSaysWhenItNearsItsOpenFileLimit(t *testing.T) {
	logs := &logEvents{}
	limit := fdlimit.Limit{Soft: fdlimit.Reserve + 10, Hard: fdlimit.Reserve + 10}
	hs := hubtest.NewServer(t, hubtest.WithLogger(zerolog.New(logs)), func(c *hub.Config) { c.OpenFileLimit = limit })
	if l, capacity := hs.Hub().OpenFileLimit(); l != limit || capacity != 10 {
		t.Fatalf("OpenFileLimit = %+v, %d", l, capacity)
	}
	for i := 0; i < 8; i++ {
		rawConnect(t, hs, sasIdentity(t, hs.CreateDevice(t, fmt.Sprintf("d%d", i))))
	}
	if got := logs.of("fd_limit_near"); len(got) != 0 {
		t.Fatalf("warned at 8 of 10 connections: %v", got)
	}
	for i := 8; i < 10; i++ {
		rawConnect(t, hs, sasIdentity(t, hs.CreateDevice(t, fmt.Sprintf("d%d", i))))
	}
	got := logs.of("fd_limit_near")
	if len(got) != 1 {
		t.Fatalf("%d fd_limit_near records at 10 of 10 connections, want 1: %v", len(got), got)
	}
	if got[0]["capacity"] != float64(10) || got[0]["limit"] != float64(limit.Soft) || !strings.Contains(got[0]["hint"].(string), "hard limit") {
		t.Fatalf("fd_limit_near record %v", got[0])
	}
}
