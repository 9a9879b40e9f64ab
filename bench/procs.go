package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// dataDir makes a fresh directory for one hub's data under cfg.DataDir.
func dataDir(cfg *config, name string) (string, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(cfg.DataDir, name+"-")
}

// buildDmctl builds the dmctl binary of this module into dir.
func buildDmctl(ctx context.Context, cfg *config, dir string) (string, error) {
	bin := filepath.Join(dir, "dmctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = cfg.ModDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build dmctl: %v\n%s", err, out)
	}
	return bin, nil
}

// moduleDir is the root of the module the bench belongs to.
func moduleDir() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the bench inside the dmctl module")
	}
	return filepath.Dir(mod), nil
}

// child is a process the bench started; stop ends it and waits.
type child struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // stdout lines
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tail is the last few lines of the child's stderr, for error messages.
func (c *child) tail() string {
	s := strings.TrimSpace(c.stderr.String())
	lines := strings.Split(s, "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// start runs a child process whose stdout is read line by line.
func start(name string, env []string, dir string, argv ...string) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c := &child{name: name, cmd: cmd, lines: make(chan string, 64), stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody is reading; drop
			}
		}
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop asks the child to end (stdin closed, then SIGTERM) and kills it if
// it has not ended within grace.
func (c *child) stop(grace time.Duration) {
	_ = c.stdin.Close()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// waitLine waits for a stdout line for which ok returns true.
func (c *child) waitLine(ctx context.Context, timeout time.Duration, ok func(string) bool) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-c.lines:
			if ok(l) {
				return l, nil
			}
		case <-c.done:
			return "", fmt.Errorf("%s exited (%v): %s", c.name, c.err, c.tail())
		case <-t.C:
			return "", fmt.Errorf("%s: nothing after %s: %s", c.name, timeout, c.tail())
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// waitFile waits until path exists, polling every few milliseconds, and
// returns its content.
func (c *child) waitFile(ctx context.Context, path string, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return b, nil
		}
		select {
		case <-c.done:
			return nil, fmt.Errorf("%s exited (%v): %s", c.name, c.err, c.tail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no %s after %s: %s", c.name, filepath.Base(path), timeout, c.tail())
		}
	}
}
