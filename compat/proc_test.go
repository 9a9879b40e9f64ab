package compat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a child process (a Node script or dmctl) in its own process group.
// Its stdout is kept as lines, its stderr as text for failure reports. The
// test's cleanup kills the whole group and waits for it.
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{} // closed and replaced whenever lines or exited change
	stderr  bytes.Buffer
	exited  bool
	waitErr error
	done    chan struct{}
}

// startProc starts argv with extra environment variables. The process ends
// when ctx ends, when the test ends, or on its own.
func startProc(t *testing.T, ctx context.Context, name string, extraEnv []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, changed: make(chan struct{}), done: make(chan struct{})}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(baseEnv(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 3 * time.Second
	cmd.Stdout = stdoutWriter{p}
	cmd.Stderr = stderrWriter{p}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p.stdin = stdin
	p.cmd = cmd
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exited = true
		p.waitErr = err
		p.notifyLocked()
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.hasExited() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
		case <-time.After(waitStep):
			// cmd.WaitDelay makes this unlikely; never hang the suite on it.
			t.Errorf("%s: still not reaped %v after SIGKILL to its process group", name, waitStep)
		}
		if t.Failed() {
			t.Logf("--- %s stdout:\n%s", name, strings.Join(p.stdoutLines(), "\n"))
			t.Logf("--- %s stderr:\n%s", name, p.stderrText())
		}
	})
	return p
}

// baseEnv is the environment for every child: the test's own, minus
// settings that would redirect or loosen the SDKs' connections, plus trust in
// the hub's CA.
func baseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "NODE_TLS_REJECT_UNAUTHORIZED", "NODE_EXTRA_CA_CERTS",
			"IOTHUB_CONNECTION_STRING", "IOTHUB_DEVICE_CONNECTION_STRING", "DEVICE_CONNECTION_STRING", "DMCTL_CA_FILE", "DEBUG":
			continue
		}
		out = append(out, kv)
	}
	out = append(out, "NODE_EXTRA_CA_CERTS="+env.caFile, "NO_PROXY=localhost,127.0.0.1")
	if d := os.Getenv("COMPAT_NODE_DEBUG"); d != "" {
		// The SDKs' debug output (e.g. "azure*,mqttjs*") goes to the scripts'
		// stderr, which failing tests print.
		out = append(out, "DEBUG="+d)
	}
	return out
}

type stdoutWriter struct{ p *proc }

func (w stdoutWriter) Write(b []byte) (int, error) {
	p := w.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		p.lines = append(p.lines, strings.TrimRight(string(p.partial[:i]), "\r"))
		p.partial = p.partial[i+1:]
		p.notifyLocked()
	}
	return len(b), nil
}

type stderrWriter struct{ p *proc }

func (w stderrWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.stderr.Write(b)
}

func (p *proc) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *proc) hasExited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

func (p *proc) stdoutLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := append([]string(nil), p.lines...)
	if len(p.partial) > 0 {
		lines = append(lines, string(p.partial))
	}
	return lines
}

func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// waitStep bounds every single wait of a test (a line, an event, an exit, a
// state of the hub), whatever is left of the test's own context: a process
// that never prints what is awaited fails the test in seconds, naming it.
const waitStep = 45 * time.Second

// waitLine waits for a stdout line for which match is true (lines seen
// earlier count too) and returns it.
func (p *proc) waitLine(ctx context.Context, what string, match func(line string) bool) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, waitStep)
	defer cancel()
	for i := 0; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if match(p.lines[i]) {
				l := p.lines[i]
				p.mu.Unlock()
				return l, nil
			}
		}
		exited, waitErr, changed := p.exited, p.waitErr, p.changed
		p.mu.Unlock()
		if exited {
			return "", fmt.Errorf("%s exited (%v) before %s; stderr:\n%s", p.name, waitErr, what, p.stderrText())
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no %s on stdout within %v: %w; stderr:\n%s", p.name, what, waitStep, ctx.Err(), p.stderrText())
		}
	}
}

// waitEvent waits for a JSON stdout line with "event": name for which match
// (nil = any) is true.
func (p *proc) waitEvent(ctx context.Context, name string, match func(map[string]any) bool) (map[string]any, error) {
	var ev map[string]any
	_, err := p.waitLine(ctx, "event "+name, func(line string) bool {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["event"] != name {
			return false
		}
		if match != nil && !match(m) {
			return false
		}
		ev = m
		return true
	})
	return ev, err
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, waitStep)
	defer cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		return -1, fmt.Errorf("%s did not exit within %v: %w", p.name, waitStep, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	if p.waitErr != nil {
		return -1, p.waitErr
	}
	return 0, nil
}

// signal sends sig to the process itself (not its group).
func (p *proc) signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// closeStdin ends the child's standard input.
func (p *proc) closeStdin() error { return p.stdin.Close() }

// runResult is what a one-shot command printed and how it ended.
type runResult struct {
	code   int
	stdout string
	stderr string
}

// lastJSON decodes stdout into v: all of it when it is one JSON document
// (dmctl's indented -o json), else the last line that is a JSON object (the
// Node scripts print JSON lines).
func (r runResult) lastJSON(v any) error {
	if whole := strings.TrimSpace(r.stdout); json.Valid([]byte(whole)) {
		return json.Unmarshal([]byte(whole), v)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "{") {
			return json.Unmarshal([]byte(l), v)
		}
	}
	return fmt.Errorf("no JSON object on stdout:\n%s", r.stdout)
}

func (r runResult) String() string {
	return fmt.Sprintf("exit code %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runProc runs argv to completion (bounded by ctx) and returns its output.
func runProc(t *testing.T, ctx context.Context, name string, extraEnv []string, argv ...string) runResult {
	t.Helper()
	p := startProc(t, ctx, name, extraEnv, argv...)
	p.closeStdin()
	code, err := p.wait(ctx)
	if err != nil {
		t.Fatalf("%s: %v\nstderr:\n%s", name, err, p.stderrText())
	}
	if ctx.Err() != nil {
		t.Fatalf("%s killed: %v\nstdout:\n%s\nstderr:\n%s", name, ctx.Err(), strings.Join(p.stdoutLines(), "\n"), p.stderrText())
	}
	return runResult{code: code, stdout: strings.Join(p.stdoutLines(), "\n"), stderr: p.stderrText()}
}

// nodeArgv is the command line for one of the scripts in compat/node.
func nodeArgv(script string, args ...string) []string {
	return append([]string{"node", filepath.Join(env.nodeDir, script)}, args...)
}
