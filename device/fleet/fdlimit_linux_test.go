package fleet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/internal/syncbuf"
	"github.com/dmctl/dmctl/sas"
)

// fdChildEnv makes the test binary the child of
// TestFleetUnderARealFileLimit.
const fdChildEnv = "DMCTL_FLEET_FD_CHILD"

// With every descriptor of a really lowered RLIMIT_NOFILE in use, the
// kernel refuses the devices' sockets (EMFILE): the fleet counts them as
// held back and warns once. The limit is lowered in a child process (this
// test binary again), not in the process running the other tests.
func TestFleetUnderARealFileLimit(t *testing.T) {
	if os.Getenv(fdChildEnv) == "1" {
		fdChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFleetUnderARealFileLimit$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), fdChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child under a lowered limit: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestFleetUnderARealFileLimit") {
		t.Fatalf("the child did not run the test:\n%s", out)
	}
}

func fdChild(t *testing.T) {
	const limit = 128
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		t.Fatalf("lower RLIMIT_NOFILE: %v", err)
	}
	var css []*sas.ConnectionString
	for i := range 3 {
		// A port nothing listens on: the socket is refused before any dial.
		cs, err := sas.ParseDevice(fmt.Sprintf("HostName=127.0.0.1:1;DeviceId=fd%d;SharedAccessKey=c2VjcmV0LWtleQ==", i))
		if err != nil {
			t.Fatal(err)
		}
		css = append(css, cs)
	}
	var logs syncbuf.Buffer
	f, err := New(Config{
		Devices:     css,
		Conn:        mqtt.Config{Backoff: retry.Constant(20 * time.Millisecond)},
		ConnectRate: 1000,
		ShardFlag:   "--processes",
		Log:         zerolog.New(&logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.cfg.Limit.Soft != limit {
		t.Fatalf("the fleet read a limit of %d, want %d", f.cfg.Limit.Soft, limit)
	}
	// Take every descriptor left.
	var held []*os.File
	defer func() {
		for _, h := range held {
			_ = h.Close()
		}
	}()
	for {
		h, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		held = append(held, h)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for f.Stats().FdLimited < 3 {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("after 20s, %d devices counted as held back by the limit, want 3; log:\n%s", f.Stats().FdLimited, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // more refusals, still one warning
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	text := logs.String()
	if n := strings.Count(text, `"event":"fd_exhausted"`); n != 1 {
		t.Fatalf("fd_exhausted logged %d times, want once:\n%s", n, text)
	}
	for _, want := range []string{"too many open files", `"limit":128`, "3 connections fit in this process's limit of 128, but its other open files take the rest: raise ulimit -n (the hard limit is 128), or split the fleet over more processes with --processes"} {
		if !strings.Contains(text, want) {
			t.Errorf("the warning lacks %q:\n%s", want, text)
		}
	}
}
