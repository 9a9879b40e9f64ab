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
~/.local/share/dmctl/hub.`,
		Flags: []cli.Flag{
			hubDataFlag(),
			hubListenFlag(),
			hubHostnameFlag(),
			&cli.StringFlag{Name: "tls-cert", Usage: "serve this PEM certificate (chain) instead of the generated one"},
			&cli.StringFlag{Name: "tls-key", Usage: "the key of --tls-cert (PEM)"},
			&cli.StringFlag{Name: "ready-file", Usage: "once listening, write the bound addresses and CA path to this `file` (JSON)"},
			outputFlag(),
		},
		Action: hubServe,
	}
}

// readyInfo is what --ready-file holds.
type readyInfo struct {
	Addrs    []string `json:"addrs"`
	Hostname string   `json:"hostname"`
	CAFile   string   `json:"caFile,omitempty"`
}

func hubServe(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErrorf("run 'dmctl hub serve --help' for usage", "unexpected argument %q", c.Args().First())
	}
	if (c.String("tls-cert") == "") != (c.String("tls-key") == "") {
		return usageErrorf("give both --tls-cert and --tls-key, or neither", "--tls-cert and --tls-key go together")
	}
	log := loggerFrom(c)
	cfg := hub.Config{
		DataDir:  hubDataDir(c),
		Listen:   c.StringSlice("listen"),
		Hostname: c.String("hostname"),
		TLSCert:  c.String("tls-cert"),
		TLSKey:   c.String("tls-key"),
		Log:      log,
	}
	for _, a := range cfg.Listen {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return usageErrorf("use host:port, for example --listen 127.0.0.1:8883", "invalid --listen %q", a)
		}
	}
	h, err := hub.New(cfg)
	if err != nil {
		return withHint(err, "check that the data folder is writable and that no other hub uses it")
	}
	ctx := c.Context
	if err := h.Start(ctx); err != nil {
		_ = h.Close()
		return withHint(err, "is another program using the port? choose another with --listen")
	}
	readyFile := c.String("ready-file")
	err = announce(c, h)
	if err == nil && readyFile != "" {
		err = writeReadyFile(readyFile, readyInfo{Addrs: h.Addrs(), Hostname: h.Hostname(), CAFile: h.CAFile()})
	}
	if err != nil {
		_ = h.Close()
		return err
	}
	<-ctx.Done()
	if readyFile != "" {
		_ = os.Remove(readyFile)
	}
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
	if jsonOutput(c) {
		return printJSON(w, struct {
			Addrs                   []string `json:"addrs"`
			Hostname                string   `json:"hostname"`
			ServiceConnectionString string   `json:"serviceConnectionString"`
			CAFile                  string   `json:"caFile,omitempty"`
		}{h.Addrs(), h.Hostname(), cs, h.CAFile()})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "dmctl hub listening on %s (MQTT, MQTT over WebSockets at %s, REST API)\n", strings.Join(h.Addrs(), ", "), hub.WebSocketPath)
	fmt.Fprintf(&b, "\nService connection string (iothubowner; keep it secret):\n  %s\n", cs)
	if ca := h.CAFile(); ca != "" {
		fmt.Fprintf(&b, "CA certificate to trust:\n  %s\n", ca)
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
as the only line on stdout. The port is that of the first --listen (default
8883), or of the running hub with --ready-file. Works while the hub runs;
creates the registry if it never ran.`,
		Flags: []cli.Flag{
			hubDataFlag(),
			hubListenFlag(),
			hubHostnameFlag(),
			&cli.StringFlag{Name: "ready-file", Usage: "take the port and hostname of the running hub from its ready `file` (see 'hub serve --ready-file')"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("run 'dmctl hub connection-string --help' for usage", "unexpected argument %q", c.Args().First())
			}
			addr := hub.DefaultListen
			if l := c.StringSlice("listen"); len(l) > 0 {
				addr = l[0]
			}
			hostname := c.String("hostname")
			if f := c.String("ready-file"); f != "" {
				info, err := readReadyFile(f)
				if err != nil {
					return withHint(err, "start the hub with 'dmctl hub serve --ready-file "+f+"' and wait for it with 'dmctl hub wait'")
				}
				addr = info.Addrs[0]
				if !c.IsSet("hostname") && info.Hostname != "" {
					hostname = info.Hostname
				}
			}
			_, p, err := net.SplitHostPort(addr)
			port, perr := strconv.Atoi(p)
			if err != nil || perr != nil || port < 0 || port > 65535 {
				return usageErrorf("use host:port, for example --listen 127.0.0.1:8883", "invalid --listen %q", addr)
			}
			cs, err := hub.OwnerConnectionString(hubDataDir(c), hostname, port)
			if err != nil {
				return withHint(err, "check --data: it must be the hub's data folder")
			}
			_, err = fmt.Fprintln(c.App.Writer, cs)
			return err
		},
	}
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
