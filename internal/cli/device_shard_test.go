//go:build unix

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/fdlimit"
)

// shardPatience bounds every wait of these tests: children of a -race
// test binary start slowly.
const shardPatience = 60 * time.Second

// syncBuffer is a bytes.Buffer that the parent's logger and the children's
// stderr copiers may write at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fleetFile registers n devices on hs (ids prefix-01 ...) and writes their
// connection strings to a file; edit rewrites each line first.
func fleetFile(t *testing.T, hs *hubtest.Server, prefix string, n int, edit func(string) string) (string, []string) {
	t.Helper()
	var lines, ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%02d", prefix, i+1)
		cs := hs.CreateDevice(t, id)
		if edit != nil {
			cs = edit(cs)
		}
		lines, ids = append(lines, cs), append(ids, id)
	}
	file := filepath.Join(t.TempDir(), "fleet.txt")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, ids
}

// runningFleet is 'dmctl device run' in this process, its shards in
// children of the test binary.
type runningFleet struct {
	cancel         context.CancelFunc
	done           chan int // the exit code
	stdout, stderr *syncBuffer
	readyFile      string
}

func startFleet(t *testing.T, args ...string) *runningFleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &runningFleet{cancel: cancel, done: make(chan int, 1), stdout: &syncBuffer{}, stderr: &syncBuffer{},
		readyFile: filepath.Join(t.TempDir(), "ready.json")}
	argv := append([]string{"dmctl", "--log-format", "json", "device", "run", "--ready-file", f.readyFile}, args...)
	go func() { f.done <- Main(ctx, argv, strings.NewReader(""), f.stdout, f.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.done:
		case <-time.After(shardPatience):
			t.Errorf("the fleet did not stop within %v of the test's end", shardPatience)
		}
	})
	return f
}

// ready waits for the ready file and returns what it says.
func (f *runningFleet) ready(t *testing.T) deviceReadyInfo {
	t.Helper()
	deadline := time.After(shardPatience)
	for {
		if data, err := os.ReadFile(f.readyFile); err == nil && len(data) > 0 {
			var info deviceReadyInfo
			if err := json.Unmarshal(data, &info); err != nil {
				t.Fatalf("ready file: %v: %s", err, data)
			}
			return info
		}
		select {
		case code := <-f.done:
			t.Fatalf("the fleet exited with %d before it was ready:\n%s", code, f.stderr)
		case <-deadline:
			t.Fatalf("no ready file within %v:\n%s", shardPatience, f.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// exit waits for the fleet's exit code.
func (f *runningFleet) exit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-f.done:
		f.done <- code // for the cleanup
		return code
	case <-time.After(shardPatience):
		t.Fatalf("the fleet did not exit within %v:\n%s", shardPatience, f.stderr)
		return 0
	}
}

// waitGone waits until no process has the pid (its parent has reaped it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("shard process %d still exists 10s after the fleet exited", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFor waits until the fleet's stderr matches re.
func (f *runningFleet) waitFor(t *testing.T, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(shardPatience)
	for !rx.MatchString(f.stderr.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("stderr did not match %q within %v:\n%s", re, shardPatience, f.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A fleet of 30 devices over 3 processes: every device connects, the
// ready file and one state line cover all of them, and cancelling the
// parent (Ctrl-C) stops every child.
func TestShardedFleetConnectsEveryDeviceAndStopsAllShards(t *testing.T) {
	hs := hubtest.NewServer(t)
	file, ids := fleetFile(t, hs, "shard", 30, nil)
	f := startFleet(t, "--connection-strings-file", file, "--processes", "3", "--connect-rate", "200/s", "--ca-file", hs.CAFile())
	info := f.ready(t)
	if !slices.Equal(info.DeviceIDs, ids) {
		t.Fatalf("ready file lists %v, want the file's %v", info.DeviceIDs, ids)
	}
	if len(info.Shards) != 3 || info.Shards[0].Devices+info.Shards[1].Devices+info.Shards[2].Devices != 30 {
		t.Fatalf("ready file's shards: %+v", info.Shards)
	}
	ctx, cancel := context.WithTimeout(context.Background(), shardPatience)
	defer cancel()
	for _, id := range ids {
		if err := hs.WaitConnected(ctx, id, true); err != nil {
			t.Fatalf("hub: %s not connected: %v", id, err)
		}
	}
	f.waitFor(t, `"processes":3,"event":"fleet","devices":30,"connected":30,"connecting":0,"retrying":0,"rebooting":0,.*"message":"fleet: 30/30 connected`)
	if !strings.Contains(f.stdout.String(), "fleet: 30 devices connected to "+hs.HostName()) || !strings.Contains(f.stdout.String(), "over 3 processes") {
		t.Errorf("stdout: %q", f.stdout)
	}

	f.cancel()
	if code := f.exit(t); code != 0 {
		t.Fatalf("exit code %d after Ctrl-C, want 0:\n%s", code, f.stderr)
	}
	for _, sh := range info.Shards {
		waitGone(t, sh.Pid)
	}
	for _, id := range ids {
		if err := hs.WaitConnected(ctx, id, false); err != nil {
			t.Fatalf("hub: %s still connected: %v", id, err)
		}
	}
	if _, err := os.Stat(f.readyFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ready file left behind: %v", err)
	}
	logs := f.stderr.String()
	for _, want := range []string{`"shard":"1/3"`, `"shard":"3/3"`, `"event":"fleet_stopped","devices":30,"processes":3`} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %s", want)
		}
	}
	if strings.Contains(logs, "SharedAccessKey") || strings.Contains(logs, "SharedAccessSignature") {
		t.Error("a connection string or token reached the log")
	}
}

// A shard killed with SIGKILL ends the fleet: the others are stopped and
// the exit code says so.
func TestShardedFleetNoticesAKilledShard(t *testing.T) {
	hs := hubtest.NewServer(t)
	file, _ := fleetFile(t, hs, "kill", 4, nil)
	f := startFleet(t, "--connection-strings-file", file, "--processes", "2", "--ca-file", hs.CAFile())
	info := f.ready(t)
	victim := info.Shards[1].Pid
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := f.exit(t); code != exitFailure {
		t.Fatalf("exit code %d after a shard was killed, want %d:\n%s", code, exitFailure, f.stderr)
	}
	want := fmt.Sprintf("dmctl: error: shard 2/2 (devices 3-4, pid %d) was ended by a signal (signal: killed)", victim)
	if !strings.Contains(f.stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, f.stderr)
	}
	waitGone(t, info.Shards[0].Pid)
}

// recordingProxy forwards TCP connections to target and records the
// address each came from.
type recordingProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	froms []string
	wg    sync.WaitGroup
}

func newRecordingProxy(t *testing.T, target string) *recordingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln}
	var conns sync.Map
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			p.mu.Lock()
			p.froms = append(p.froms, host)
			p.mu.Unlock()
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			conns.Store(c, up)
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { defer p.wg.Done(); _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		conns.Range(func(k, v any) bool { _ = k.(net.Conn).Close(); _ = v.(net.Conn).Close(); return true })
		p.wg.Wait()
	})
	return p
}

func (p *recordingProxy) sources() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.froms)
}

// --source-addrs: the devices dial from those addresses, round robin
// across the shards.
func TestShardedFleetDialsFromSourceAddrs(t *testing.T) {
	hs := hubtest.NewServer(t)
	proxy := newRecordingProxy(t, hs.Addr())
	_, port, _ := net.SplitHostPort(proxy.ln.Addr().String())
	file, _ := fleetFile(t, hs, "src", 4, func(cs string) string { return cs + ";GatewayHostName=localhost:" + port })
	f := startFleet(t, "--connection-strings-file", file, "--processes", "2", "--source-addrs", "127.0.0.2,127.0.0.3", "--ca-file", hs.CAFile())
	f.ready(t)
	got := proxy.sources()
	slices.Sort(got)
	if want := []string{"127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"}; !slices.Equal(got, want) {
		t.Fatalf("the hub saw connections from %v, want %v", got, want)
	}
}

// A fleet larger than the open-file limit fails before connecting
// anything, with the numbers and the fix; so does a shard too large.
func TestDeviceRunRefusesMoreDevicesThanTheFileLimit(t *testing.T) {
	old := openFileLimit
	openFileLimit = func() (fdlimit.Limit, error) { return fdlimit.Limit{Soft: 100, Hard: 4096}, nil }
	defer func() { openFileLimit = old }()
	var lines []string
	for i := range 100 {
		lines = append(lines, fmt.Sprintf("HostName=h.example;DeviceId=d%03d;SharedAccessKey=c2VjcmV0LWtleQ==", i))
	}
	file := filepath.Join(t.TempDir(), "big.txt")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runMain(t, "device", "run", "--connection-strings-file", file)
	if code != exitUsage || stdout != "" {
		t.Fatalf("exit %d, stdout %q, want 2 and nothing", code, stdout)
	}
	want := "dmctl: error: 100 connections need about 164 open files; this process may open 100 (ulimit -n): more connections than the open-file limit allows\n" +
		"dmctl: hint: raise the limit first: ulimit -n 164 (the hard limit is 4096), or split it over processes: --processes 3 (at most 36 connections each)\n"
	if stderr != want {
		t.Fatalf("stderr:\n%s\nwant:\n%s", stderr, want)
	}
	code, _, stderr = runMain(t, "device", "run", "--connection-strings-file", file, "--processes", "2")
	if code != exitUsage || !strings.Contains(stderr, "100 devices over 2 processes: 50 connections need about 114 open files; this process may open 100") ||
		!strings.Contains(stderr, "--processes 3") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
}

// Automatic source addresses: only for a loopback hub on Linux, one per
// 25,000 devices.
func TestLoopbackSources(t *testing.T) {
	if got := loopbackSources("linux", "localhost", 60000); len(got) != 3 || got[0].String() != "127.0.0.1" || got[2].String() != "127.0.0.3" {
		t.Errorf("60,000 devices on localhost: %v", got)
	}
	if got := loopbackSources("linux", "127.0.0.1", 25001); len(got) != 2 {
		t.Errorf("25,001 devices on 127.0.0.1: %v", got)
	}
	for _, c := range []struct {
		goos, host string
		n          int
	}{{"linux", "localhost", 25000}, {"linux", "hub.example", 60000}, {"darwin", "localhost", 60000}, {"linux", "::1", 60000}} {
		if got := loopbackSources(c.goos, c.host, c.n); got != nil {
			t.Errorf("%s %s %d: %v, want none", c.goos, c.host, c.n, got)
		}
	}
}

// A shard that fails on its own (the hub refuses a device's key) stops the
// fleet, and the fleet exits with that shard's code.
func TestShardedFleetExitsWithAFailedShardsCode(t *testing.T) {
	hs := hubtest.NewServer(t)
	n := 0
	file, _ := fleetFile(t, hs, "auth", 4, func(cs string) string {
		if n++; n == 4 { // the second shard's last device: a key the hub does not know
			cs = regexp.MustCompile(`SharedAccessKey=[^;]+`).ReplaceAllString(cs, "SharedAccessKey=d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMDE=")
		}
		return cs
	})
	f := startFleet(t, "--connection-strings-file", file, "--processes", "2", "--ca-file", hs.CAFile())
	if code := f.exit(t); code != exitAuth {
		t.Fatalf("exit code %d, want %d (the failed shard's):\n%s", code, exitAuth, f.stderr)
	}
	logs := f.stderr.String()
	for _, want := range []string{"dmctl: error: device auth-04: connect to", "dmctl: error: shard 2/2 (devices 3-4, pid "} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "d3Jvbmcta2V5") {
		t.Error("the key reached the log")
	}
}
