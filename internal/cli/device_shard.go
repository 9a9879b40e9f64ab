package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/fdlimit"
	"github.com/dmctl/dmctl/sas"
)

// A fleet larger than one process may hold runs over several: 'dmctl device
// run --connection-strings-file F --processes N' starts N child processes of
// this program ('dmctl device run' with the same flags and the hidden
// --shard K/N), each with a contiguous slice of F written to its stdin (never
// to argv or a file: connection strings are secrets). A child reports to the
// parent on its stdout, one JSON shardReport per line; its log goes to the
// parent's stderr, every line marked "shard":"K/N". The parent logs the sum
// of the shards' state, writes one ready file, and ends them all: on SIGINT
// or SIGTERM (each child gets SIGTERM and shardStopGrace to exit before it is
// killed), or as soon as one child exits on its own (the others are stopped,
// and the exit code is that child's).

// shardFlag is the hidden flag that makes 'device run' a shard of a fleet.
const shardFlag = "shard"

// maxProcesses bounds --processes.
const maxProcesses = 1024

// devicesPerSource is how many connections a fleet dials from one source
// address towards one hub address: Linux has about 28,000 ephemeral ports
// (32768-60999) per source address.
const devicesPerSource = 25000

// shardStopGrace is how long a child has to exit after SIGTERM.
const shardStopGrace = 10 * time.Second

// openFileLimit reads this process's open-file limit; tests replace it.
var openFileLimit = fdlimit.Open

// processesFlag validates --processes: 0 (automatic) or 1 to maxProcesses.
func processesFlag(c *cli.Context) (int, error) {
	n := c.Int("processes")
	if n < 0 || n > maxProcesses {
		return 0, usageErrorf(fmt.Sprintf("use 0 (as many processes as the open-file limit needs) or 1 to %d", maxProcesses),
			"invalid --processes %d", n)
	}
	return n, nil
}

// fleetProcesses resolves --processes for a fleet of n devices: 0 becomes
// as many processes as limit needs, and each shard must fit in limit (the
// children inherit it).
func fleetProcesses(procs, n int, limit fdlimit.Limit) (int, error) {
	per := limit.Connections()
	if procs == 0 {
		if per <= 0 {
			return 0, &exitError{err: limit.Check(n), code: exitUsage, hint: limit.Hint(n, "")}
		}
		procs = max(1, (n+per-1)/per)
		if procs > maxProcesses {
			return 0, &exitError{err: fmt.Errorf("%d devices need %d processes of at most %d connections; --processes allows %d", n, procs, per, maxProcesses),
				code: exitUsage, hint: limit.Hint(n, "")}
		}
		return procs, nil
	}
	if procs > n {
		return 0, usageErrorf("use at most one process per device", "--processes %d for %d devices", procs, n)
	}
	if procs > 1 {
		if err := limit.Check((n + procs - 1) / procs); err != nil {
			return 0, &exitError{err: fmt.Errorf("%d devices over %d processes: %w", n, procs, err), code: exitUsage, hint: limit.Hint(n, "--processes")}
		}
	}
	return procs, nil
}

// parseSourceAddrs reads --source-addrs A,B,...: IP addresses of this
// machine, each checked by binding to it.
func parseSourceAddrs(v string) ([]net.IP, error) {
	if v == "" {
		return nil, nil
	}
	const hint = "give local IP addresses separated by commas, e.g. --source-addrs 127.0.0.2,127.0.0.3 (ip -brief addr lists this machine's)"
	var out []net.IP
	seen := map[string]bool{}
	for _, part := range strings.Split(v, ",") {
		p := strings.TrimSpace(part)
		ip := net.ParseIP(p)
		switch {
		case p == "":
			return nil, usageErrorf(hint, "invalid --source-addrs %q: an empty address", v)
		case ip == nil:
			return nil, usageErrorf(hint, "invalid --source-addrs: %q is not an IP address", p)
		case ip.IsUnspecified() || ip.IsMulticast():
			return nil, usageErrorf(hint, "invalid --source-addrs: %s cannot be a source address", p)
		case seen[ip.String()]:
			return nil, usageErrorf(hint, "invalid --source-addrs: %s is listed twice", p)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			return nil, usageErrorf(hint, "invalid --source-addrs: %s is not an address of this machine (%v)", p, errors.Unwrap(err))
		}
		_ = ln.Close()
		seen[ip.String()] = true
		out = append(out, ip)
	}
	return out, nil
}

// autoSourceAddrs picks source addresses for a fleet without
// --source-addrs: on Linux, where all of 127/8 reaches the loopback
// interface, a loopback hub and more than devicesPerSource devices get
// 127.0.0.1, 127.0.0.2, ... (one per devicesPerSource devices).
func autoSourceAddrs(css []*sas.ConnectionString) []net.IP {
	return loopbackSources(runtime.GOOS, mqtt.ServerName(css[0]), len(css))
}

func loopbackSources(goos, host string, n int) []net.IP {
	if goos != "linux" || n <= devicesPerSource {
		return nil
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || ip.To4() == nil || !ip.IsLoopback()) {
		return nil
	}
	k := (n + devicesPerSource - 1) / devicesPerSource
	out := make([]net.IP, k)
	for i := range out {
		ip := make(net.IP, 4)
		binary.BigEndian.PutUint32(ip, 127<<24+uint32(i)+1)
		out[i] = ip
	}
	return out
}

func tcpAddrs(ips []net.IP) []net.Addr {
	if len(ips) == 0 {
		return nil
	}
	out := make([]net.Addr, len(ips))
	for i, ip := range ips {
		out[i] = &net.TCPAddr{IP: ip}
	}
	return out
}

// shardID is shard K (from 1) of N.
type shardID struct{ k, n int }

func (s shardID) String() string { return strconv.Itoa(s.k) + "/" + strconv.Itoa(s.n) }

func parseShard(v string) (*shardID, error) {
	if v == "" {
		return nil, nil
	}
	ks, ns, _ := strings.Cut(v, "/")
	k, err1 := strconv.Atoi(ks)
	n, err2 := strconv.Atoi(ns)
	if err1 != nil || err2 != nil || k < 1 || k > n {
		return nil, usageErrorf("--shard is set by 'dmctl device run --processes N' for its children; use --processes", "invalid --shard %q", v)
	}
	return &shardID{k, n}, nil
}

// shardReport is one line a shard writes to its parent: its fleet's
// state, and once every device has connected, what its ready file would
// hold.
type shardReport struct {
	Stats *fleet.Stats     `json:"stats,omitempty"`
	Ready *deviceReadyInfo `json:"ready,omitempty"`
}

// shardReporter writes shardReports, one JSON line each, from any goroutine.
type shardReporter struct {
	mu sync.Mutex
	w  io.Writer
}

func (r *shardReporter) send(rep shardReport) {
	data, err := json.Marshal(rep)
	if err != nil {
		return // a struct of ints and strings always marshals
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.w.Write(append(data, '\n'))
}

// shardPlan is a fleet to run over processes.
type shardPlan struct {
	devices   []*sas.ConnectionString
	processes int
	rate      float64  // connects per second across the fleet
	addrs     []net.IP // source addresses, round robin over all devices
	readyFile string
}

// shardProc is one child of a sharded fleet.
type shardProc struct {
	id       shardID
	from, to int // its devices: plan.devices[from:to]
	cmd      *exec.Cmd
	stats    fleet.Stats
	ready    *deviceReadyInfo
	exit     *shardExit
}

func (s *shardProc) String() string {
	return fmt.Sprintf("shard %s (devices %d-%d, pid %d)", s.id, s.from+1, s.to, s.cmd.Process.Pid)
}

type shardMsg struct {
	k   int
	rep shardReport
}

type shardExit struct {
	k     int
	err   error
	state *os.ProcessState
	at    time.Time
}

// runShards runs the plan's fleet over child processes until c's context
// ends or a child exits, then stops them all and waits for each.
func runShards(c *cli.Context, p shardPlan) error {
	log := loggerFrom(c)
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("sharded fleet: find this program to start its processes: %w", err)
	}
	base, err := shardArgs(c)
	if err != nil {
		return err
	}
	stopCtx, stop := context.WithCancel(context.WithoutCancel(c.Context))
	defer stop()
	msgs := make(chan shardMsg)
	exits := make(chan shardExit)
	errMu := new(sync.Mutex) // the children's stderr lines, when stderr is no file
	shards := make([]*shardProc, 0, p.processes)
	start := time.Now()
	var startErr error
	for k := range p.processes {
		sh := &shardProc{id: shardID{k + 1, p.processes}, from: k * len(p.devices) / p.processes, to: (k + 1) * len(p.devices) / p.processes}
		if startErr = startShard(stopCtx, c, sh, exe, base, p, errMu, msgs, exits); startErr != nil {
			break
		}
		shards = append(shards, sh)
	}
	total := func() fleet.Stats {
		var sum fleet.Stats
		for _, sh := range shards {
			sum = sum.Add(sh.stats)
		}
		return sum
	}
	for _, sh := range shards {
		sh.stats = fleet.Stats{Devices: sh.to - sh.from, Connecting: sh.to - sh.from}
	}
	log.Info().Str("event", "fleet_sharded").Int("devices", len(p.devices)).Int("processes", len(shards)).
		Msgf("fleet: %d devices over %d processes", len(p.devices), p.processes)

	var (
		stopping, announced, logged, pending, fw bool
		stopAt, lastAt                           time.Time
		last                                     fleet.Stats
		failed                                   *shardExit
		runErr                                   = startErr
	)
	stopAll := func() {
		if !stopping {
			stopping, stopAt = true, time.Now()
			stop()
		}
	}
	if startErr != nil {
		stopAll()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	done := c.Context.Done()
	for running := len(shards); running > 0; {
		select {
		case <-done:
			done = nil
			stopAll()
		case m := <-msgs:
			sh := shards[m.k]
			if m.rep.Stats != nil {
				sh.stats, pending = *m.rep.Stats, true
			}
			if m.rep.Ready != nil && sh.ready == nil {
				sh.ready = m.rep.Ready
			}
			if !announced && !stopping && allReady(shards) {
				announced = true
				if err := announceShards(c, p, shards, start); err != nil {
					runErr = err
					stopAll()
				} else if p.readyFile != "" {
					defer os.Remove(p.readyFile)
				}
			}
		case x := <-exits:
			running--
			shards[x.k].exit = &x
			if !stopping {
				failed = &x
				log.Error().Str("event", "shard_exited").Str("shard", shards[x.k].id.String()).Str("status", x.state.String()).
					Msgf("%s ended on its own (%s): stopping the other shards", shards[x.k], x.state)
				stopAll()
			}
		case <-tick.C:
			sum := total()
			fw = fw || sum.FwUpdating+sum.FwFailed > 0
			due := sum.Connected < sum.Devices && time.Since(lastAt) >= fleet.DefaultStatusInterval
			if (pending && (!logged || sum != last)) || due {
				sum.Log(log.Info().Int("processes", len(shards)), fw)
				last, lastAt, logged, pending = sum, time.Now(), true, false
			}
		}
	}
	log.Info().Str("event", "fleet_stopped").Int("devices", len(p.devices)).Int("processes", len(shards)).Msg("fleet stopped")
	if failed != nil {
		return shardFailure(shards[failed.k], false, stopAt)
	}
	if runErr != nil {
		return runErr
	}
	for _, sh := range shards {
		// Wait reports the cancel even when a stopped child exited 0.
		if !sh.exit.state.Success() {
			return shardFailure(sh, true, stopAt)
		}
	}
	return nil
}

func allReady(shards []*shardProc) bool {
	for _, sh := range shards {
		if sh.ready == nil {
			return false
		}
	}
	return len(shards) > 0
}

// announceShards prints the ready line and writes the ready file once
// every shard's devices have connected.
func announceShards(c *cli.Context, p shardPlan, shards []*shardProc, start time.Time) error {
	info := deviceReadyInfo{DeviceIDs: make([]string, 0, len(p.devices)), Target: shards[0].ready.Target}
	for _, sh := range shards {
		info.DeviceIDs = append(info.DeviceIDs, sh.ready.DeviceIDs...)
		info.Shards = append(info.Shards, shardInfo{Pid: sh.cmd.Process.Pid, Devices: sh.to - sh.from})
	}
	took := time.Since(start).Round(time.Millisecond)
	log := loggerFrom(c)
	log.Info().Str("event", "fleet_ready").Int("devices", len(p.devices)).Int("processes", len(shards)).
		Dur("took", took).Msg("every device of every shard has connected")
	if p.readyFile != "" {
		if err := writeReadyFile(p.readyFile, info); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.App.Writer, "fleet: %d devices connected to %s in %s over %d processes, waiting for direct methods (Ctrl-C to stop)\n",
		len(p.devices), info.Target, took, len(shards))
	return nil
}

// shardFailure is the error, and exit code, of a shard that ended badly:
// on its own (its exit code; 1 for a signal or a clean exit nobody asked
// for), or after the parent stopped it (afterStop).
func shardFailure(sh *shardProc, afterStop bool, stopAt time.Time) error {
	x := sh.exit
	const hint = "the shard's own messages (\"shard\":\"K/N\") are above; the other shards were stopped"
	switch code := x.state.ExitCode(); {
	case code < 0 && afterStop && x.at.Sub(stopAt) >= shardStopGrace:
		return &exitError{err: fmt.Errorf("%s did not stop within %s of SIGTERM and was killed", sh, shardStopGrace), code: exitFailure}
	case code < 0:
		return &exitError{err: fmt.Errorf("%s was ended by a signal (%s)", sh, x.state), code: exitFailure, hint: hint}
	case code == 0:
		return &exitError{err: fmt.Errorf("%s exited before the fleet was stopped", sh), code: exitFailure, hint: hint}
	default:
		return &exitError{err: fmt.Errorf("%s exited with code %d", sh, code), code: code, hint: hint}
	}
}

// shardArgs are the arguments every child gets: the global log flags and
// device run's flags as given, less those the parent handles itself.
func shardArgs(c *cli.Context) ([]string, error) {
	var args []string
	for _, g := range []string{"log-level", "log-format"} {
		if c.IsSet(g) {
			args = append(args, "--"+g+"="+c.String(g))
		}
	}
	args = append(args, "device", "run")
	own := map[string]bool{
		"connection-string": true, "connection-strings-file": true, "ready-file": true, "processes": true,
		"source-addrs": true, "connect-rate": true, shardFlag: true, "cert": true, "key": true, "help": true,
	}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if own[name] || !c.IsSet(name) {
			continue
		}
		var v string
		switch f.(type) {
		case *cli.StringFlag:
			v = c.String(name)
		case *cli.DurationFlag:
			v = c.Duration(name).String()
		case *cli.IntFlag:
			v = strconv.Itoa(c.Int(name))
		case *cli.BoolFlag:
			v = strconv.FormatBool(c.Bool(name))
		default:
			return nil, fmt.Errorf("sharded fleet: cannot pass --%s on to the shards", name)
		}
		args = append(args, "--"+name+"="+v)
	}
	return args, nil
}

// startShard starts one child and a goroutine that reads its reports into
// msgs, waits for it and sends its exit to exits. Cancelling ctx sends the
// child SIGTERM; shardStopGrace later it is killed.
func startShard(ctx context.Context, c *cli.Context, sh *shardProc, exe string, base []string, p shardPlan,
	errMu *sync.Mutex, msgs chan<- shardMsg, exits chan<- shardExit) error {
	args := append([]string(nil), base...)
	args = append(args, "--connection-strings-file=-",
		"--connect-rate="+strconv.FormatFloat(p.rate/float64(p.processes), 'g', -1, 64),
		"--"+shardFlag+"="+sh.id.String())
	if len(p.addrs) > 0 {
		// Rotated so that the round robin runs on across the shards.
		addrs := make([]string, len(p.addrs))
		for i := range addrs {
			addrs[i] = p.addrs[(sh.from+i)%len(p.addrs)].String()
		}
		args = append(args, "--source-addrs="+strings.Join(addrs, ","))
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Args[0] = "dmctl" // the name it runs as (and the command a test binary runs)
	cmd.Cancel = func() error {
		if runtime.GOOS == "windows" { // no SIGTERM to send
			return cmd.Process.Kill()
		}
		return cmd.Process.Signal(syscall.SIGTERM)
	}
	cmd.WaitDelay = shardStopGrace
	cmd.SysProcAttr = shardSysProcAttr()
	var in strings.Builder
	for _, cs := range p.devices[sh.from:sh.to] {
		in.WriteString(cs.Secret())
		in.WriteByte('\n')
	}
	cmd.Stdin = strings.NewReader(in.String())
	var lw *lineWriter
	if f, ok := c.App.ErrWriter.(*os.File); ok {
		cmd.Stderr = f
	} else {
		lw = &lineWriter{mu: errMu, w: c.App.ErrWriter}
		cmd.Stderr = lw
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("sharded fleet: shard %s: %w", sh.id, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sharded fleet: start shard %s: %w", sh.id, err)
	}
	sh.cmd = cmd
	log := loggerFrom(c)
	log.Debug().Str("event", "shard_started").Str("shard", sh.id.String()).Int("pid", cmd.Process.Pid).
		Int("devices", sh.to-sh.from).Msg("shard started")
	k := sh.id.k - 1
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
		for sc.Scan() {
			var rep shardReport
			if err := json.Unmarshal(sc.Bytes(), &rep); err != nil {
				log.Warn().Str("event", "shard_report_invalid").Str("shard", sh.id.String()).Err(err).Msg("a shard wrote a line that is no report; ignored")
				continue
			}
			msgs <- shardMsg{k, rep}
		}
		_, _ = io.Copy(io.Discard, out) // after a line too long, let the child go on
		err := cmd.Wait()
		if lw != nil {
			lw.flush()
		}
		exits <- shardExit{k: k, err: err, state: cmd.ProcessState, at: time.Now()}
	}()
	return nil
}

// lineWriter passes whole lines to w, under a lock shared with the other
// children's, so that their logs do not interleave within a line.
type lineWriter struct {
	mu  *sync.Mutex
	w   io.Writer
	buf []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	if i := bytes.LastIndexByte(l.buf, '\n'); i >= 0 {
		l.mu.Lock()
		_, err := l.w.Write(l.buf[:i+1])
		l.mu.Unlock()
		l.buf = append(l.buf[:0], l.buf[i+1:]...)
		if err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// flush writes what is left after the last newline.
func (l *lineWriter) flush() {
	if len(l.buf) > 0 {
		l.mu.Lock()
		_, _ = l.w.Write(append(l.buf, '\n'))
		l.mu.Unlock()
		l.buf = nil
	}
}
