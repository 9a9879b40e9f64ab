package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// emfileListener refuses its first n accepts as a process out of
// descriptors would.
type emfileListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *emfileListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	refuse := l.n > 0
	l.n--
	l.mu.Unlock()
	if refuse {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// records returns the log records whose "event" is event.
func (s *syncBuffer) records(event string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(s.b.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// Accepts the kernel refuses for want of descriptors are said once, with
// the fix, and the hub takes connections again as soon as it can.
func TestAcceptsRefusedForWantOfDescriptors(t *testing.T) {
	logs := &syncBuffer{}
	s, err := New(Config{DataDir: t.TempDir(), Listen: []string{"127.0.0.1:0"}, Log: zerolog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	s.listeners[0] = &emfileListener{Listener: s.listeners[0], n: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := tls.Dialer{Config: &tls.Config{RootCAs: s.CAPool(), ServerName: "localhost"}}
	c, err := d.DialContext(ctx, "tcp", s.Addrs()[0])
	if err != nil {
		t.Fatalf("the hub did not take a connection after the refusals: %v", err)
	}
	_ = c.Close()
	got := logs.records("fd_exhausted")
	if len(got) != 1 || !strings.Contains(got[0]["hint"].(string), "limit") || !strings.Contains(got[0]["error"].(string), "too many open files") {
		t.Fatalf("fd_exhausted records %v, want one with the error and the fix", got)
	}
	if got := logs.records("fd_recovered"); len(got) != 1 || got[0]["refused"] != float64(3) {
		t.Fatalf("fd_recovered records %v, want one counting 3 refusals", got)
	}
}
