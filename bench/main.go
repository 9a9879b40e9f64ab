// Command bench measures dmctl against its goals and against the official
// Azure IoT Node SDKs, in one run on one machine, and writes the results as a
// markdown table to docs/benchmarks.md.
//
//	go run ./bench            # full run (a few minutes)
//	go run ./bench -smoke     # tiny sizes, seconds (what TestSmoke runs)
//	go run ./bench -soak-only -out /tmp/soak.md   # only the soak (section 6)
//	go run ./bench -firmware-only -out /tmp/fw.md # only the firmware campaign (section 7)
//	go run ./bench -dashboard-only -out /tmp/d.md # only the dashboard under a fleet reboot (section 8)
//
// What it measures, in order:
//  1. direct-method round trip on warm connections: dmctl service -> local
//     hub -> dmctl device; the floor (the least work the hub does for a
//     device round trip on the same port); dmctl service -> hub -> official
//     Node device SDK;
//  2. invocations per second at several concurrencies over many devices;
//  3. devices connected from one process (dmctl fleet vs Node SDK): time to
//     connect all, RSS per device, hub RSS per connection;
//  4. fleet reboot through IoT Hub jobs (dmctl service reboot --query);
//  5. CLI wall time: dmctl service reboot --no-wait vs a one-shot azure-iothub
//     script;
//  6. a bounded soak (internal/soak): devices under sustained method calls
//     and twin patches, the hub process SIGKILLed and restarted half-way;
//     lost acknowledged writes and hub RSS per minute (-soak-only runs just
//     this one);
//  7. a firmware campaign (service/firmware): a fleet at 1.0.0 updated to
//     2.0.0 from a package the hub serves (-firmware-only runs just this
//     one): start to all current, the slowest device, downloads/s, hub RSS;
//  8. the dashboard under a fleet reboot: headless Chromium on the Devices
//     page while every device of a fleet reboots; events the hub recorded,
//     events the page received and lost, events/s it kept up with, and its
//     lag (-dashboard-only runs just this one).
//
// Sections 1, 2 and 5 run against a hub inside the bench process (so that
// -profile covers hub, service client and device); sections 3 and 4 run the
// hub (dmctl hub serve) and the device fleet (dmctl device run
// --connection-strings-file) as separate processes so their memory can be
// read from /proc; section 6 runs the hub as a process (so it can be
// SIGKILLed and its memory read) and the devices inside the bench; section 7
// runs hub and fleet as processes and the campaign inside the bench;
// section 8 runs hub and fleet inside the bench (so the hub's event ring
// can be read) and Chromium as its own process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dmctl/dmctl/service/rollout"
	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/internal/fdlimit"
)

// config holds the sizes of one run.
type config struct {
	Calls        int           // sequential calls per latency path
	Warmup       int           // calls before measuring
	Devices      int           // devices the throughput calls are spread over
	Concurrency  []int         // throughput concurrency levels
	ThroughputD  time.Duration // how long each throughput level runs
	Scale        []int         // dmctl fleet sizes (connected from one process)
	NodeScale    int           // Node SDK devices in one Node process (0: skip)
	Fleet        []int         // fleet reboot sizes (must be among Scale)
	RebootDelay  time.Duration // simulated reboot time for the fleet reboot
	CLIRuns      int           // runs of each one-shot CLI
	ConnectRate  int           // fleet connect attempts per second
	AliasAddr    string        // loopback alias listener on 443 for the Node service peer
	ProfileDir   string        // write CPU profiles here ("" none)
	Out          string        // markdown file ("" none)
	Node         string        // node binary ("" skip Node peers)
	NodeDir      string        // bench/node
	ModDir       string        // module root
	DataDir      string        // parent of the hubs' data dirs ("" temp)
	Command      string        // command line shown in the report
	Log          zerolog.Logger
	Progress     io.Writer
	SkipNodeMsg  string // why the Node peers are skipped, when they are
	Smoke        bool
	DeviceExtras int           // unused devices registered on the scale hub (registry size)
	SoakDevices  int           // soak devices (0: skip the soak)
	SoakTime     time.Duration // soak load duration
	SoakOnly     bool          // run only the soak
	// FirmwareDevices is the fleet of the firmware campaign (0: skip).
	FirmwareDevices int
	FirmwareWaves   string // the campaign's wave plan (rollout.ParseWaves)
	FirmwareOnly    bool   // run only the firmware campaign
	// DashboardDevices is the fleet of the dashboard section (0: skip).
	DashboardDevices int
	DashboardOnly    bool // run only the dashboard section
	// CeilingMax bounds the ceiling fleet of section 3 (0 skips it): the
	// largest fleet the open-file limit allows, in one process and over
	// Shards processes, and the hub's shutdown with it connected.
	CeilingMax int
	Shards     int
	// AnatomyDevices is the fleet of section 3's per-side breakdown of an
	// idle connection (0: skip).
	AnatomyDevices int
	// ceilingLimit, when set, stands for the processes' open-file limit
	// (the smoke run plans a tiny ceiling with it).
	ceilingLimit *fdlimit.Limit
	Baseline     string   // an earlier report whose figures are shown next to this run's ("" none)
	baseline     *results // what readBaseline found in it
}

func main() {
	var (
		cfg         config
		conc, scale string
		fleetSizes  string
		noNode      bool
	)
	flag.IntVar(&cfg.Calls, "calls", 5000, "sequential direct-method calls per latency path")
	flag.IntVar(&cfg.Warmup, "warmup", 500, "calls before measuring each latency path")
	flag.IntVar(&cfg.Devices, "devices", 100, "devices the throughput calls are spread over")
	flag.StringVar(&conc, "concurrency", "1,16,64", "throughput concurrency levels")
	flag.DurationVar(&cfg.ThroughputD, "throughput-time", 5*time.Second, "duration of each throughput level")
	flag.StringVar(&scale, "scale", "1000,10000", "dmctl fleet sizes connected from one process")
	flag.IntVar(&cfg.NodeScale, "node-devices", 1000, "official Node SDK devices in one Node process (0 skips)")
	flag.IntVar(&cfg.CeilingMax, "ceiling-max", 100000, "largest ceiling fleet: section 3 runs the largest fleet the open-file limit allows, up to this (0 skips it)")
	flag.IntVar(&cfg.AnatomyDevices, "anatomy-devices", 2000, "idle devices of section 3's breakdown of one connection's memory, each side measured by the Go runtime (0 skips it)")
	flag.IntVar(&cfg.Shards, "shards", 2, "processes of the sharded ceiling fleet (dmctl device run --processes)")
	flag.StringVar(&cfg.Baseline, "baseline", "", "an earlier report (markdown, as -out writes it) whose figures the goals table shows next to this run's")
	flag.StringVar(&fleetSizes, "fleet", "1000,10000", "fleet reboot sizes (each must be in -scale)")
	flag.DurationVar(&cfg.RebootDelay, "reboot-delay", time.Second, "simulated reboot time in the fleet reboot")
	flag.IntVar(&cfg.CLIRuns, "cli-runs", 7, "runs of each one-shot CLI")
	flag.IntVar(&cfg.ConnectRate, "connect-rate", 1000, "fleet connect attempts per second (dmctl device run --connect-rate)")
	flag.StringVar(&cfg.AliasAddr, "alias-addr", "127.0.0.2:443", "extra hub listener for the azure-iothub peer, which always dials port 443 (\"\" skips that peer)")
	flag.StringVar(&cfg.ProfileDir, "profile", "", "write CPU profiles of the in-process sections to this directory")
	flag.StringVar(&cfg.Out, "out", "docs/benchmarks.md", "markdown report (\"\" prints only)")
	flag.StringVar(&cfg.DataDir, "data", "", "directory for the hubs' data (default: a temporary directory)")
	flag.BoolVar(&noNode, "no-node", false, "skip the official Node SDK peers")
	flag.IntVar(&cfg.SoakDevices, "soak-devices", 2000, "devices of the soak (0 skips it)")
	flag.DurationVar(&cfg.SoakTime, "soak-time", 3*time.Minute, "load duration of the soak (the hub is SIGKILLed half-way)")
	flag.BoolVar(&cfg.SoakOnly, "soak-only", false, "run only the soak (section 6); the report goes to -out only when that is given")
	flag.IntVar(&cfg.FirmwareDevices, "firmware-devices", 10000, "devices of the firmware campaign (0 skips it)")
	flag.StringVar(&cfg.FirmwareWaves, "firmware-waves", "100%", "wave plan of the firmware campaign, e.g. 10%,100%")
	flag.BoolVar(&cfg.FirmwareOnly, "firmware-only", false, "run only the firmware campaign (section 7); the report goes to -out only when that is given")
	flag.IntVar(&cfg.DashboardDevices, "dashboard-devices", 1000, "devices of the dashboard section, rebooted with Chromium on the Devices page (0 skips it)")
	flag.BoolVar(&cfg.DashboardOnly, "dashboard-only", false, "run only the dashboard under a fleet reboot (section 8); the report goes to -out only when that is given")
	flag.BoolVar(&cfg.Smoke, "smoke", false, "tiny sizes: checks that every measurement works, in seconds")
	flag.Parse()
	outSet := false
	flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
	if (cfg.SoakOnly || cfg.FirmwareOnly || cfg.DashboardOnly) && !outSet {
		cfg.Out = "" // a one-section report must not replace docs/benchmarks.md
	}

	var err error
	if cfg.Concurrency, err = parseInts(conc); err == nil {
		if cfg.Scale, err = parseInts(scale); err == nil {
			cfg.Fleet, err = parseInts(fleetSizes)
		}
	}
	if err == nil {
		err = cfg.check()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if cfg.Smoke {
		cfg.smoke()
	}
	if cfg.Baseline != "" {
		// Read before the run: -out may be the same file.
		if cfg.baseline, err = readBaseline(cfg.Baseline); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -baseline:", err)
			os.Exit(2)
		}
	}
	cfg.Command = "go run ./bench " + strings.Join(os.Args[1:], " ")
	cfg.Progress = os.Stderr
	cfg.Log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	if !noNode {
		cfg.Node, cfg.SkipNodeMsg = findNode()
	} else {
		cfg.SkipNodeMsg = "-no-node"
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, &cfg)
	if res != nil {
		md := res.Markdown(&cfg)
		fmt.Print(md)
		if cfg.Out != "" {
			werr := os.MkdirAll(filepath.Dir(cfg.Out), 0o755)
			if werr == nil {
				werr = os.WriteFile(cfg.Out, []byte(md), 0o644)
			}
			if werr != nil {
				fmt.Fprintln(os.Stderr, "bench:", werr)
				os.Exit(1)
			}
			fmt.Fprintln(os.Stderr, "bench: wrote", cfg.Out)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// check rejects flag combinations the run cannot honour.
func (c *config) check() error {
	if c.SoakOnly && c.FirmwareOnly {
		return errors.New("-soak-only and -firmware-only exclude each other")
	}
	if c.DashboardOnly && (c.SoakOnly || c.FirmwareOnly) {
		return errors.New("-dashboard-only excludes -soak-only and -firmware-only")
	}
	if c.CeilingMax < 0 {
		return fmt.Errorf("-ceiling-max %d: want 0 (skip) or more", c.CeilingMax)
	}
	if c.CeilingMax > 0 && c.Shards < 2 {
		return fmt.Errorf("-shards %d: the sharded ceiling line needs 2 or more processes", c.Shards)
	}
	if c.AnatomyDevices < 0 {
		return fmt.Errorf("-anatomy-devices %d: want 0 (skip) or more", c.AnatomyDevices)
	}
	if c.DashboardDevices < 0 {
		return fmt.Errorf("-dashboard-devices %d: want 0 (skip) or more", c.DashboardDevices)
	}
	if c.FirmwareDevices < 0 {
		return fmt.Errorf("-firmware-devices %d: want 0 (skip) or more", c.FirmwareDevices)
	}
	if _, err := rollout.ParseWaves(c.FirmwareWaves); err != nil {
		return fmt.Errorf("-firmware-waves %q: %w", c.FirmwareWaves, err)
	}
	return nil
}

// smoke shrinks every size so that the whole run takes seconds.
func (c *config) smoke() {
	c.Calls = 50
	c.Warmup = 5
	c.Devices = 4
	c.Concurrency = []int{1, 4}
	c.ThroughputD = 300 * time.Millisecond
	c.Scale = []int{5}
	c.Fleet = []int{5}
	c.NodeScale = min(c.NodeScale, 3)
	c.RebootDelay = 100 * time.Millisecond
	c.CLIRuns = 1
	c.SoakDevices = min(c.SoakDevices, 20)
	c.SoakTime = 4 * time.Second
	c.FirmwareDevices = min(c.FirmwareDevices, 20)
	c.DashboardDevices = min(c.DashboardDevices, 5)
	c.AnatomyDevices = min(c.AnatomyDevices, 200)
	if c.CeilingMax > 0 {
		c.ceilingLimit = &fdlimit.Limit{Soft: fdlimit.Reserve + 6, Hard: fdlimit.Reserve + 6}
	}
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("invalid size %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (c *config) progress(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "bench: "+format+"\n", args...)
	}
}
