package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/sas"
)

// deviceCommand is `dmctl device`: the simulated device.
func deviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "device",
		Usage: "simulated device that answers rebootDevice, and X.509 certificates for devices",
		Subcommands: []*cli.Command{
			{
				Name:  "run",
				Usage: "connect as a device or module, handle direct methods and reboots until interrupted",
				Description: "Connects to IoT Hub over MQTT (TLS, port 8883) or MQTT over WebSockets (port 443;\n" +
					"HTTPS_PROXY is honoured), answers rebootDevice with 200, goes offline for the\n" +
					"reboot delay (a {\"delaySeconds\": N} payload overrides it, 0-3600), reconnects and\n" +
					"reports rebootTime. Unknown methods are answered with 404, payloads that are not\n" +
					"JSON with 400. Reconnects after any drop with capped exponential backoff and\n" +
					"renews its SAS token at 80% of --sas-ttl. Stops cleanly on SIGINT/SIGTERM.\n\n" +
					"A connection string with ModuleId connects as that module of the device (same\n" +
					"methods and twin). One with x509=true instead of a key authenticates with the\n" +
					"client certificate of --cert and --key (PEM; 'dmctl device cert create' makes\n" +
					"them); there is no token to renew. --model-id announces an IoT Plug and Play\n" +
					"model (dtmi:...;N).\n\n" +
					"With --connection-strings-file, runs every device of the file (one connection string\n" +
					"per line; blank lines and lines starting with # are ignored; - reads stdin) in this\n" +
					"process, each with its own connection. Connects, reconnects included, are paced by\n" +
					"--connect-rate. The fleet's state is logged at info level; each device's events at\n" +
					"debug level. One line is printed once every device has connected.\n\n" +
					"A connection costs an open file: a fleet larger than this process's open-file limit\n" +
					"(ulimit -n, less 64 for the process) fails at once with the numbers and the fix, exit\n" +
					"2. When the kernel refuses a connection anyway (EMFILE, ENFILE), that is logged once\n" +
					"with the same hint and the state line counts the devices held back. --processes N\n" +
					"runs the fleet over N child processes, each with a slice of the file (given on its\n" +
					"stdin, never on its command line) and --connect-rate/N; 0 starts as many as the\n" +
					"limit needs. The parent logs one state line for all of them, writes one ready file\n" +
					"(with each process's pid) and stops them all on SIGINT/SIGTERM (10 s each, then\n" +
					"killed). If one process ends on its own, the others are stopped and the exit code is\n" +
					"its own (1 if a signal ended it). --source-addrs A,B dials from those local addresses,\n" +
					"devices round robin: each has about 28,000 ephemeral ports towards one hub address.\n" +
					"On Linux, a loopback hub and more than 25,000 devices without --source-addrs dial\n" +
					"from 127.0.0.1, 127.0.0.2, ... (one per 25,000 devices).\n\n" +
					"Firmware update (the Azure firmware-update tutorial's twin schema): a desired\n" +
					"firmware {fwVersion, fwPackageURI, fwPackageCheckValue} whose fwVersion differs from\n" +
					"the running one (--firmware-version at start) is downloaded (https:// trusting the\n" +
					"system roots and --ca-file, or file:///path; at most 64 MiB, 5 min), its SHA-256\n" +
					"checked against fwPackageCheckValue (64 hex digits in any case, or base64 of the\n" +
					"digest), applied (--firmware-apply-delay) and rebooted into (offline for\n" +
					"--reboot-delay). Reported firmware.fwUpdateStatus goes downloading, verifying,\n" +
					"applying, rebooting, current; a failure reports error with the reason in\n" +
					"fwUpdateSubstatus, then rolledback on the old version. A newer desired version\n" +
					"during an update wins: an update not yet rebooting is abandoned and the newer one\n" +
					"starts; one already rebooting finishes first. The factoryReset method answers 200,\n" +
					"restores --firmware-version, removes rebootTime, reboots and reports\n" +
					"factoryResetTime. A fleet downloads at most --download-concurrency packages at once.",
				Flags: []cli.Flag{
					&cli.StringFlag{
						Name:    "connection-string",
						Usage:   "device or module connection string (HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=... or x509=true)",
						EnvVars: []string{"IOTHUB_DEVICE_CONNECTION_STRING"},
					},
					&cli.StringFlag{
						Name:  "cert",
						Usage: "x509=true identity: its client certificate (PEM file)",
					},
					&cli.StringFlag{
						Name:  "key",
						Usage: "x509=true identity: the certificate's private key (PEM file)",
					},
					&cli.StringFlag{
						Name:  "model-id",
						Usage: "announce this IoT Plug and Play model id (DTMI, e.g. dtmi:com:example:Thermostat;1)",
					},
					&cli.StringFlag{
						Name:  "connection-strings-file",
						Usage: "run a fleet: one device connection string per line (- for stdin)",
					},
					&cli.StringFlag{
						Name:  "connect-rate",
						Usage: "fleet: connect attempts per second across all devices, reconnects included (N, N/s or N/m)",
						Value: strconv.Itoa(fleet.DefaultConnectRate) + "/s",
					},
					&cli.StringFlag{
						Name:  "ready-file",
						Usage: "once connected (every device, for a fleet) write this JSON file {\"deviceIds\":[...],\"target\":\"host:port\"} (and \"shards\":[{\"pid\",\"devices\"}] with --processes); removed on exit",
					},
					&cli.StringFlag{
						Name:  "transport",
						Usage: "mqtt (TLS, port 8883) or mqtt-ws (WebSockets, port 443); a port in HostName wins",
						Value: string(mqtt.TransportMQTT),
					},
					&cli.DurationFlag{
						Name:  "reboot-delay",
						Usage: "how long a reboot keeps the device offline",
						Value: device.DefaultRebootDelay,
					},
					&cli.StringFlag{
						Name:  "firmware-version",
						Usage: "firmware version the device runs at start and after a factoryReset",
						Value: device.DefaultFirmwareVersion,
					},
					&cli.DurationFlag{
						Name:  "firmware-apply-delay",
						Usage: "how long applying a downloaded firmware package takes (0s to 1h)",
						Value: device.DefaultFirmwareApplyDelay,
					},
					&cli.IntFlag{
						Name:  "download-concurrency",
						Usage: "firmware packages downloading at once in this process, across a fleet (1-10000)",
						Value: device.DefaultDownloadConcurrency,
					},
					&cli.DurationFlag{
						Name:  "sas-ttl",
						Usage: "lifetime of each SAS token; renewed at 80% of it",
						Value: mqtt.DefaultSASTTL,
					},
					&cli.DurationFlag{
						Name:  "max-backoff",
						Usage: "longest wait between reconnect attempts",
						Value: mqtt.DefaultMaxBackoff,
					},
					caFileFlag(),
					&cli.IntFlag{
						Name:  "processes",
						Usage: "fleet: split it over N child processes, each with its slice of the file (0: as many as the open-file limit needs)",
						Value: 1,
					},
					&cli.StringFlag{
						Name:  "source-addrs",
						Usage: "fleet: local IP addresses to dial from, devices spread over them round robin (A,B,...)",
					},
					&cli.StringFlag{
						Name:   shardFlag,
						Usage:  "internal: this process is shard K of N of a fleet; connection strings on stdin, reports on stdout",
						Hidden: true,
					},
				},
				Action: runDevice,
			},
			deviceCertCommand(),
		},
	}
}

func runDevice(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErrorf("run 'dmctl device run --help' for usage", "unexpected argument %q", c.Args().First())
	}
	opts, err := deviceRunOptions(c)
	if err != nil {
		return err
	}
	if file := c.String("connection-strings-file"); file != "" {
		// The environment variable is a default that a file overrides; an
		// explicit --connection-string is a contradiction.
		if cs := c.String("connection-string"); cs != "" && cs != os.Getenv("IOTHUB_DEVICE_CONNECTION_STRING") {
			return usageErrorf("pass one device with --connection-string or many with --connection-strings-file",
				"--connection-string and --connection-strings-file are mutually exclusive")
		}
		if c.IsSet("cert") || c.IsSet("key") {
			return usageErrorf("run an x509 device on its own with --connection-string, --cert and --key",
				"--cert and --key go with --connection-string, not --connection-strings-file")
		}
		return runFleet(c, file, opts)
	}
	for _, name := range []string{"connect-rate", "processes", "source-addrs"} {
		if c.IsSet(name) {
			return usageErrorf("--"+name+" is for a fleet; add --connection-strings-file", "--%s needs --connection-strings-file", name)
		}
	}
	raw := c.String("connection-string")
	if raw == "" {
		return usageErrorf("pass --connection-string or set IOTHUB_DEVICE_CONNECTION_STRING ('dmctl service device create' prints one), or --connection-strings-file for many devices",
			"no device connection string")
	}
	cs, err := sas.ParseDevice(raw)
	if err != nil {
		return withHint(fmt.Errorf("device connection string: %w", err),
			"expected HostName=<hub>;DeviceId=<id>;SharedAccessKey=<base64 key> (add ;ModuleId=<id> for a module, or use x509=true instead of the key with --cert and --key)")
	}
	log := loggerFrom(c)
	cfg := opts.conn
	cfg.ConnectionString = cs
	cfg.RootCAs = opts.pool
	cfg.Log = log
	if cfg.Certificate, err = clientCertificate(c, cs); err != nil {
		return err
	}
	conn, err := mqtt.New(cfg)
	if err != nil {
		return usageErrorf("use a device connection string with SharedAccessKey, SharedAccessSignature, or x509=true with --cert and --key", "%v", err)
	}
	dcfg := opts.device
	dcfg.Log = log
	dev := device.New(conn, dcfg)

	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- dev.Run(ctx) }()
	id, kind := cs.DeviceID, "device"
	if cs.ModuleID != "" {
		id, kind = cs.DeviceID+"/"+cs.ModuleID, "module"
	}
	err = awaitRun(conn.Ready(), errc, cancel, opts.readyFile, func() deviceReadyInfo {
		fmt.Fprintf(c.App.Writer, "%s %s connected to %s, waiting for direct methods (Ctrl-C to stop)\n",
			kind, id, conn.Target())
		return deviceReadyInfo{DeviceIDs: []string{id}, Target: conn.Target()}
	})
	switch {
	case !errors.Is(err, device.ErrUnauthorized):
	case cs.X509:
		return &exitError{err: err, code: exitAuth,
			hint: "check that the " + kind + " is registered with this certificate's thumbprint ('dmctl device cert create' prints it) or with a CA the hub trusts (the certificate's CN must then be the device id), and that it is enabled"}
	case cs.ModuleID != "":
		return &exitError{err: err, code: exitAuth,
			hint: "check DeviceId, ModuleId and SharedAccessKey ('dmctl service module connection-string' prints the current ones) and that the device is enabled"}
	}
	return err
}

// clientCertificate loads --cert and --key for an x509 identity, refuses
// them for any other, and warns about a certificate that is not valid now.
func clientCertificate(c *cli.Context, cs *sas.ConnectionString) (*tls.Certificate, error) {
	certFile, keyFile := c.String("cert"), c.String("key")
	switch {
	case !cs.X509 && (certFile != "" || keyFile != ""):
		return nil, usageErrorf("a client certificate goes with a connection string HostName=<hub>;DeviceId=<id>;x509=true; a SAS identity needs none",
			"--cert and --key are for an x509=true identity; this connection string authenticates with SAS")
	case !cs.X509:
		return nil, nil
	case certFile == "" && keyFile == "":
		return nil, usageErrorf("give the certificate with --cert FILE and its private key with --key FILE ('dmctl device cert create --device "+cs.DeviceID+"' makes both)",
			"the connection string is for an x509 identity: --cert and --key are required")
	case certFile == "" || keyFile == "":
		return nil, usageErrorf("give the certificate with --cert FILE and its private key with --key FILE", "--cert and --key go together")
	}
	cert, err := loadClientCert(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	log := loggerFrom(c)
	switch now := time.Now(); {
	case now.After(cert.Leaf.NotAfter):
		log.Warn().Time("not_after", cert.Leaf.NotAfter).
			Msgf("the client certificate expired on %s: the hub will refuse it", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.Leaf.NotBefore):
		log.Warn().Time("not_before", cert.Leaf.NotBefore).
			Msgf("the client certificate is not valid before %s: the hub will refuse it", cert.Leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

// awaitRun waits for a running device or fleet: once ready, it calls
// announce and writes what announce returns to readyFile (if any, removed
// again at the end), then waits for Run's error in errc.
func awaitRun(ready <-chan struct{}, errc chan error, cancel context.CancelFunc, readyFile string, announce func() deviceReadyInfo) error {
	var err error
	select {
	case <-ready:
		info := announce()
		if readyFile != "" {
			if werr := writeReadyFile(readyFile, info); werr != nil {
				cancel()
				<-errc
				return werr
			}
			defer os.Remove(readyFile)
		}
		err = <-errc
	case err = <-errc:
	}
	return deviceRunError(err)
}

// deviceRunError adds exit codes and hints to what a device's Run returned.
func deviceRunError(err error) error {
	switch {
	case errors.Is(err, device.ErrUnauthorized):
		return &exitError{err: err, code: exitAuth,
			hint: "check DeviceId and SharedAccessKey ('dmctl service device connection-string' prints the current ones) and that the device is enabled"}
	case errors.Is(err, device.ErrUntrusted):
		return withHint(err, "trust the hub's CA with --ca-file or DMCTL_CA_FILE ('dmctl hub serve' keeps it as ca.pem in its data folder)")
	}
	return err
}

// runOptions are the flags a single device and a fleet share.
type runOptions struct {
	conn      mqtt.Config   // Transport, ClientType, SASTTL, MaxBackoff
	device    device.Config // RebootDelay, firmware, the shared Downloader
	pool      *x509.CertPool
	readyFile string
}

func deviceRunOptions(c *cli.Context) (runOptions, error) {
	var o runOptions
	transport := mqtt.Transport(c.String("transport"))
	if transport != mqtt.TransportMQTT && transport != mqtt.TransportWebSockets {
		return o, usageErrorf("use --transport mqtt or --transport mqtt-ws", "invalid --transport %q", transport)
	}
	delay := c.Duration("reboot-delay")
	switch {
	case delay < 0 || delay > device.MaxRebootDelaySeconds*time.Second:
		return o, usageErrorf("use a duration from 0s to 1h", "invalid --reboot-delay %s", delay)
	case delay == 0:
		delay = device.NoRebootDelay
	}
	ttl := c.Duration("sas-ttl")
	if ttl < time.Second {
		return o, usageErrorf("use a duration of at least 1s, e.g. 1h", "invalid --sas-ttl %s", ttl)
	}
	maxBackoff := c.Duration("max-backoff")
	if maxBackoff <= 0 {
		return o, usageErrorf("use a positive duration, e.g. 60s", "invalid --max-backoff %s", maxBackoff)
	}
	modelID := c.String("model-id")
	if err := mqtt.CheckModelID(modelID); err != nil {
		return o, usageErrorf("a model id looks like dtmi:com:example:Thermostat;1", "invalid --model-id: %v", err)
	}
	pool, err := loadCAPool(c)
	if err != nil {
		return o, err
	}
	fwVersion := c.String("firmware-version")
	if fwVersion == "" || len(fwVersion) > 128 || strings.ContainsFunc(fwVersion, unicode.IsSpace) {
		return o, usageErrorf("use a version such as 1.0.0 (no spaces, at most 128 characters)", "invalid --firmware-version %q", fwVersion)
	}
	apply := c.Duration("firmware-apply-delay")
	switch {
	case apply < 0 || apply > time.Hour:
		return o, usageErrorf("use a duration from 0s to 1h", "invalid --firmware-apply-delay %s", apply)
	case apply == 0:
		apply = -1 // none
	}
	downloads := c.Int("download-concurrency")
	if downloads < 1 || downloads > 10000 {
		return o, usageErrorf("use a number from 1 to 10000", "invalid --download-concurrency %d", downloads)
	}
	o.conn = mqtt.Config{
		Transport:  transport,
		ClientType: "dmctl/" + resolveVersion(),
		SASTTL:     ttl,
		MaxBackoff: maxBackoff,
		ModelID:    modelID,
	}
	o.device = device.Config{
		RebootDelay:        delay,
		FirmwareVersion:    fwVersion,
		FirmwareApplyDelay: apply,
		// One downloader for the process: a fleet's devices share its bound.
		Downloader: device.NewDownloader(device.DownloaderConfig{RootCAs: pool, Concurrency: downloads}),
	}
	o.pool = pool
	o.readyFile = c.String("ready-file")
	return o, nil
}

func runFleet(c *cli.Context, file string, opts runOptions) error {
	rate, err := parseConnectRate(c.String("connect-rate"))
	if err != nil {
		return err
	}
	procs, err := processesFlag(c)
	if err != nil {
		return err
	}
	addrs, err := parseSourceAddrs(c.String("source-addrs"))
	if err != nil {
		return err
	}
	shard, err := parseShard(c.String(shardFlag))
	if err != nil {
		return err
	}
	css, err := readConnectionStrings(c, file)
	if err != nil {
		return err
	}
	limit, err := openFileLimit()
	if err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	if procs, err = fleetProcesses(procs, len(css), limit); err != nil {
		return err
	}
	log := loggerFrom(c)
	if addrs == nil {
		addrs = autoSourceAddrs(css)
		switch {
		case shard != nil:
		case len(addrs) > 0:
			log.Info().Str("event", "source_addrs").Int("addrs", len(addrs)).Str("first", addrs[0].String()).Str("last", addrs[len(addrs)-1].String()).
				Msgf("a loopback hub and more than %d devices: dialing from %s to %s", devicesPerSource, addrs[0], addrs[len(addrs)-1])
		case len(css) > devicesPerSource:
			log.Warn().Str("event", "source_addrs").Int("devices", len(css)).
				Msgf("%d devices dial from one source address, which has about 28,000 ephemeral ports towards one hub address: give several with --source-addrs", len(css))
		}
	}
	if procs > 1 {
		return runShards(c, shardPlan{devices: css, processes: procs, rate: rate, addrs: addrs, readyFile: opts.readyFile})
	}
	if err := limit.Check(len(css)); err != nil {
		return &exitError{err: err, code: exitUsage, hint: limit.Hint(len(css), "--processes")}
	}
	opts.conn.RootCAs = opts.pool
	cfg := fleet.Config{
		Devices:     css,
		Conn:        opts.conn,
		Device:      opts.device,
		ConnectRate: rate,
		Log:         log,
		LocalAddrs:  tcpAddrs(addrs),
		Limit:       limit,
		ShardFlag:   "--processes",
	}
	gc := fleet.NewConnectGC()
	cfg.OnStats = gc.Observe
	var report *shardReporter
	if shard != nil {
		report = &shardReporter{w: c.App.Writer}
		cfg.Log = log.With().Str("shard", shard.String()).Logger()
		cfg.QuietState = true
		cfg.OnStats = func(st fleet.Stats) {
			gc.Observe(st)
			report.send(shardReport{Stats: &st})
		}
	}
	f, err := fleet.New(cfg)
	if err != nil {
		return usageErrorf("check the connection strings file", "%v", err)
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	start := time.Now()
	errc := make(chan error, 1)
	gc.Connecting()
	go func() { errc <- f.Run(ctx) }()
	return awaitRun(f.Ready(), errc, cancel, opts.readyFile, func() deviceReadyInfo {
		took := f.ReadyAt().Sub(start).Round(time.Millisecond)
		// Connecting (TLS handshakes above all) leaves garbage that a fleet
		// in steady state never reuses: give it back to the system now.
		gc.Connected()
		info := deviceReadyInfo{DeviceIDs: f.DeviceIDs(), Target: f.Target()}
		if report != nil {
			st := f.Stats()
			report.send(shardReport{Stats: &st, Ready: &info})
			return info
		}
		fmt.Fprintf(c.App.Writer, "fleet: %d devices connected to %s in %s, waiting for direct methods (Ctrl-C to stop)\n",
			f.Len(), f.Target(), took)
		return info
	})
}

// parseConnectRate reads N, N/s or N/m as connects per second.
func parseConnectRate(v string) (float64, error) {
	num, unit, _ := strings.Cut(strings.TrimSpace(v), "/")
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	per := 1.0
	switch strings.TrimSpace(unit) {
	case "", "s":
	case "m":
		per = 60
	default:
		err = errors.New("unit")
	}
	if err != nil || n <= 0 || n > 1e6 {
		return 0, usageErrorf("use a positive number of connects per second or minute, e.g. 200/s or 600/m", "invalid --connect-rate %q", v)
	}
	return n / per, nil
}

// readConnectionStrings reads one device connection string per line; blank
// lines and # comments are skipped. Errors name the line, never its text.
func readConnectionStrings(c *cli.Context, file string) ([]*sas.ConnectionString, error) {
	var r io.Reader
	name := file
	if file == "-" {
		r, name = c.App.Reader, "stdin"
		if r == nil {
			r = os.Stdin
		}
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, usageErrorf("check --connection-strings-file", "read connection strings: %v", err)
		}
		defer f.Close()
		r = f
	}
	css, err := parseConnectionStrings(r, name)
	if err != nil {
		return nil, err
	}
	if len(css) == 0 {
		return nil, usageErrorf("put one device connection string per line ('dmctl service device create' prints one)",
			"%s: no device connection strings", name)
	}
	return css, nil
}

func parseConnectionStrings(r io.Reader, name string) ([]*sas.ConnectionString, error) {
	const hint = "each line must be a device or module connection string HostName=<hub>;DeviceId=<id>[;ModuleId=<id>];SharedAccessKey=<base64 key>; blank lines and lines starting with # are ignored"
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var css []*sas.ConnectionString
	seen := map[string]int{}
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		cs, err := sas.ParseDevice(text)
		if err != nil {
			return nil, usageErrorf(hint, "%s:%d: %v", name, line, err)
		}
		if cs.X509 {
			return nil, usageErrorf("run an x509 identity on its own: dmctl device run --connection-string ... --cert FILE --key FILE",
				"%s:%d: an x509=true identity needs a client certificate, which a connection strings file cannot give", name, line)
		}
		id := cs.DeviceID
		if cs.ModuleID != "" {
			id += "/" + cs.ModuleID
		}
		if prev, dup := seen[id]; dup {
			return nil, usageErrorf("each identity can connect only once", "%s:%d: %s is already on line %d", name, line, id, prev)
		}
		seen[id] = line
		css = append(css, cs)
	}
	if err := sc.Err(); err != nil {
		return nil, usageErrorf("check --connection-strings-file", "%s: line %d: %v", name, line+1, err)
	}
	return css, nil
}

// deviceReadyInfo is what --ready-file of 'dmctl device run' holds. A
// module is listed as "{deviceId}/{moduleId}". A fleet run over several
// processes lists them too.
type deviceReadyInfo struct {
	DeviceIDs []string    `json:"deviceIds"`
	Target    string      `json:"target"`
	Shards    []shardInfo `json:"shards,omitempty"`
}

// shardInfo is one child process of a sharded fleet in the ready file.
type shardInfo struct {
	Pid     int `json:"pid"`
	Devices int `json:"devices"`
}
