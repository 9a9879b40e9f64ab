package cli

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// concurrentRuns are command lines that parse the flags dmctl's commands
// have in common (-o, --ca-file, --connection-string, the service flags)
// and end without touching the network.
var concurrentRuns = []struct {
	args       []string
	code       int
	stdout     string // a substring of stdout
	stderrLine string // a substring of stderr
}{
	{
		args:   []string{"dmctl", "sas", "token", "--expiry", "1700000000", "-o", "json", "--connection-string", "HostName=myhub.azure-devices.net;DeviceId=myDevice;SharedAccessKey=dGhpcyBpcyBhIHRlc3Qga2V5IGZvciBkbWN0bCEhIQ=="},
		stdout: `"token": "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%2BpBJv3UEk%3D&se=1700000000"`,
	},
	{
		args:   []string{"dmctl", "sas", "inspect", "-o", "json", "SharedAccessSignature sr=myhub.azure-devices.net&sig=x&se=1700000000&skn=iothubowner"},
		stdout: `"keyName": "iothubowner"`,
	},
	{
		args:       []string{"dmctl", "service", "device", "list", "-o", "json", "--ca-file", "", "--connection-string="},
		code:       exitUsage,
		stderrLine: "dmctl: error: no service connection string",
	},
	{
		args:       []string{"dmctl", "service", "reboot", "--device", "d1", "-o", "text", "--connection-string="},
		code:       exitUsage,
		stderrLine: "dmctl: error: no service connection string",
	},
	{
		args:       []string{"dmctl", "device", "run", "--ca-file", "", "--connection-string="},
		code:       exitUsage,
		stderrLine: "dmctl: error: no device connection string",
	},
	{args: []string{"dmctl", "sas", "token", "--help"}, stdout: "--output value, -o value"},
	{args: []string{"dmctl", "service", "help", "reboot"}, stdout: "--wait-timeout value"},
	{args: []string{"dmctl", "help", "sas"}, stdout: "inspect"},
	{
		args:       []string{"dmctl", "sas", "token", "-o", "yaml"},
		code:       exitUsage,
		stderrLine: `invalid --output "yaml"`,
	},
}

// TestMainConcurrent runs dmctl command lines from two goroutines at once, as
// two apps in one process. urfave/cli writes into a flag value when it parses
// it, so a flag shared between commands or apps (a package-level
// &cli.StringFlag{...}) makes this test fail under -race.
func TestMainConcurrent(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const goroutines, iterations = 2, 40
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range iterations {
				if ctx.Err() != nil {
					errs <- fmt.Errorf("goroutine %d: stopped after %d runs: %w", g, i, ctx.Err())
					return
				}
				run := concurrentRuns[(g+i)%len(concurrentRuns)]
				var stdout, stderr bytes.Buffer
				code := Main(ctx, run.args, strings.NewReader(""), &stdout, &stderr)
				if code != run.code || !strings.Contains(stdout.String(), run.stdout) || !strings.Contains(stderr.String(), run.stderrLine) {
					errs <- fmt.Errorf("goroutine %d, run %d: %q: exit code %d (want %d)\nstdout:\n%s\nstderr:\n%s",
						g, i, run.args[1:], code, run.code, stdout.String(), stderr.String())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestFlagsNotShared checks that no flag value is shared: not between the
// commands of one app, nor between two apps. Unlike TestMainConcurrent it
// needs no race detector and sees every command, not only those it runs.
func TestFlagsNotShared(t *testing.T) {
	seen := map[cli.Flag]string{}
	var walk func(app int, path string, cmds []*cli.Command)
	check := func(app int, path string, flags []cli.Flag) {
		for _, f := range flags {
			if _, ok := f.(applyCopy); ok {
				continue // urfave/cli's --help and --version: shared, but parsed as copies
			}
			where := fmt.Sprintf("app %d: %s --%s", app, path, f.Names()[0])
			if prev, ok := seen[f]; ok {
				t.Errorf("one flag value serves %s and %s: build flags in a function, one per command", prev, where)
				continue
			}
			seen[f] = where
		}
	}
	walk = func(app int, path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := strings.TrimSpace(path + " " + c.Name)
			check(app, p, c.Flags)
			walk(app, p, c.Subcommands)
		}
	}
	for app := range 2 {
		a := newApp(&bytes.Buffer{}, &bytes.Buffer{})
		check(app, "dmctl", a.Flags)
		walk(app, "dmctl", a.Commands)
	}
	if len(seen) < 50 {
		t.Fatalf("found only %d flags in two apps; the walk is broken", len(seen))
	}
}
