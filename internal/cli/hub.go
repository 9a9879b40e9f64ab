package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/configs"
)

func hubCommand() *cli.Command {
	return &cli.Command{
		Name:  "hub",
		Usage: "run a local IoT Hub (MQTT, WebSockets and the REST API on one TLS port)",
		Subcommands: []*cli.Command{
			hubServeCommand(),
			hubConnectionStringCommand(),
			hubWaitCommand(),
		},
	}
}

// defaultHubDataDir is $XDG_DATA_HOME/dmctl/hub, else
// ~/.local/share/dmctl/hub (%LocalAppData%\dmctl\hub on Windows).
func defaultHubDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "dmctl", "hub")
	}
	if runtime.GOOS == "windows" {
		if d := os.Getenv("LocalAppData"); d != "" {
			return filepath.Join(d, "dmctl", "hub")
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "dmctl", "hub")
	}
	return filepath.Join(".", "dmctl-hub")
}

func hubDataFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name:        "data",
		Usage:       "data folder: CA, certificates, registry and twins",
		EnvVars:     []string{"DMCTL_HUB_DATA"},
		DefaultText: "$XDG_DATA_HOME/dmctl/hub, else ~/.local/share/dmctl/hub",
	}
}

func hubListenFlag() *cli.StringSliceFlag {
	return &cli.StringSliceFlag{
		Name:        "listen",
		Usage:       "`host:port` to serve on (repeatable; port 0 picks a free one)",
		DefaultText: hub.DefaultListen,
	}
}

func hubHostnameFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name:  "hostname",
		Usage: "the hub's name in connection strings and SAS tokens (also put in the certificate)",
		Value: hub.DefaultHostname,
	}
}

func hubDataDir(c *cli.Context) string {
	if d := c.String("data"); d != "" {
		return d
	}
	return defaultHubDataDir()
}

func hubServeCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the local hub until interrupted",
		Description: `Serves, on every --listen address and over TLS: MQTT 3.1.1 for devices,
MQTT over WebSockets at /$iothub/websocket, and the IoT Hub REST API for
services. One port is all dmctl needs: HostName=localhost:PORT.

On first start the hub creates a CA (ca.pem, the file to trust) and a server
certificate for localhost, 127.0.0.1, ::1 and --hostname in the data folder,
and a registry with the default shared access policies. It then prints the
iothubowner connection string (a secret: it grants everything) and the
environment lines that point dmctl and the Node SDKs at the hub.

The official Azure SDKs expect the real ports: listen on :8883 and :443 (for
example --listen 127.0.0.1:8883 --listen 127.0.0.1:443) where the system
allows it.

The data folder defaults to $XDG_DATA_HOME/dmctl/hub, else
~/.local/share/dmctl/hub. While the hub runs, hub.json in it records the
bound addresses and hostname (what 'dmctl hub connection-string' reads); it
is removed when the hub stops, and ignored when no hub holds the folder. The
ports are bound before anything is written: a busy port leaves no data
folder behind.

Devices and modules whose authentication type is selfSigned log in with a
client certificate whose SHA-1 or SHA-256 thumbprint is registered;
certificateAuthority ones with a certificate that chains to a trusted
device CA and whose subject CN is the device id ({deviceId}/{moduleId}
for a module). The trusted CAs are those of every --x509-ca file and of
every *.pem file in the data folder's x509-ca folder, read at start.

Automatic device configurations (/configurations) are applied every
--configuration-interval (default 1s): IoT Hub applies them within minutes,
the local hub within a second.

--packages DIR serves the files of DIR (and its sub-folders) read-only at
https://HOST:PORT/packages/NAME on the same TLS port, without
authentication, so that devices can download firmware packages as they
would from a blob URL. This is a local-hub extension, not part of IoT Hub.
Folders are not listed and names outside DIR are not found.

--dashboard ADDR (default 127.0.0.1:0, a free loopback port; 'off' for
none) serves a live dashboard in the browser on its own TLS port, with the
hub's certificate: devices and their twins, direct methods, a feed of
recent events, jobs and configurations. Each start prints a new login link
(Dashboard: https://...) carrying a one-time token: open it to get a
session. To log in again, open the dashboard's /login page and paste the
owner connection string ('dmctl hub connection-string'). Trust ca.pem in
the browser, or accept its warning about the certificate.`,
		Flags: []cli.Flag{
			hubDataFlag(),
			hubListenFlag(),
			hubHostnameFlag(),
			&cli.StringFlag{Name: "tls-cert", Usage: "serve this PEM certificate (chain) instead of the generated one"},
			&cli.StringFlag{Name: "tls-key", Usage: "the key of --tls-cert (PEM)"},
			&cli.StringSliceFlag{Name: "x509-ca", Usage: "trust the device CA certificates of this PEM `file` (repeatable); the *.pem files of <data>/x509-ca are trusted too"},
			&cli.StringFlag{Name: "ready-file", Usage: "once listening, write the bound addresses, CA path and data folder to this `file` (JSON)"},
			&cli.DurationFlag{Name: "configuration-interval", Usage: "apply automatic configurations this often", Value: configs.DefaultInterval},
			&cli.StringFlag{Name: "packages", Usage: "serve the files of this `folder` read-only at /packages/ on the TLS port (local-hub extension; no authentication)"},
			&cli.StringFlag{Name: "dashboard", Usage: "serve the browser dashboard on this `host:port` (port 0 picks a free one; 'off' for none)", Value: defaultDashboard},
			outputFlag(),
		},
		Action: hubServe,
	}
}

// readyInfo is what --ready-file holds, and what a running hub keeps in
// its data folder (hubStateFile).
type readyInfo struct {
	Addrs    []string `json:"addrs"`
	Hostname string   `json:"hostname"`
	CAFile   string   `json:"caFile,omitempty"`
	DataDir  string   `json:"dataDir,omitempty"` // absolute
}

// hubStateFile, in the data folder, holds the readyInfo of the hub running
// there: written (atomically) once it listens, removed when it stops. A hub
// that did not stop cleanly leaves it behind; it is stale when no hub holds
// the data folder's store (hub.Running), and the next 'hub serve' replaces
// it.
const hubStateFile = "hub.json"

// defaultDashboard is where 'hub serve' puts the dashboard: a free loopback
// port.
const defaultDashboard = "127.0.0.1:0"

// dashboardAddr reads --dashboard: "" for off.
func dashboardAddr(c *cli.Context) (string, error) {
	a := strings.TrimSpace(c.String("dashboard"))
	if strings.EqualFold(a, "off") {
		return "", nil
	}
	host, port, err := net.SplitHostPort(a)
	n, perr := strconv.Atoi(port)
	if err != nil || perr != nil || n < 0 || n > 65535 || strings.ContainsAny(host, "/ ") {
		return "", usageErrorf("use host:port, for example --dashboard 127.0.0.1:8080 (port 0 picks a free one), or --dashboard off", "invalid --dashboard %q", a)
	}
	return a, nil
}

func hubServe(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErrorf("run 'dmctl hub serve --help' for usage", "unexpected argument %q", c.Args().First())
	}
	if (c.String("tls-cert") == "") != (c.String("tls-key") == "") {
		return usageErrorf("give both --tls-cert and --tls-key, or neither", "--tls-cert and --tls-key go together")
	}
	dash, err := dashboardAddr(c)
	if err != nil {
		return err
	}
	log := loggerFrom(c)
	cfg := hub.Config{
		Dashboard: dash,
		DataDir:   hubDataDir(c),
		Listen:    c.StringSlice("listen"),
		Hostname:  c.String("hostname"),
		TLSCert:   c.String("tls-cert"),
		TLSKey:    c.String("tls-key"),
		Log:       log,

		X509CAFiles: c.StringSlice("x509-ca"),

		ConfigurationInterval: c.Duration("configuration-interval"),
		PackagesDir:           c.String("packages"),
	}
	if cfg.ConfigurationInterval <= 0 {
		return usageErrorf("give a positive duration, for example --configuration-interval 1s", "invalid --configuration-interval %s", cfg.ConfigurationInterval)
	}
	for _, a := range cfg.Listen {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return usageErrorf("use host:port, for example --listen 127.0.0.1:8883", "invalid --listen %q", a)
		}
	}
	// New binds the ports before it touches the data folder: a busy port
	// leaves nothing behind.
	h, err := hub.New(cfg)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "listen" && strings.HasPrefix(err.Error(), "hub: dashboard:") {
			return withHint(err, fmt.Sprintf("another program uses %s: choose another port with --dashboard, e.g. --dashboard 127.0.0.1:0 for any free one, or --dashboard off", oe.Addr))
		}
		if errors.As(err, &oe) && oe.Op == "listen" {
			return withHint(err, fmt.Sprintf("another program uses %s (or binding it is not allowed): stop it, or choose another port with --listen, e.g. --listen 127.0.0.1:0 for any free one", oe.Addr))
		}
		if errors.Is(err, hub.ErrPackagesDir) {
			return withHint(err, "--packages must name an existing, readable folder")
		}
		if errors.Is(err, hub.ErrDeviceCA) {
			return withHint(err, "each --x509-ca file, and each *.pem file in "+filepath.Join(cfg.DataDir, hub.DeviceCADir)+", must be a readable PEM file with one or more CA certificates")
		}
		return withHint(err, "check that the data folder is writable and that no other hub uses it")
	}
	state := filepath.Join(cfg.DataDir, hubStateFile)
	_ = os.Remove(state) // left by a hub that did not stop cleanly; this one holds the folder now
	ctx := c.Context
	if err := h.Start(ctx); err != nil {
		_ = h.Close()
		return withHint(err, "is another program using the port? choose another with --listen")
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		_ = h.Close()
		return err
	}
	info := readyInfo{Addrs: h.Addrs(), Hostname: h.Hostname(), CAFile: h.CAFile(), DataDir: dataDir}
	readyFile := c.String("ready-file")
	err = writeReadyFile(state, info)
	if err == nil {
		err = announce(c, h)
	}
	if err == nil && readyFile != "" {
		err = writeReadyFile(readyFile, info)
	}
	if err != nil {
		_ = os.Remove(state)
		_ = h.Close()
		return err
	}
	<-ctx.Done()
	if readyFile != "" {
		_ = os.Remove(readyFile)
	}
	_ = os.Remove(state)
	return h.Close()
}

// announce prints what a user needs next: the service connection string,
// the CA and the environment to paste.
func announce(c *cli.Context, h *hub.Server) error {
	w := c.App.Writer
	cs := h.ServiceConnectionString()
	if cs == "" {
		return errors.New("hub: cannot read the iothubowner policy")
	}
	limit, capacity := h.OpenFileLimit()
	if jsonOutput(c) {
		return printJSON(w, struct {
			Addrs                   []string `json:"addrs"`
			Hostname                string   `json:"hostname"`
			ServiceConnectionString string   `json:"serviceConnectionString"`
			CAFile                  string   `json:"caFile,omitempty"`
			DashboardURL            string   `json:"dashboardURL,omitempty"`
			OpenFileLimit           uint64   `json:"openFileLimit"`
			ConnectionsMax          int      `json:"connectionsMax"`
		}{h.Addrs(), h.Hostname(), cs, h.CAFile(), h.DashboardURL(), limit.Soft, capacity})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "dmctl hub listening on %s (MQTT, MQTT over WebSockets at %s, REST API)\n", strings.Join(h.Addrs(), ", "), hub.WebSocketPath)
	if !limit.Unlimited() {
		fmt.Fprintf(&b, "Open-file limit %d (ulimit -n): room for about %d device connections\n", limit.Soft, capacity)
	}
	fmt.Fprintf(&b, "\nService connection string (iothubowner; keep it secret):\n  %s\n", cs)
	if ca := h.CAFile(); ca != "" {
		fmt.Fprintf(&b, "CA certificate to trust:\n  %s\n", ca)
	}
	if u := h.DashboardURL(); u != "" {
		fmt.Fprintf(&b, "\nDashboard: %s\n  (a one-time login link; to log in again paste the connection string above at /login)\n", u)
	}
	fmt.Fprintf(&b, "\nPoint dmctl and the Azure IoT SDKs at this hub:\n")
	fmt.Fprintf(&b, "  export IOTHUB_CONNECTION_STRING=%s\n", shellQuote(cs))
	if ca := h.CAFile(); ca != "" {
		fmt.Fprintf(&b, "  export DMCTL_CA_FILE=%s\n", shellQuote(ca))
		fmt.Fprintf(&b, "  export NODE_EXTRA_CA_CERTS=%s\n", shellQuote(ca))
	}
	fmt.Fprintf(&b, "\nRegister a device: dmctl service device create --device <id>\nStop with Ctrl-C.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// shellQuote quotes s for POSIX shells.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func hubConnectionStringCommand() *cli.Command {
	return &cli.Command{
		Name:  "connection-string",
		Usage: "print the local hub's iothubowner (service) connection string",
		Description: `Prints HostName=<hostname>:<port>;SharedAccessKeyName=iothubowner;SharedAccessKey=...
as the only line on stdout. The port and hostname are those of the hub
running on the data folder (it records them in hub.json there while it
runs), else those of --ready-file, else of the first --listen (default
8883); --listen and --hostname always win. A --ready-file written by
'hub serve' names its data folder, so --data is not needed with it.

It only reads: a data folder where no hub ever ran is refused (start one
with 'dmctl hub serve --data D', which creates it).`,
		Flags: []cli.Flag{
			hubDataFlag(),
			hubListenFlag(),
			hubHostnameFlag(),
			&cli.StringFlag{Name: "ready-file", Usage: "take the data folder, port and hostname of the running hub from its ready `file` (see 'hub serve --ready-file')"},
		},
		Action: hubConnectionString,
	}
}

func hubConnectionString(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErrorf("run 'dmctl hub connection-string --help' for usage", "unexpected argument %q", c.Args().First())
	}
	dataDir := hubDataDir(c)
	var running *readyInfo
	if f := c.String("ready-file"); f != "" {
		info, err := readReadyFile(f)
		if err != nil {
			return withHint(err, "start the hub with 'dmctl hub serve --ready-file "+f+"' and wait for it with 'dmctl hub wait'")
		}
		if info.DataDir != "" {
			if c.String("data") == "" {
				dataDir = info.DataDir
			} else if !samePath(c.String("data"), info.DataDir) {
				return usageErrorf("leave out --data (the ready file names the hub's data folder), or give the ready file of the hub of "+c.String("data"),
					"--ready-file %s is that of the hub of %s, not of --data %s", f, info.DataDir, c.String("data"))
			}
		}
		running = &info
	} else if info, err := readReadyFile(filepath.Join(dataDir, hubStateFile)); err == nil && hub.Running(dataDir) {
		running = &info
	}
	addr := hub.DefaultListen
	hostname := c.String("hostname")
	switch l := c.StringSlice("listen"); {
	case len(l) > 0:
		addr = l[0]
	case running != nil:
		addr = running.Addrs[0]
	}
	if running != nil && !c.IsSet("hostname") && running.Hostname != "" {
		hostname = running.Hostname
	}
	_, p, err := net.SplitHostPort(addr)
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil || port < 0 || port > 65535 {
		return usageErrorf("use host:port, for example --listen 127.0.0.1:8883", "invalid --listen %q", addr)
	}
	cs, err := hub.OwnerConnectionString(dataDir, hostname, port)
	if errors.Is(err, hub.ErrNoHub) {
		return usageErrorf(fmt.Sprintf("check --data; to create a hub there, start it: dmctl hub serve --data %s", shellQuote(dataDir)),
			"no hub in %s (no hub ever ran there)", dataDir)
	}
	if err != nil {
		return withHint(err, "check --data: it must be the hub's data folder")
	}
	if running == nil && !c.IsSet("listen") {
		log := loggerFrom(c)
		log.Warn().Str("data", dataDir).Int("port", port).Msg("no hub is running on this data folder; the connection string names the default port (--listen)")
	}
	_, err = fmt.Fprintln(c.App.Writer, cs)
	return err
}

// samePath reports whether a and b name the same folder.
func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	if aa == bb {
		return true
	}
	ia, err1 := os.Stat(aa)
	ib, err2 := os.Stat(bb)
	return err1 == nil && err2 == nil && os.SameFile(ia, ib)
}

func hubWaitCommand() *cli.Command {
	return &cli.Command{
		Name:  "wait",
		Usage: "wait until a hub started with --ready-file is listening",
		Description: `Blocks until the ready file written by 'dmctl hub serve --ready-file F' exists
and the hub accepts connections on its first address, so scripts never need
sleep. Exits 1 when --timeout passes first.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "ready-file", Usage: "the `file` given to 'dmctl hub serve --ready-file' (required)"},
			&cli.DurationFlag{Name: "timeout", Usage: "how long to wait", Value: 30 * time.Second},
			outputFlag(),
		},
		Action: hubWait,
	}
}

func hubWait(c *cli.Context) error {
	if c.String("ready-file") == "" {
		return usageErrorf("give the file the hub writes: dmctl hub wait --ready-file F (after 'dmctl hub serve --ready-file F')", "missing --ready-file")
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return usageErrorf("use a positive duration, e.g. --timeout 30s", "invalid --timeout %v", timeout)
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	path := c.String("ready-file")
	const interval = 50 * time.Millisecond
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		info, err := readReadyFile(path)
		if err == nil {
			var d net.Dialer
			conn, derr := d.DialContext(ctx, "tcp", info.Addrs[0])
			if derr == nil {
				_ = conn.Close()
				if jsonOutput(c) {
					return printJSON(c.App.Writer, info)
				}
				_, err := fmt.Fprintf(c.App.Writer, "hub ready on %s\n", strings.Join(info.Addrs, ", "))
				return err
			}
			err = derr
		}
		last = err
		select {
		case <-tick.C:
		case <-ctx.Done():
			if c.Context.Err() != nil {
				return c.Context.Err()
			}
			return withHint(fmt.Errorf("hub not ready after %v: %w", timeout, last),
				"check that 'dmctl hub serve --ready-file "+path+"' is running, and its log on stderr")
		}
	}
}

// readReadyFile reads a ready file; it fails until the hub has written it.
func readReadyFile(path string) (readyInfo, error) {
	var info readyInfo
	data, err := os.ReadFile(path)
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, fmt.Errorf("ready file %s: %w", path, err)
	}
	if len(info.Addrs) == 0 {
		return info, fmt.Errorf("ready file %s lists no address", path)
	}
	return info, nil
}
