package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/internal/soak"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/rollout"
)

// hubProc is `dmctl hub serve` as a separate process.
type hubProc struct {
	*child
	port   string
	caFile string
	cs     string         // iothubowner connection string
	pool   *x509.CertPool // the hub's CA
	svc    *service.Client
}

// startHubProc starts `dmctl hub serve` on data dir and a free port, with
// extra flags after the bench's own.
func startHubProc(ctx context.Context, cfg *config, bin, dir string, extra ...string) (*hubProc, error) {
	return startHubProcOn(ctx, cfg, bin, dir, "0", extra...)
}

// startHubProcOn is startHubProc on a given port of 127.0.0.1.
func startHubProcOn(ctx context.Context, cfg *config, bin, dir, listenPort string, extra ...string) (*hubProc, error) {
	ready := dir + ".ready.json"
	_ = os.Remove(ready)
	argv := append([]string{bin, "--log-level", "warn", "hub", "serve",
		"--data", dir, "--listen", "127.0.0.1:" + listenPort, "--ready-file", ready}, extra...)
	c, err := start("dmctl hub serve", nil, "", argv...)
	if err != nil {
		return nil, err
	}
	b, err := c.waitFile(ctx, ready, 30*time.Second)
	if err != nil {
		c.stop(5 * time.Second)
		return nil, err
	}
	var info struct {
		Addrs  []string `json:"addrs"`
		CAFile string   `json:"caFile"`
	}
	if err := json.Unmarshal(b, &info); err != nil || len(info.Addrs) == 0 {
		c.stop(5 * time.Second)
		return nil, fmt.Errorf("hub ready file: %q", b)
	}
	h := &hubProc{child: c, caFile: info.CAFile}
	h.port = info.Addrs[0][strings.LastIndexByte(info.Addrs[0], ':')+1:]
	port, _ := strconv.Atoi(h.port)
	if h.cs, err = hub.OwnerConnectionString(dir, "localhost", port); err == nil {
		var pcs *sas.ConnectionString
		if pcs, err = sas.ParseService(h.cs); err == nil {
			pem, rerr := os.ReadFile(h.caFile)
			pool := x509.NewCertPool()
			if rerr != nil || !pool.AppendCertsFromPEM(pem) {
				err = fmt.Errorf("hub CA %s unreadable", h.caFile)
			} else {
				h.pool = pool
				h.svc, err = service.New(pcs, service.WithRootCAs(pool))
			}
		}
	}
	if err != nil {
		c.stop(5 * time.Second)
		return nil, err
	}
	return h, nil
}

func (h *hubProc) stop() {
	if h.svc != nil {
		_ = h.svc.Close()
	}
	h.child.stop(15 * time.Second)
}

// settledRSS reads a process's RSS after a short pause, so that the work of
// the last connects is reflected.
func settledRSS(ctx context.Context, pid int) int64 {
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	n, _ := soak.RSS(pid)
	return n
}

// scaleAndFleet measures sections 3 and 4 with separate processes: a fresh
// `dmctl hub serve` (same data) for each measure, the dmctl fleet as
// `dmctl device run --connection-strings-file`, the Node peer as
// bench/node/devices.js.
func scaleAndFleet(ctx context.Context, cfg *config, res *results, bin string) {
	dir, err := dataDir(cfg, "hub-proc")
	if err != nil {
		res.note("scale skipped: %v", err)
		return
	}
	sizes := slices.Clone(cfg.Scale)
	slices.Sort(sizes)
	if len(sizes) == 0 {
		return
	}
	maxN := sizes[len(sizes)-1]
	var ceil ceilingInfo
	if cfg.CeilingMax > 0 {
		if ceil, err = cfg.ceiling(); err != nil {
			res.note("ceiling fleet skipped: %v", err)
		} else {
			res.Ceiling = &ceil
			maxN = max(maxN, ceil.Devices)
		}
	}
	ids := service.SequentialIDs("fleet", 0, maxN)
	nodeIDs := service.SequentialIDs("node", 0, cfg.NodeScale)
	keys := map[string]string{}

	// Register every device once.
	h, err := startHubProc(ctx, cfg, bin, dir)
	if err != nil {
		res.note("scale skipped: %v", err)
		return
	}
	all := append(slices.Clone(ids), nodeIDs...)
	cfg.progress("scale: registering %d devices", len(all))
	t0 := time.Now()
	for _, r := range h.svc.CreateDevices(ctx, all, 16) {
		if r.Err != nil {
			h.stop()
			res.note("scale skipped: %v", r.Err)
			return
		}
		keys[r.DeviceID] = r.Device.Authentication.SymmetricKey.PrimaryKey
	}
	res.note("registering the %d scale devices over REST (16 in flight, each create durable before the answer) took %s", len(all), round(time.Since(t0)))
	h.stop()

	for _, n := range sizes {
		if ctx.Err() != nil {
			return
		}
		if err := dmctlFleet(ctx, cfg, res, bin, dir, ids[:n], keys, fleetOpts{reboot: slices.Contains(cfg.Fleet, n)}); err != nil {
			res.note("dmctl fleet of %d: %v", n, err)
		}
	}
	if res.Ceiling != nil && ctx.Err() == nil {
		n := res.Ceiling.Devices
		if err := dmctlFleet(ctx, cfg, res, bin, dir, ids[:n], keys, fleetOpts{shutdown: true}); err != nil {
			res.note("dmctl fleet at the ceiling (%d): %v", n, err)
		}
		if err := dmctlFleet(ctx, cfg, res, bin, dir, ids[:n], keys, fleetOpts{processes: cfg.Shards}); err != nil {
			res.note("sharded dmctl fleet at the ceiling (%d over %d processes): %v", n, cfg.Shards, err)
		}
	}
	if cfg.NodeScale > 0 {
		if cfg.Node == "" {
			res.note("Node SDK scale peer skipped: %s", cfg.SkipNodeMsg)
		} else if err := nodeFleet(ctx, cfg, res, bin, dir, nodeIDs, keys); err != nil {
			res.note("Node SDK peer with %d devices: %v", cfg.NodeScale, err)
		}
	}
}

func writeLines(path string, lines []string) error {
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// fleetOpts are the variants of a dmctl fleet line.
type fleetOpts struct {
	reboot    bool // then reboot it through jobs (section 4)
	shutdown  bool // then SIGTERM the hub and time its exit and the fleet's return
	processes int  // > 0: dmctl device run --processes
}

func dmctlFleet(ctx context.Context, cfg *config, res *results, bin, dir string, ids []string, keys map[string]string, o fleetOpts) error {
	n := len(ids)
	h, err := startHubProc(ctx, cfg, bin, dir)
	if err != nil {
		return err
	}
	defer func() { h.stop() }()
	css := make([]string, n)
	for i, id := range ids {
		css[i] = "HostName=localhost:" + h.port + ";DeviceId=" + id + ";SharedAccessKey=" + keys[id]
	}
	file := filepath.Join(cfg.DataDir, fmt.Sprintf("fleet-%d-%d.txt", n, o.processes))
	if err := writeLines(file, css); err != nil {
		return err
	}
	ready := filepath.Join(cfg.DataDir, fmt.Sprintf("fleet-%d-%d.ready.json", n, o.processes))
	_ = os.Remove(ready)
	hubBefore := settledRSS(ctx, h.pid())

	impl := "dmctl device run --connection-strings-file"
	args := []string{"--log-level", "warn", "device", "run", "--connection-strings-file", file, "--ready-file", ready,
		"--connect-rate", strconv.Itoa(cfg.ConnectRate) + "/s", "--reboot-delay", cfg.RebootDelay.String()}
	if o.processes > 0 {
		impl += fmt.Sprintf(" --processes %d", o.processes)
		args = append(args, "--processes", strconv.Itoa(o.processes))
	}
	cfg.progress("scale: %s with %d devices (connect rate %d/s)", impl, n, cfg.ConnectRate)
	t0 := time.Now()
	f, err := start("dmctl device run", []string{"DMCTL_CA_FILE=" + h.caFile}, "", append([]string{bin}, args...)...)
	if err != nil {
		return err
	}
	defer f.stop(30 * time.Second)
	readyJSON, err := f.waitFile(ctx, ready, 60*time.Second+time.Duration(n)*time.Second/time.Duration(max(1, cfg.ConnectRate))*3)
	if err != nil {
		return err
	}
	connect := time.Since(t0)
	row := scaleRow{Impl: impl, Devices: n, Connect: connect,
		ConnectCfg: fmt.Sprintf("--connect-rate %d/s", cfg.ConnectRate), HubBefore: hubBefore,
		Ceiling: res.Ceiling != nil && n == res.Ceiling.Devices}
	if o.processes > 0 {
		if row.RSS, row.Processes, err = shardsRSS(ctx, f.pid(), readyJSON); err != nil {
			return err
		}
	} else {
		row.RSS, row.Processes = settledRSS(ctx, f.pid()), 1
	}
	row.HubAfter, _ = soak.RSS(h.pid())
	row.HubDelta = row.HubAfter - hubBefore
	res.Scale = append(res.Scale, row)

	if o.shutdown {
		if h2 := measureShutdown(ctx, cfg, res, bin, dir, h, n); h2 != nil {
			h = h2 // the deferred stop ends the new hub
		}
	}
	if !o.reboot {
		return nil
	}
	cfg.progress("fleet: dmctl service reboot --query over %d devices (reboot delay %s)", n, cfg.RebootDelay)
	cond := "connectionState = 'Connected'"
	t1 := time.Now()
	cmd := exec.CommandContext(ctx, bin, "--log-level", "warn", "service", "reboot", "--query", cond, "-o", "json",
		"--wait-timeout", "120s")
	cmd.Env = append(os.Environ(), "IOTHUB_CONNECTION_STRING="+h.cs, "DMCTL_CA_FILE="+h.caFile)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	wall := time.Since(t1)
	var fo struct {
		Counts rollout.Counts `json:"counts"`
		Waves  []struct {
			JobIDs []string `json:"jobIds"`
		} `json:"waves"`
	}
	if jerr := json.Unmarshal(out, &fo); jerr != nil {
		return fmt.Errorf("fleet reboot of %d: %v (%v): %s", n, err, jerr, lastLines(stderr.String(), 3))
	}
	fr := fleetRow{Devices: n, Wall: wall, Confirmed: fo.Counts.Succeeded, Unsuccessful: fo.Counts.Unsuccessful() + fo.Counts.Skipped}
	for _, w := range fo.Waves {
		fr.Jobs += len(w.JobIDs)
	}
	if err != nil {
		fr.Detail = fmt.Sprintf("exit: %v", err)
	}
	res.Fleet = append(res.Fleet, fr)
	return nil
}

func nodeFleet(ctx context.Context, cfg *config, res *results, bin, dir string, ids []string, keys map[string]string) error {
	if err := ensureNodeModules(ctx, cfg); err != nil {
		return err
	}
	h, err := startHubProc(ctx, cfg, bin, dir)
	if err != nil {
		return err
	}
	defer h.stop()
	css := make([]string, len(ids))
	for i, id := range ids {
		css[i] = "HostName=localhost;DeviceId=" + id + ";SharedAccessKey=" + keys[id] + ";GatewayHostName=localhost:" + h.port
	}
	hubBefore := settledRSS(ctx, h.pid())
	cfg.progress("scale: %d official Node SDK devices in one Node process", len(ids))
	nd, err := startNodeDevices(ctx, cfg, css, h.caFile)
	if err != nil {
		return err
	}
	defer nd.stop()
	row := scaleRow{Impl: "official Node SDK (azure-iot-device-mqtt), one Node process", Devices: len(ids),
		Connect: nd.ready, ConnectCfg: "100 opens in flight", HubBefore: hubBefore}
	row.RSS = settledRSS(ctx, nd.pid())
	row.HubAfter, _ = soak.RSS(h.pid())
	row.HubDelta = row.HubAfter - hubBefore
	res.Scale = append(res.Scale, row)
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func round(d time.Duration) time.Duration {
	switch {
	case d > 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d > time.Second:
		return d.Round(10 * time.Millisecond)
	default:
		return d.Round(10 * time.Microsecond)
	}
}
