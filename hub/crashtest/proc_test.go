package crashtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/syncbuf"

	"github.com/dmctl/dmctl/hub/internal/testwait"
)

// binEnv names a prebuilt dmctl binary to test instead of building one.
const binEnv = "DMCTL_CRASHTEST_BIN"

// buildDmctl builds the dmctl binary of this module into a temporary folder,
// or returns the binary named by DMCTL_CRASHTEST_BIN.
func buildDmctl(ctx context.Context, t *testing.T) string {
	t.Helper()
	if p := os.Getenv(binEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", binEnv, err)
		}
		return p
	}
	bin := filepath.Join(t.TempDir(), "dmctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/dmctl/dmctl")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build github.com/dmctl/dmctl: %v\n%s", err, out)
	}
	return bin
}

// tail returns at most the last n bytes of output.
func tail(b *syncbuf.Buffer, n int) string {
	s := b.Bytes()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return string(s)
}

// readyInfo is what the test needs from "hub serve --ready-file".
type readyInfo struct {
	Addr   string // host:port of the (first) listener
	CAFile string // path of the CA certificate, "" if the file does not say
}

// parseReady decodes the ready file "dmctl hub serve" writes once it listens.
func parseReady(b []byte) (readyInfo, error) {
	var raw struct {
		Addrs  []string `json:"addrs"`
		CAFile string   `json:"caFile"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return readyInfo{}, err
	}
	if len(raw.Addrs) == 0 {
		return readyInfo{}, errors.New("ready file names no address")
	}
	if _, _, err := net.SplitHostPort(raw.Addrs[0]); err != nil {
		return readyInfo{}, fmt.Errorf("ready file address %q: %w", raw.Addrs[0], err)
	}
	return readyInfo{Addr: raw.Addrs[0], CAFile: raw.CAFile}, nil
}

// hubProc is one "dmctl hub serve" child process.
type hubProc struct {
	cmd   *exec.Cmd
	out   *syncbuf.Buffer
	ready readyInfo

	done    chan struct{} // closed when the process has been waited for
	waitErr error         // valid after done
}

// startHub starts "dmctl hub serve" on dataDir and listen and waits for its
// ready file. t.Cleanup kills the process if the test ends first.
func startHub(ctx context.Context, t *testing.T, bin, dataDir, listen, readyFile string) *hubProc {
	t.Helper()
	if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	p := &hubProc{out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, "hub", "serve", "--data", dataDir, "--listen", listen, "--ready-file", readyFile)
	// stdout carries the owner connection string, a secret: drop it. The
	// logs on stderr are shown when the hub fails.
	p.cmd.Stdout = nil
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s hub serve: %v", bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-p.done:
			t.Fatalf("dmctl hub serve exited before it was ready: %v\noutput:\n%s", p.waitErr, tail(p.out, 4000))
		case <-ctx.Done():
			t.Fatalf("dmctl hub serve not ready (last ready-file error: %v): %v\noutput:\n%s", lastErr, ctx.Err(), tail(p.out, 4000))
		case <-tick.C:
		}
		b, err := os.ReadFile(readyFile)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			// A half-written file fails to parse; the next tick reads it again.
			p.ready, err = parseReady(b)
		}
		if err == nil {
			return p
		}
		lastErr = err
	}
}

// stop kills the process if it still runs and waits for it.
func (p *hubProc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	testwait.Recv(t, p.done, "the killed hub process to be reaped")
}

// crash kills the process with SIGKILL and waits for it. It fails if the
// process had already ended by itself.
func (p *hubProc) crash(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("dmctl hub serve ended by itself before the kill: %v\noutput:\n%s", p.waitErr, tail(p.out, 4000))
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill hub: %v", err)
	}
	testwait.Recv(t, p.done, "the SIGKILLed hub process to be reaped")
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("dmctl hub serve did not end by SIGKILL: %v\noutput:\n%s", p.waitErr, tail(p.out, 4000))
	}
}

// port is the listener's port.
func (p *hubProc) port(t *testing.T) int {
	t.Helper()
	_, ps, err := net.SplitHostPort(p.ready.Addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(ps)
	if err != nil || n <= 0 {
		t.Fatalf("ready file port %q", ps)
	}
	return n
}

// connectionString runs "dmctl hub connection-string" for dataDir and listen.
func connectionString(ctx context.Context, t *testing.T, bin, dataDir, listen string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "hub", "connection-string", "--data", dataDir, "--listen", listen)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dmctl hub connection-string: %v\nstderr:\n%s", err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}
