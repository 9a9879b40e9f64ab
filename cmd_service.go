package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

const serviceCSHint = "pass --connection-string or set IOTHUB_CONNECTION_STRING to the hub's service connection string, 'HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<base64>' ('dmctl hub connection-string' prints the local hub's)"

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "service",
		Usage: "call IoT Hub's service API: reboot and invoke methods, twins, devices, queries",
		Description: `Talks HTTPS to the hub named by the service connection string
(--connection-string or IOTHUB_CONNECTION_STRING). HostName may carry a port
(HostName=localhost:8883 for the local hub); without one, 443 is used. Add
trust for a private CA with --ca-file or DMCTL_CA_FILE; HTTPS_PROXY is honoured.`,
		Subcommands: []*cli.Command{
			serviceRebootCommand(),
			serviceInvokeCommand(),
			{
				Name:        "twin",
				Usage:       "read and update device twins",
				Subcommands: []*cli.Command{serviceTwinShowCommand(), serviceTwinUpdateCommand()},
			},
			{
				Name:  "device",
				Usage: "manage device identities in the hub's registry",
				Subcommands: []*cli.Command{
					serviceDeviceCreateCommand(), serviceDeviceShowCommand(), serviceDeviceListCommand(),
					serviceDeviceDeleteCommand(), serviceDeviceCSCommand(), serviceDeviceWaitCommand(),
				},
			},
			serviceQueryCommand(),
		},
	}
}

// serviceFlags are the flags every service command takes, then extra.
func serviceFlags(extra ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{
			Name:    "connection-string",
			Usage:   "the hub's service (shared access policy) connection string",
			EnvVars: []string{"IOTHUB_CONNECTION_STRING"},
		},
		caFileFlag,
		outputFlag,
	}, extra...)
}

func deviceFlag() cli.Flag {
	return &cli.StringFlag{Name: "device", Aliases: []string{"d"}, Usage: "device id"}
}

// newServiceClient builds the client from the connection string and CA flags.
func newServiceClient(c *cli.Context) (*service.Client, error) {
	s := c.String("connection-string")
	if strings.TrimSpace(s) == "" {
		return nil, usageErrorf(serviceCSHint, "no service connection string")
	}
	cs, err := sas.ParseService(s)
	if err != nil {
		return nil, withHint(fmt.Errorf("service connection string: %w", err), serviceCSHint)
	}
	pool, err := loadCAPool(c)
	if err != nil {
		return nil, err
	}
	return service.New(cs,
		service.WithRootCAs(pool),
		service.WithLogger(loggerFrom(c)),
		service.WithUserAgent("dmctl/"+resolveVersion()))
}

// requireDevice returns --device or a usage error.
func requireDevice(c *cli.Context) (string, error) {
	id := c.String("device")
	if id == "" {
		return "", usageErrorf("name the device with --device ID", "missing --device")
	}
	return id, nil
}

// jsonFlag reads a flag holding JSON text; def is used when it is unset.
func jsonFlag(c *cli.Context, name, def string) (json.RawMessage, error) {
	v := c.String(name)
	if !c.IsSet(name) {
		v = def
	}
	if v == "" {
		return nil, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(v)); err != nil {
		return nil, usageErrorf(fmt.Sprintf(`--%s takes JSON, e.g. --%s '{"delay": 5}'`, name, name), "--%s is not valid JSON: %v", name, err)
	}
	return buf.Bytes(), nil
}

// jsonObjectFlag is jsonFlag for flags that must hold a JSON object.
func jsonObjectFlag(c *cli.Context, name string) (json.RawMessage, error) {
	raw, err := jsonFlag(c, name, "")
	if err != nil || raw == nil {
		return raw, err
	}
	if raw[0] != '{' {
		return nil, usageErrorf(fmt.Sprintf(`--%s takes a JSON object, e.g. --%s '{"key": "value"}'`, name, name), "--%s is not a JSON object", name)
	}
	return raw, nil
}

// methodTimeout checks a method timeout flag against IoT Hub's limits.
func methodTimeout(c *cli.Context, name string, minimum time.Duration) (time.Duration, error) {
	d := c.Duration(name)
	if d < minimum || d > service.MaxMethodTimeout {
		return 0, usageErrorf(fmt.Sprintf("--%s must be between %v and %v", name, minimum, service.MaxMethodTimeout), "invalid --%s %v", name, d)
	}
	return d, nil
}

// serviceError adds a hint for the failures a user can fix.
func serviceError(err error, deviceID string) error {
	var (
		dse *service.DeviceStatusError
		uae x509.UnknownAuthorityError
		hne x509.HostnameError
		cve *tls.CertificateVerificationError
		ope *net.OpError
		dne *net.DNSError
	)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, service.ErrRebootNotConfirmed):
		return withHint(err, "the device answered but did not report a new properties.reported.rebootTime in time: raise --wait-timeout, or check that the device reports rebootTime after it restarts")
	case errors.As(err, &dse):
		return err
	case errors.Is(err, service.ErrUnauthorized):
		return withHint(err, "the hub refused the credentials: check the connection string's SharedAccessKeyName and SharedAccessKey, and that the policy has the rights the command needs (ServiceConnect, RegistryRead/RegistryWrite)")
	case errors.Is(err, service.ErrDeviceNotFound):
		return withHint(err, fmt.Sprintf("no device %q in the hub's registry: check --device, or register it with 'dmctl service device create --device %s'", deviceID, deviceID))
	case errors.Is(err, service.ErrDeviceNotOnline):
		return withHint(err, "the device is not connected, or has not subscribed to direct methods: start it (e.g. 'dmctl device run'), or let the hub wait for it with --connect-timeout")
	case errors.Is(err, service.ErrMethodTimeout):
		return withHint(err, "the device did not answer within --response-timeout: raise it (a device that answers only after rebooting needs more than its reboot time)")
	case errors.Is(err, service.ErrPreconditionFailed):
		return withHint(err, "the etag no longer matches: read the current one ('dmctl service twin show' / 'device show') or leave --etag out")
	case errors.Is(err, service.ErrThrottled):
		return withHint(err, "the hub is throttling requests: try again later")
	case errors.As(err, &uae), errors.As(err, &hne), errors.As(err, &cve):
		return withHint(err, "the hub's TLS certificate is not trusted: add its CA with --ca-file or DMCTL_CA_FILE (the local hub keeps ca.pem in its data folder)")
	case errors.As(err, &dne), errors.As(err, &ope):
		return withHint(err, "cannot reach the hub: check HostName (and its port) in the connection string, and that the hub is running")
	}
	return err
}

// compactJSON renders a payload on one line; text that is not JSON is kept.
func compactJSON(raw json.RawMessage) string {
	if len(bytes.TrimSpace(raw)) == 0 {
		return "null"
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return string(raw)
	}
	return buf.String()
}

// jsonValue makes a payload safe to embed in JSON output: null when empty,
// a JSON string when it is not JSON.
func jsonValue(raw json.RawMessage) json.RawMessage {
	switch {
	case len(bytes.TrimSpace(raw)) == 0:
		return json.RawMessage("null")
	case !json.Valid(raw):
		b, _ := json.Marshal(string(raw))
		return b
	}
	return raw
}

// ---- reboot ----

func serviceRebootCommand() *cli.Command {
	return &cli.Command{
		Name:  "reboot",
		Usage: "reboot a device with the rebootDevice method and confirm it through the twin",
		Description: `Reads the device twin's properties.reported.rebootTime (the baseline, which
may be absent), invokes the rebootDevice direct method once (never retried),
prints the device's status and payload, then polls the twin until rebootTime
differs from the baseline and prints it.

Exit codes: 0 reboot confirmed (or invoked, with --no-wait); 2 bad input;
3 authentication refused; 4 no such device; 5 device offline; 6 the device did
not answer within --response-timeout; 7 the device answered with status >= 400;
8 the new rebootTime did not appear within --wait-timeout.`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "payload", Usage: "method payload (JSON)", Value: "{}"},
			&cli.DurationFlag{Name: "response-timeout", Usage: "how long the hub waits for the device's answer (5s-5m, whole seconds)", Value: service.DefaultResponseTimeout},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long the hub waits for the device to connect (0-5m)", Value: 0},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the twin to show the new rebootTime", Value: true},
			&cli.BoolFlag{Name: "no-wait", Usage: "return once the device has answered (same as --wait=false)"},
			&cli.DurationFlag{Name: "wait-timeout", Usage: "how long to wait for the new rebootTime after the device's answer", Value: service.DefaultWaitTimeout},
			&cli.DurationFlag{Name: "poll-interval", Usage: "twin poll interval (backs off while the hub throttles)", Value: service.DefaultPollInterval},
		),
		Action: runServiceReboot,
	}
}

// rebootOutput is the JSON result of service reboot.
type rebootOutput struct {
	DeviceID           string          `json:"deviceId"`
	Status             int             `json:"status"`
	Payload            json.RawMessage `json:"payload"`
	RebootTime         *string         `json:"rebootTime"`
	PreviousRebootTime *string         `json:"previousRebootTime"`
	InvokeMs           int64           `json:"invokeMs"`
	WaitMs             int64           `json:"waitMs"`
	Confirmed          bool            `json:"confirmed"`
}

func runServiceReboot(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	payload, err := jsonFlag(c, "payload", "{}")
	if err != nil {
		return err
	}
	rt, err := methodTimeout(c, "response-timeout", service.MinResponseTimeout)
	if err != nil {
		return err
	}
	ct, err := methodTimeout(c, "connect-timeout", 0)
	if err != nil {
		return err
	}
	if c.Duration("wait-timeout") <= 0 || c.Duration("poll-interval") <= 0 {
		return usageErrorf("--wait-timeout and --poll-interval must be positive durations, e.g. 2m and 1s", "invalid --wait-timeout or --poll-interval")
	}
	wait := c.Bool("wait") && !c.Bool("no-wait")
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()

	w, log, asJSON := c.App.Writer, loggerFrom(c), jsonOutput(c)
	opts := service.RebootOptions{
		Payload:         payload,
		ResponseTimeout: rt,
		ConnectTimeout:  ct,
		NoWait:          !wait,
		WaitTimeout:     c.Duration("wait-timeout"),
		PollInterval:    c.Duration("poll-interval"),
		Progress: func(p service.RebootProgress) {
			r := p.Result
			switch p.Stage {
			case service.StageBaseline:
				ev := log.Info().Str("device", id)
				if r.HasPreviousTime {
					ev = ev.Str("rebootTime", r.PreviousRebootTime)
				}
				ev.Msg("read the twin's rebootTime before rebooting; invoking rebootDevice")
			case service.StageInvoked:
				log.Info().Str("device", id).Int("status", r.Status).Dur("took", r.InvokeDuration).Msg("device answered rebootDevice")
				if !asJSON {
					printRebootAnswer(w, r)
				}
				if wait && r.Status < 400 {
					log.Info().Str("device", id).Dur("timeout", c.Duration("wait-timeout")).Msg("waiting for the device to report a new rebootTime")
				}
			case service.StagePolled:
				log.Debug().Str("device", id).Int("poll", p.Poll).AnErr("error", p.Err).Msg("rebootTime not updated yet")
			case service.StageConfirmed:
				log.Info().Str("device", id).Str("rebootTime", r.RebootTime).Dur("waited", r.WaitDuration).Msg("reboot confirmed")
			}
		},
	}
	res, err := client.Reboot(c.Context, id, opts)
	if res != nil {
		if asJSON {
			if perr := printJSON(w, rebootJSON(res)); perr != nil && err == nil {
				err = perr
			}
		} else if wait && res.Status < 400 {
			switch {
			case res.Confirmed:
				fmt.Fprintf(w, "Last reboot time: %s\n", res.RebootTime)
			case res.HasRebootTime:
				fmt.Fprintf(w, "Last reboot time: %s (unchanged since before the reboot)\n", res.RebootTime)
			case errors.Is(err, service.ErrRebootNotConfirmed):
				fmt.Fprintln(w, "Last reboot time: none reported")
			}
		}
	}
	return serviceError(err, id)
}

func printRebootAnswer(w io.Writer, r service.RebootResult) {
	if r.Status < 400 {
		fmt.Fprintln(w, "Successfully invoked the device to reboot.")
	} else {
		fmt.Fprintf(w, "The device refused to reboot.\n")
	}
	fmt.Fprintf(w, "Device status: %d\n", r.Status)
	fmt.Fprintln(w, compactJSON(r.Payload))
}

func rebootJSON(r *service.RebootResult) rebootOutput {
	out := rebootOutput{
		DeviceID:  r.DeviceID,
		Status:    r.Status,
		Payload:   jsonValue(r.Payload),
		InvokeMs:  r.InvokeDuration.Milliseconds(),
		WaitMs:    r.WaitDuration.Milliseconds(),
		Confirmed: r.Confirmed,
	}
	if r.HasRebootTime {
		out.RebootTime = &r.RebootTime
	}
	if r.HasPreviousTime {
		out.PreviousRebootTime = &r.PreviousRebootTime
	}
	return out
}

// ---- invoke ----

func serviceInvokeCommand() *cli.Command {
	return &cli.Command{
		Name:  "invoke",
		Usage: "invoke any direct method on a device and print its answer",
		Description: `Sends the method once (never retried) and prints the device's status and
payload. Exits 7 when the device answers with a status of 400 or more.`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "method", Aliases: []string{"m"}, Usage: "method name"},
			&cli.StringFlag{Name: "payload", Usage: "method payload (JSON)", Value: "{}"},
			&cli.DurationFlag{Name: "response-timeout", Usage: "how long the hub waits for the device's answer (5s-5m, whole seconds)", Value: service.DefaultResponseTimeout},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long the hub waits for the device to connect (0-5m)", Value: 0},
		),
		Action: runServiceInvoke,
	}
}

func runServiceInvoke(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	method := c.String("method")
	if method == "" {
		return usageErrorf("name the method with --method NAME", "missing --method")
	}
	payload, err := jsonFlag(c, "payload", "{}")
	if err != nil {
		return err
	}
	rt, err := methodTimeout(c, "response-timeout", service.MinResponseTimeout)
	if err != nil {
		return err
	}
	ct, err := methodTimeout(c, "connect-timeout", 0)
	if err != nil {
		return err
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	rts, cts := int((rt+time.Second-1)/time.Second), int((ct+time.Second-1)/time.Second)
	start := time.Now()
	res, err := client.InvokeMethod(c.Context, id, iothub.MethodRequest{
		MethodName: method, Payload: payload, ResponseTimeoutInSeconds: &rts, ConnectTimeoutInSeconds: &cts,
	})
	took := time.Since(start)
	if err != nil {
		return serviceError(err, id)
	}
	w := c.App.Writer
	if jsonOutput(c) {
		err = printJSON(w, struct {
			DeviceID string          `json:"deviceId"`
			Method   string          `json:"method"`
			Status   int             `json:"status"`
			Payload  json.RawMessage `json:"payload"`
			InvokeMs int64           `json:"invokeMs"`
		}{id, method, res.Status, jsonValue(res.Payload), took.Milliseconds()})
	} else {
		fmt.Fprintf(w, "Device status: %d\n%s\n", res.Status, compactJSON(res.Payload))
	}
	if err != nil {
		return err
	}
	if res.Status >= 400 {
		return fmt.Errorf("invoke %q on device %q: %w", method, id, &service.DeviceStatusError{Status: res.Status, Payload: res.Payload})
	}
	return nil
}

// ---- twin ----

func serviceTwinShowCommand() *cli.Command {
	return &cli.Command{
		Name:   "show",
		Usage:  "print a device twin",
		Flags:  serviceFlags(deviceFlag()),
		Action: runServiceTwinShow,
	}
}

func runServiceTwinShow(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	twin, err := client.Twin(c.Context, id)
	if err != nil {
		return serviceError(err, id)
	}
	return printJSON(c.App.Writer, twin)
}

func serviceTwinUpdateCommand() *cli.Command {
	return &cli.Command{
		Name:  "update",
		Usage: "merge tags and desired properties into a device twin",
		Description: `Patches the twin: members of --tags and --desired are merged in, and a
member set to null is removed. With --etag the update applies only if the
twin still has that etag (exit code 1 with a hint otherwise).`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "desired", Usage: "desired properties to merge (JSON object)"},
			&cli.StringFlag{Name: "tags", Usage: "tags to merge (JSON object)"},
			&cli.StringFlag{Name: "etag", Usage: "update only if the twin's etag is still this one"},
		),
		Action: runServiceTwinUpdate,
	}
}

func runServiceTwinUpdate(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	desired, err := jsonObjectFlag(c, "desired")
	if err != nil {
		return err
	}
	tags, err := jsonObjectFlag(c, "tags")
	if err != nil {
		return err
	}
	if desired == nil && tags == nil {
		return usageErrorf(`give --desired '{"key": value}' and/or --tags '{"key": value}'`, "nothing to update")
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	twin, err := client.UpdateTwin(c.Context, id, service.TwinPatch{Tags: tags, Desired: desired}, c.String("etag"))
	if err != nil {
		return serviceError(err, id)
	}
	if jsonOutput(c) {
		return printJSON(c.App.Writer, twin)
	}
	fmt.Fprintf(c.App.Writer, "Updated the twin of device %s (version %d, etag %s).\n", twin.DeviceID, twin.Version, twin.ETag)
	return nil
}

// ---- device ----

func serviceDeviceCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "register a device (SAS keys generated by the hub) and print its connection string",
		Flags: serviceFlags(deviceFlag()),
		Action: func(c *cli.Context) error {
			id, err := requireDevice(c)
			if err != nil {
				return err
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			d, err := client.CreateDevice(c.Context, id)
			if err != nil {
				if errors.Is(err, service.ErrDeviceAlreadyExists) {
					return withHint(err, fmt.Sprintf("print its connection string with 'dmctl service device connection-string --device %s'", id))
				}
				return serviceError(err, id)
			}
			cs, err := client.DeviceConnectionString(d, service.PrimaryKey)
			if err != nil {
				return err
			}
			if jsonOutput(c) {
				return printJSON(c.App.Writer, struct {
					DeviceID         string         `json:"deviceId"`
					ConnectionString string         `json:"connectionString"`
					Device           *iothub.Device `json:"device"`
				}{d.DeviceID, cs, d})
			}
			_, err = fmt.Fprintln(c.App.Writer, cs)
			return err
		},
	}
}

// redactKeys drops an identity's symmetric keys from output that is not
// about credentials.
func redactKeys(d iothub.Device) iothub.Device {
	if d.Authentication != nil {
		a := *d.Authentication
		a.SymmetricKey = nil
		d.Authentication = &a
	}
	return d
}

func serviceDeviceShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print a device identity (keys left out; see connection-string)",
		Flags: serviceFlags(deviceFlag()),
		Action: func(c *cli.Context) error {
			id, err := requireDevice(c)
			if err != nil {
				return err
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			d, err := client.Device(c.Context, id)
			if err != nil {
				return serviceError(err, id)
			}
			rd := redactKeys(*d)
			if jsonOutput(c) {
				return printJSON(c.App.Writer, rd)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			auth := ""
			if d.Authentication != nil {
				auth = d.Authentication.Type
			}
			for _, kv := range [][2]string{
				{"Device ID", d.DeviceID}, {"Status", d.Status}, {"Connection state", d.ConnectionState},
				{"Connection state updated", d.ConnectionStateUpdatedTime}, {"Last activity", d.LastActivityTime},
				{"Authentication", auth}, {"ETag", d.ETag}, {"Generation ID", d.GenerationID},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
			return tw.Flush()
		},
	}
}

func serviceDeviceListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list device identities (keys left out)",
		Flags: serviceFlags(&cli.IntFlag{Name: "top", Usage: "at most this many devices (the hub caps a list at 1000)"}),
		Action: func(c *cli.Context) error {
			if c.Int("top") < 0 {
				return usageErrorf("--top takes a positive number", "invalid --top %d", c.Int("top"))
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			ds, err := client.Devices(c.Context, c.Int("top"))
			if err != nil {
				return serviceError(err, "")
			}
			sort.Slice(ds, func(i, j int) bool { return ds[i].DeviceID < ds[j].DeviceID })
			if jsonOutput(c) {
				out := make([]iothub.Device, 0, len(ds))
				for _, d := range ds {
					out = append(out, redactKeys(d))
				}
				return printJSON(c.App.Writer, out)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE ID\tSTATUS\tCONNECTION\tLAST ACTIVITY")
			for _, d := range ds {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.DeviceID, d.Status, d.ConnectionState, d.LastActivityTime)
			}
			return tw.Flush()
		},
	}
}

func serviceDeviceDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:  "delete",
		Usage: "remove a device identity",
		Flags: serviceFlags(deviceFlag(), &cli.StringFlag{Name: "etag", Usage: "delete only if the identity's etag is still this one"}),
		Action: func(c *cli.Context) error {
			id, err := requireDevice(c)
			if err != nil {
				return err
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			if err := client.DeleteDevice(c.Context, id, c.String("etag")); err != nil {
				return serviceError(err, id)
			}
			if jsonOutput(c) {
				return printJSON(c.App.Writer, map[string]any{"deviceId": id, "deleted": true})
			}
			_, err = fmt.Fprintf(c.App.Writer, "Deleted device %s.\n", id)
			return err
		},
	}
}

func serviceDeviceCSCommand() *cli.Command {
	return &cli.Command{
		Name:  "connection-string",
		Usage: "print a device's connection string (it holds the device's key)",
		Flags: serviceFlags(deviceFlag(), &cli.StringFlag{Name: "key", Usage: "primary or secondary", Value: "primary"}),
		Action: func(c *cli.Context) error {
			id, err := requireDevice(c)
			if err != nil {
				return err
			}
			var which service.KeyKind
			switch c.String("key") {
			case "primary":
				which = service.PrimaryKey
			case "secondary":
				which = service.SecondaryKey
			default:
				return usageErrorf("use --key primary or --key secondary", "invalid --key %q", c.String("key"))
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			d, err := client.Device(c.Context, id)
			if err != nil {
				return serviceError(err, id)
			}
			cs, err := client.DeviceConnectionString(d, which)
			if err != nil {
				return err
			}
			if jsonOutput(c) {
				return printJSON(c.App.Writer, map[string]string{"deviceId": d.DeviceID, "connectionString": cs})
			}
			_, err = fmt.Fprintln(c.App.Writer, cs)
			return err
		},
	}
}

// ---- query ----

func serviceQueryCommand() *cli.Command {
	return &cli.Command{
		Name:      "query",
		Usage:     "run an IoT Hub query over twins and print every result, all pages",
		ArgsUsage: `[flags] "SELECT ... FROM devices [WHERE ...]"`,
		Description: `Text output prints one JSON document per line, or a table when every row
is a flat projection (e.g. SELECT deviceId, properties.reported.rebootTime AS
rebootTime FROM devices). JSON output is one array.`,
		Flags: serviceFlags(
			&cli.IntFlag{Name: "top", Usage: "stop after this many results (0: all)"},
			&cli.IntFlag{Name: "page-size", Usage: "results per page asked of the hub (0: the hub's default)"},
		),
		Action: runServiceQuery,
	}
}

var selectStarRE = regexp.MustCompile(`(?is)^\s*select\s+(top\s+\d+\s+)?\*`)

func runServiceQuery(c *cli.Context) error {
	for _, a := range c.Args().Tail() {
		if strings.HasPrefix(a, "-") {
			return usageErrorf(`put flags before the query: dmctl service query --top 10 "SELECT * FROM devices"`, "flag %s after the query", a)
		}
	}
	if c.NArg() != 1 || strings.TrimSpace(c.Args().First()) == "" {
		return usageErrorf(`give the query as one argument: dmctl service query "SELECT * FROM devices"`, "expected one query argument, got %d", c.NArg())
	}
	q := c.Args().First()
	top, pageSize := c.Int("top"), c.Int("page-size")
	if top < 0 || pageSize < 0 {
		return usageErrorf("--top and --page-size take positive numbers", "invalid --top or --page-size")
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()

	w, asJSON := c.App.Writer, jsonOutput(c)
	stream := !asJSON && selectStarRE.MatchString(q)
	var rows []json.RawMessage
	n := 0
	err = client.Query(c.Context, q, pageSize, func(raw json.RawMessage) error {
		n++
		if stream {
			if _, err := fmt.Fprintln(w, compactJSON(raw)); err != nil {
				return err
			}
		} else {
			rows = append(rows, raw)
		}
		if top > 0 && n >= top {
			return service.ErrStopQuery
		}
		return nil
	})
	if err != nil {
		return serviceError(err, "")
	}
	switch {
	case stream:
		return nil
	case asJSON:
		if rows == nil {
			rows = []json.RawMessage{}
		}
		return printJSON(w, rows)
	}
	return printRows(w, rows)
}

// printRows prints flat objects as a table and anything else as JSON lines.
func printRows(w io.Writer, rows []json.RawMessage) error {
	var (
		cols   []string
		seen   = map[string]bool{}
		parsed = make([]map[string]json.RawMessage, 0, len(rows))
		flat   = true
	)
	for _, raw := range rows {
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			flat = false
			break
		}
		for _, v := range m {
			if t := bytes.TrimSpace(v); len(t) > 0 && (t[0] == '{' || t[0] == '[') {
				flat = false
			}
		}
		for _, k := range objectKeys(raw) {
			if !seen[k] {
				seen[k] = true
				cols = append(cols, k)
			}
		}
		parsed = append(parsed, m)
	}
	if !flat || len(cols) == 0 {
		for _, raw := range rows {
			if _, err := fmt.Fprintln(w, compactJSON(raw)); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	for _, m := range parsed {
		cells := make([]string, len(cols))
		for i, k := range cols {
			v, ok := m[k]
			if !ok {
				continue
			}
			var s string
			if json.Unmarshal(v, &s) == nil {
				cells[i] = s
			} else {
				cells[i] = compactJSON(v)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// objectKeys lists the member names of a JSON object in document order.
func objectKeys(raw json.RawMessage) []string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var keys []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return keys
		}
		k, _ := t.(string)
		keys = append(keys, k)
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return keys
		}
	}
	return keys
}
