package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/iothub"
)

// cli measures section 5: the wall time of one-shot commands that reboot
// one device without waiting for the twin, start-up included, against the
// warm in-process hub.
func (p *inproc) cli(ctx context.Context, bin string) {
	cfg := p.cfg
	dctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	const id = "cli-dev"
	if _, err := p.startDevice(dctx, &wg, id, device.Config{RebootDelay: device.NoRebootDelay, Quiet: true}); err != nil {
		p.res.note("CLI section skipped: %v", err)
		return
	}
	if err := p.waitRebooted(ctx, id, ""); err != nil {
		p.res.note("CLI section skipped: %v", err)
		return
	}

	type tool struct {
		name string
		argv []string
		env  []string
		dir  string
	}
	tools := []tool{{
		name: "dmctl service reboot --device cli-dev --no-wait",
		argv: []string{bin, "--log-level", "warn", "service", "reboot", "--device", id, "--no-wait", "-o", "json"},
		env:  []string{"IOTHUB_CONNECTION_STRING=" + p.svcCS.Secret(), "DMCTL_CA_FILE=" + p.h.CAFile()},
	}}
	switch {
	case cfg.Node == "":
		p.res.note("azure-iothub CLI peer skipped: %s", cfg.SkipNodeMsg)
	case p.alias == "":
		// noted when the listener failed
	default:
		if err := ensureNodeModules(ctx, cfg); err != nil {
			p.res.note("azure-iothub CLI peer skipped: %v", err)
			break
		}
		host, _, _ := cutHostPort(p.alias)
		tools = append(tools, tool{
			name: "node service_reboot.js (azure-iothub invokeDeviceMethod rebootDevice)",
			argv: []string{cfg.Node, "service_reboot.js"},
			env: []string{
				"IOTHUB_CONNECTION_STRING=HostName=" + host + ";SharedAccessKeyName=" + p.svcCS.SharedAccessKeyName + ";SharedAccessKey=" + p.svcCS.SharedAccessKey,
				"NODE_EXTRA_CA_CERTS=" + p.h.CAFile(), "DEVICE_ID=" + id,
			},
			dir: cfg.NodeDir,
		})
	}
	for _, t := range tools {
		cfg.progress("cli: %s, %d runs", t.name, cfg.CLIRuns)
		var times []time.Duration
		var err error
		for range cfg.CLIRuns {
			before := p.rebootTime(id)
			cmd := exec.CommandContext(ctx, t.argv[0], t.argv[1:]...)
			cmd.Env = append(os.Environ(), t.env...)
			cmd.Dir = t.dir
			t0 := time.Now()
			out, rerr := cmd.CombinedOutput()
			d := time.Since(t0)
			if rerr != nil {
				err = fmt.Errorf("%s: %v: %s", t.name, rerr, lastLines(string(out), 3))
				break
			}
			times = append(times, d)
			// The next run starts once the device is back: rebooted,
			// reconnected and subscribed.
			if err = p.waitRebooted(ctx, id, before); err != nil {
				break
			}
		}
		if err != nil {
			p.res.note("CLI %v", err)
		}
		if len(times) == 0 {
			continue
		}
		s := slices.Clone(times)
		slices.Sort(s)
		p.res.CLI = append(p.res.CLI, cliRow{Tool: t.name, Runs: len(s), Median: s[len(s)/2], Min: s[0], Max: s[len(s)-1]})
	}
}

func cutHostPort(hp string) (host, port string, ok bool) {
	for i := len(hp) - 1; i >= 0; i-- {
		if hp[i] == ':' {
			return hp[:i], hp[i+1:], true
		}
	}
	return hp, "", false
}

// rebootTime is the device's reported rebootTime in the hub's store.
func (p *inproc) rebootTime(id string) string {
	t, err := p.h.Store().Twin(id)
	if err != nil {
		return ""
	}
	if v, ok := t.Properties.Reported["rebootTime"].(string); ok {
		return v
	}
	return ""
}

// waitRebooted waits until the device reported a rebootTime other than
// before and is subscribed to method requests again.
func (p *inproc) waitRebooted(ctx context.Context, id, before string) error {
	deadline := time.Now().Add(30 * time.Second)
	topic := iothub.MethodRequestTopic(device.RebootMethod, "1")
	for {
		if rt := p.rebootTime(id); (before == "" || rt != before) && p.h.Subscribed(id, topic) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s not back within 30 s", id)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.h.ConnectionChanged():
		case <-time.After(5 * time.Millisecond):
		}
	}
}
