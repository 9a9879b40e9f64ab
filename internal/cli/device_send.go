package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/sas"
)

// Bounds of 'dmctl device send'.
const (
	maxSendCount       = 1_000_000
	defaultSendTimeout = 30 * time.Second
)

// withDeviceSend adds 'device send' to the device command, after 'run'.
func withDeviceSend(c *cli.Command) *cli.Command {
	c.Subcommands = slices.Insert(c.Subcommands, min(1, len(c.Subcommands)), deviceSendCommand())
	return c
}

// deviceSendCommand is `dmctl device send`: device-to-cloud messages.
func deviceSendCommand() *cli.Command {
	return &cli.Command{
		Name:  "send",
		Usage: "connect as a device or module, send device-to-cloud messages, disconnect",
		Description: "Connects to IoT Hub as 'device run' does (same connection string, --cert and --key\n" +
			"for x509=true, --transport, --ca-file), sends --message as the body of a\n" +
			"device-to-cloud message at QoS 1 and waits for the hub to acknowledge it, --count\n" +
			"times with --interval between, then disconnects. Each --property k=v (repeatable)\n" +
			"becomes an application property; --content-type sets the $.ct system property.\n" +
			"A module's messages go to its own events topic. The local hub shows them on the\n" +
			"dashboard's device page. Exits 0 once every message was acknowledged, 3 when the\n" +
			"hub refuses the credentials, 1 when it cannot connect or a message is not\n" +
			"acknowledged within --timeout.",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "connection-string",
				Usage:   "device or module connection string (HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=... or x509=true)",
				EnvVars: []string{"IOTHUB_DEVICE_CONNECTION_STRING"},
			},
			&cli.StringFlag{Name: "cert", Usage: "x509=true identity: its client certificate (PEM file)"},
			&cli.StringFlag{Name: "key", Usage: "x509=true identity: the certificate's private key (PEM file)"},
			&cli.StringFlag{Name: "message", Usage: "the message body (text)"},
			&cli.StringSliceFlag{Name: "property", Usage: "application property `k=v` (repeatable)"},
			&cli.StringFlag{Name: "content-type", Usage: "content type of the body ($.ct), e.g. application/json"},
			&cli.IntFlag{Name: "count", Usage: fmt.Sprintf("how many times to send the message (1-%d)", maxSendCount), Value: 1},
			&cli.DurationFlag{Name: "interval", Usage: "wait between two messages", Value: time.Second},
			&cli.DurationFlag{Name: "timeout", Usage: "bound on connecting and on each message's acknowledgement", Value: defaultSendTimeout},
			&cli.StringFlag{
				Name:  "transport",
				Usage: "mqtt (TLS, port 8883) or mqtt-ws (WebSockets, port 443); a port in HostName wins",
				Value: string(mqtt.TransportMQTT),
			},
			caFileFlag(),
		},
		Action: runDeviceSend,
	}
}

// sendOptions are the checked flags of 'device send'.
type sendOptions struct {
	body     []byte
	props    map[string]string
	count    int
	interval time.Duration
	timeout  time.Duration
}

func deviceSendOptions(c *cli.Context) (sendOptions, error) {
	var o sendOptions
	if c.NArg() > 0 {
		return o, usageErrorf("run 'dmctl device send --help' for usage", "unexpected argument %q", c.Args().First())
	}
	if !c.IsSet("message") {
		return o, usageErrorf("give the body with --message TEXT", "missing --message")
	}
	o.body = []byte(c.String("message"))
	props, err := parseProperties(c.StringSlice("property"))
	if err != nil {
		return o, err
	}
	if ct := c.String("content-type"); ct != "" {
		if _, dup := props["$.ct"]; dup {
			return o, usageErrorf("give the content type once", "--content-type and --property $.ct=... both set the content type")
		}
		if props == nil {
			props = map[string]string{}
		}
		props["$.ct"] = ct
	}
	o.props = props
	if o.count = c.Int("count"); o.count < 1 || o.count > maxSendCount {
		return o, usageErrorf(fmt.Sprintf("use a number from 1 to %d", maxSendCount), "invalid --count %d", o.count)
	}
	if o.interval = c.Duration("interval"); o.interval < 0 {
		return o, usageErrorf("use a duration of 0s or more, e.g. 1s", "invalid --interval %s", o.interval)
	}
	if o.timeout = c.Duration("timeout"); o.timeout <= 0 {
		return o, usageErrorf("use a positive duration, e.g. 30s", "invalid --timeout %s", o.timeout)
	}
	return o, nil
}

// parseProperties reads --property k=v values: k must not be empty, and
// no name may come twice. The value may be empty and may hold '='.
func parseProperties(args []string) (map[string]string, error) {
	var props map[string]string
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usageErrorf("write each property as --property name=value, e.g. --property level=warning",
				"invalid --property %q: want name=value", a)
		}
		if _, dup := props[k]; dup {
			return nil, usageErrorf("give each property once", "--property %s given twice", k)
		}
		if props == nil {
			props = map[string]string{}
		}
		props[k] = v
	}
	return props, nil
}

func runDeviceSend(c *cli.Context) error {
	opts, err := deviceSendOptions(c)
	if err != nil {
		return err
	}
	transport := mqtt.Transport(c.String("transport"))
	if transport != mqtt.TransportMQTT && transport != mqtt.TransportWebSockets {
		return usageErrorf("use --transport mqtt or --transport mqtt-ws", "invalid --transport %q", transport)
	}
	raw := c.String("connection-string")
	if raw == "" {
		return usageErrorf("pass --connection-string or set IOTHUB_DEVICE_CONNECTION_STRING ('dmctl service device create' prints one)",
			"no device connection string")
	}
	cs, err := sas.ParseDevice(raw)
	if err != nil {
		return withHint(fmt.Errorf("device connection string: %w", err),
			"expected HostName=<hub>;DeviceId=<id>;SharedAccessKey=<base64 key> (add ;ModuleId=<id> for a module, or use x509=true instead of the key with --cert and --key)")
	}
	pool, err := loadCAPool(c)
	if err != nil {
		return err
	}
	cfg := mqtt.Config{
		ConnectionString: cs,
		Transport:        transport,
		ClientType:       "dmctl/" + resolveVersion(),
		RootCAs:          pool,
		Log:              loggerFrom(c),
		ConnectTimeout:   opts.timeout,
		RequestTimeout:   opts.timeout,
	}
	if cfg.Certificate, err = clientCertificate(c, cs); err != nil {
		return err
	}
	conn, err := mqtt.New(cfg)
	if err != nil {
		return usageErrorf("use a device connection string with SharedAccessKey, SharedAccessSignature, or x509=true with --cert and --key", "%v", err)
	}
	kind, id := "device", cs.DeviceID
	if cs.ModuleID != "" {
		kind, id = "module", cs.DeviceID+"/"+cs.ModuleID
	}

	ctx, cancel := context.WithCancel(c.Context)
	errc := make(chan error, 1)
	go func() { errc <- conn.Run(ctx, sendOnly{}) }()
	stop := func() error {
		cancel()
		return <-errc // Run disconnects before it returns
	}
	wait := time.NewTimer(opts.timeout)
	select {
	case <-conn.Ready():
		wait.Stop()
	case err := <-errc: // refused credentials, untrusted hub, or interrupted
		wait.Stop()
		cancel()
		if err == nil {
			err = c.Context.Err()
		}
		return deviceRunError(err)
	case <-wait.C:
		_ = stop()
		return fmt.Errorf("%s %s: not connected to %s within %s (--timeout)", kind, id, conn.Target(), opts.timeout)
	}
	for i := 1; i <= opts.count; i++ {
		if i > 1 && opts.interval > 0 {
			t := time.NewTimer(opts.interval)
			select {
			case <-ctx.Done():
				t.Stop()
				_ = stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		if err := sendOne(ctx, conn, opts); err != nil {
			_ = stop()
			if c.Context.Err() != nil {
				return c.Context.Err()
			}
			return fmt.Errorf("%s %s: message %d of %d: %w", kind, id, i, opts.count, err)
		}
		fmt.Fprintf(c.App.Writer, "%s %s: message %d of %d sent (%d bytes, %s)\n",
			kind, id, i, opts.count, len(opts.body), plural(len(opts.props), "property", "properties"))
	}
	return deviceRunError(stop())
}

// sendOne sends one message once a connection is up (after a drop, the
// connection reconnects on its own), within the timeout.
func sendOne(ctx context.Context, conn *mqtt.Conn, o sendOptions) error {
	sctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := conn.WaitConnected(sctx); err != nil {
		return fmt.Errorf("not connected: %w", err)
	}
	return conn.SendMessage(sctx, o.body, o.props)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// sendOnly is the handler of a connection that only sends: a method call
// is answered 404, twin documents and desired patches are ignored.
type sendOnly struct{}

func (sendOnly) HandleMethod(context.Context, device.MethodRequest) (int, []byte) {
	return 404, []byte(`{"message":"dmctl device send handles no direct methods"}`)
}
func (sendOnly) HandleTwin([]byte)           {}
func (sendOnly) HandleDesired(int64, []byte) {}
