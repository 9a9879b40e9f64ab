package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// hubProc is one "dmctl hub serve" child process.
type hubProc struct {
	cmd    *exec.Cmd
	stderr *tailBuffer
	addr   string // host:port of its listener
	caFile string

	done    chan struct{} // closed once the process has been waited for
	waitErr error         // valid after done
}

// startHub starts "dmctl hub serve" on dataDir and listen and returns once
// its ready file names the bound address, or fails after timeout.
func startHub(ctx context.Context, bin, dataDir, listen, readyFile string, timeout time.Duration) (*hubProc, error) {
	if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	p := &hubProc{stderr: &tailBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, "--log-level", "warn", "--log-format", "console",
		"hub", "serve", "--data", dataDir, "--listen", listen, "--ready-file", readyFile)
	// stdout carries the owner connection string, a secret: dropped. The
	// logs on stderr are kept for error messages.
	p.cmd.Stderr = p.stderr
	// A soak that dies leaves no hub behind.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s hub serve: %w", bin, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return nil, fmt.Errorf("dmctl hub serve exited before it was ready (%v): %s", p.waitErr, p.stderr.tail())
		case <-ctx.Done():
			p.kill()
			return nil, ctx.Err()
		case <-deadline.C:
			p.kill()
			return nil, fmt.Errorf("dmctl hub serve wrote no ready file within %s: %s", timeout, p.stderr.tail())
		case <-tick.C:
		}
		b, err := os.ReadFile(readyFile)
		if err != nil {
			continue
		}
		var info struct {
			Addrs  []string `json:"addrs"`
			CAFile string   `json:"caFile"`
		}
		// A half-written file fails to parse; the next tick reads it again.
		if json.Unmarshal(b, &info) != nil || len(info.Addrs) == 0 {
			continue
		}
		p.addr, p.caFile = info.Addrs[0], info.CAFile
		return p, nil
	}
}

func (p *hubProc) pid() int { return p.cmd.Process.Pid }

// port is the listener's port.
func (p *hubProc) port() (int, error) {
	_, ps, err := net.SplitHostPort(p.addr)
	if err != nil {
		return 0, fmt.Errorf("hub address %q: %w", p.addr, err)
	}
	return strconv.Atoi(ps)
}

// crash kills the process with SIGKILL and waits for it; it fails if the
// process had already ended by itself.
func (p *hubProc) crash(ctx context.Context) error {
	select {
	case <-p.done:
		return fmt.Errorf("dmctl hub serve ended by itself before the kill (%v): %s", p.waitErr, p.stderr.tail())
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill hub: %w", err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return errors.New("the SIGKILLed hub was not reaped within 10s")
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return fmt.Errorf("dmctl hub serve did not end by SIGKILL: %v", p.waitErr)
	}
	return nil
}

// stop asks the process to end (SIGTERM) and kills it if it has not ended
// within grace.
func (p *hubProc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill ends the process at once and waits for it.
func (p *hubProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// RSS reads VmRSS of a process from /proc, in bytes.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, errors.New("no VmRSS in /proc/" + strconv.Itoa(pid) + "/status")
}

// tailBuffer keeps the last 64 KiB a child wrote, for error messages.
type tailBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if t.b.Len() > 64<<10 {
		t.b.Next(t.b.Len() - 32<<10)
	}
	return len(p), nil
}

// tail is the last few lines written, on one line.
func (t *tailBuffer) tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(t.b.String()), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
