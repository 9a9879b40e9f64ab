package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
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
			{
				Name:  "job",
				Usage: "show, list and cancel IoT Hub jobs (jobs v2)",
				Subcommands: []*cli.Command{
					serviceJobShowCommand(), serviceJobListCommand(), serviceJobCancelCommand(),
				},
			},
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
	text := []byte(v)
	if file, ok := strings.CutPrefix(v, "@"); ok {
		var err error
		if file == "-" {
			text, err = io.ReadAll(io.LimitReader(c.App.Reader, maxJSONFlagFile+1))
		} else {
			text, err = readLimited(file, maxJSONFlagFile)
		}
		if err != nil {
			return nil, usageErrorf(fmt.Sprintf("--%s @FILE reads JSON from FILE (@- from standard input)", name), "--%s: %v", name, err)
		}
		if len(text) > maxJSONFlagFile {
			return nil, usageErrorf("IoT Hub documents are far smaller", "--%s: %s is larger than %d bytes", name, file, maxJSONFlagFile)
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, text); err != nil {
		return nil, usageErrorf(fmt.Sprintf(`--%s takes JSON, e.g. --%s '{"delay": 5}', or @FILE`, name, name), "--%s is not valid JSON: %v", name, err)
	}
	return buf.Bytes(), nil
}

// maxJSONFlagFile bounds what a JSON flag reads from a file or stdin.
const maxJSONFlagFile = 4 << 20

// readLimited reads at most limit+1 bytes of a file.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit+1))
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

// methodArgs reads --payload (default {}) and the two method timeouts.
func methodArgs(c *cli.Context) (payload json.RawMessage, response, connect time.Duration, err error) {
	if payload, err = jsonFlag(c, "payload", "{}"); err != nil {
		return nil, 0, 0, err
	}
	if len(payload) > service.MaxMethodPayload {
		return nil, 0, 0, usageErrorf("IoT Hub accepts method payloads up to 128 KB",
			"--payload is %d bytes, larger than %d", len(payload), service.MaxMethodPayload)
	}
	if response, err = methodTimeout(c, "response-timeout", service.MinResponseTimeout); err != nil {
		return nil, 0, 0, err
	}
	if connect, err = methodTimeout(c, "connect-timeout", 0); err != nil {
		return nil, 0, 0, err
	}
	return payload, response, connect, nil
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
		Usage: "reboot a device (--device) or a fleet (--query) with the rebootDevice method and confirm it through the twin",
		Description: `With --device: reads the device twin's properties.reported.rebootTime (the
baseline, which may be absent), invokes the rebootDevice direct method once
(never retried), prints the device's status and payload, then polls the twin
until rebootTime differs from the baseline and prints it.

With --query CONDITION (the body of a WHERE clause over twins, e.g.
"tags.site = 'lab'"): reads the matching devices and their rebootTime with one
paged query, then reboots them through IoT Hub jobs (scheduleDeviceMethod,
rebootDevice; the hub does the fan-out), one job per wave, named PREFIX-w1,
PREFIX-w2, ... (PREFIX defaults to dmctl-reboot-<UTC time>; a wave whose
device list does not fit one job condition, about 500 devices, is split into
PREFIX-wN-1, PREFIX-wN-2, ...). While a job runs, its status is polled and the
rebootTimes are read back in batched twin queries (100 devices per query,
--poll-interval apart); a device is confirmed once its rebootTime differs from
its baseline. When the job has finished, the wave waits up to --wait-timeout
for the remaining confirmations. Progress is a live line on a terminal
(stderr), log lines otherwise. The summary counts devices
that succeeded (confirmed), failed (answered >= 400, did not answer in time,
deleted, ...), were offline, stayed unconfirmed, or were skipped.
Interrupting (Ctrl-C) cancels the running job.

Staged rollout: --waves lists cumulative steps, percentages of the devices
("1%,10%,100%") or device counts ("1,10,100"), of the devices in deviceId
order; a final wave with the rest is added when the list stops short.
After each wave, if (failed + offline + unconfirmed) / wave size exceeds
--abort-failure-rate (default 0%: any failure), the rollout stops and the
remaining devices are skipped.

Exit codes: 0 reboot confirmed (or invoked, with --no-wait; for a fleet: every
device confirmed); 2 bad input; 3 authentication refused; 4 no such device;
5 device offline; 6 the device did not answer within --response-timeout;
7 the device answered with status >= 400; 8 the new rebootTime did not appear
within --wait-timeout. For a fleet the worst outcome decides, in this order:
7, 6, 5, 4, 1 (other job failures), 8; 130 when interrupted.`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "query", Aliases: []string{"q"}, Usage: "reboot every device matching this condition (the body of a WHERE clause, e.g. \"tags.site = 'lab'\") through IoT Hub jobs"},
			&cli.StringFlag{Name: "waves", Usage: "with --query: staged rollout, cumulative percentages or counts, e.g. 1%,10%,100% or 1,10,100"},
			&cli.StringFlag{Name: "abort-failure-rate", Usage: "with --query: stop the rollout after a wave whose share of failed, offline or unconfirmed devices exceeds this", Value: "0%"},
			&cli.StringFlag{Name: "job-prefix", Usage: "with --query: job id prefix (jobs are PREFIX-w1, PREFIX-w2, ...)", DefaultText: "dmctl-reboot-<UTC time>"},
			&cli.DurationFlag{Name: "job-timeout", Usage: "with --query: each job's maxExecutionTimeInSeconds (devices not called by then are not called)", Value: service.DefaultJobTimeout},
			&cli.StringFlag{Name: "payload", Usage: "method payload: JSON, or @FILE (@- for stdin)", Value: "{}"},
			&cli.DurationFlag{Name: "response-timeout", Usage: "how long the hub waits for the device's answer (5s-5m, whole seconds)", Value: service.DefaultResponseTimeout},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long the hub waits for the device to connect (0-5m)", Value: 0},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the twin to show the new rebootTime", Value: true},
			&cli.BoolFlag{Name: "no-wait", Usage: "return once the device has answered (same as --wait=false)"},
			&cli.DurationFlag{Name: "wait-timeout", Usage: "how long to wait for the new rebootTime after the device's answer (--query: after each wave's jobs have finished)", Value: service.DefaultWaitTimeout},
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
	if c.IsSet("query") {
		return runFleetReboot(c)
	}
	for _, f := range []string{"waves", "abort-failure-rate", "job-prefix", "job-timeout"} {
		if c.IsSet(f) {
			return usageErrorf("--"+f+" goes with --query", "--%s without --query", f)
		}
	}
	id := c.String("device")
	if id == "" {
		return usageErrorf("name the device with --device ID, or pick devices with --query CONDITION", "missing --device or --query")
	}
	payload, rt, ct, err := methodArgs(c)
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
			&cli.StringFlag{Name: "payload", Usage: "method payload: JSON, or @FILE (@- for stdin)", Value: "{}"},
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
	payload, rt, ct, err := methodArgs(c)
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
		Usage: "register a device, or --count N devices, (SAS keys generated by the hub) and print the connection strings",
		Description: `Registers --device ID, or --count N devices named PREFIX-NNNN: numbered from
--start (default 1), zero-padded to at least four digits or to the width of
the largest number (--count 100 --prefix sim: sim-0001 ... sim-0100;
--count 20000: sim-00001 ... sim-20000).

Text output is one device connection string per line, in name order, and
nothing else, so it can be piped into 'dmctl device run
--connection-strings-file -'. The strings hold the devices' keys. Devices are
created --concurrency at a time; a device that fails (e.g. it exists already)
is reported on stderr, the others are still created and printed, and the
command exits non-zero. -o json prints {"created": [...], "failed": [...]}.`,
		Flags: serviceFlags(deviceFlag(),
			&cli.IntFlag{Name: "count", Aliases: []string{"n"}, Usage: "create this many devices named PREFIX-NNNN"},
			&cli.StringFlag{Name: "prefix", Usage: "with --count: the device name prefix"},
			&cli.IntFlag{Name: "start", Usage: "with --count: the first number", Value: 1},
			&cli.IntFlag{Name: "concurrency", Usage: "with --count: creates in flight", Value: service.DefaultCreateConcurrency},
			&cli.StringFlag{Name: "tags", Usage: `twin tags to set on every new device, as a JSON object (e.g. '{"site":"lab"}')`},
		),
		Action: func(c *cli.Context) error {
			if c.IsSet("count") {
				return runServiceDeviceCreateMany(c)
			}
			for _, f := range []string{"prefix", "start", "concurrency"} {
				if c.IsSet(f) {
					return usageErrorf("--"+f+" goes with --count", "--%s without --count", f)
				}
			}
			id, err := requireDevice(c)
			if err != nil {
				return err
			}
			tags, err := jsonObjectFlag(c, "tags")
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
			if tags != nil {
				if _, err := client.UpdateTwin(c.Context, id, service.TwinPatch{Tags: tags}, "*"); err != nil {
					return serviceError(fmt.Errorf("device %q created, but its tags were not set: %w", id, err), id)
				}
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

// maxCreateCount bounds --count.
const maxCreateCount = 1_000_000

func runServiceDeviceCreateMany(c *cli.Context) error {
	n, prefix, start, conc := c.Int("count"), c.String("prefix"), c.Int("start"), c.Int("concurrency")
	switch {
	case c.IsSet("device"):
		return usageErrorf("use either --device ID or --count N --prefix P", "--device and --count are mutually exclusive")
	case n < 1 || n > maxCreateCount:
		return usageErrorf(fmt.Sprintf("--count takes a number from 1 to %d", maxCreateCount), "invalid --count %d", n)
	case prefix == "":
		return usageErrorf("name the devices with --prefix, e.g. --count 100 --prefix sim (sim-0001 ... sim-0100)", "--count needs --prefix")
	case start < 0:
		return usageErrorf("--start takes a number of 0 or more", "invalid --start %d", start)
	case conc < 1 || conc > 256:
		return usageErrorf("--concurrency takes a number from 1 to 256", "invalid --concurrency %d", conc)
	}
	tags, err := jsonObjectFlag(c, "tags")
	if err != nil {
		return err
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	log := loggerFrom(c)
	ids := service.SequentialIDs(prefix, start, n)
	began := time.Now()
	results := client.CreateDevices(c.Context, ids, conc)
	if tags != nil {
		tagCreated(c.Context, client, results, tags, conc)
	}

	type created struct {
		DeviceID         string `json:"deviceId"`
		ConnectionString string `json:"connectionString"`
	}
	type failed struct {
		DeviceID string `json:"deviceId"`
		Error    string `json:"error"`
	}
	out := struct {
		Created []created `json:"created"`
		Failed  []failed  `json:"failed"`
	}{Created: []created{}, Failed: []failed{}}
	var firstErr error
	for _, r := range results {
		err := r.Err
		var cs string
		if err == nil {
			cs, err = client.DeviceConnectionString(r.Device, service.PrimaryKey)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			out.Failed = append(out.Failed, failed{r.DeviceID, err.Error()})
			log.Error().Str("device", r.DeviceID).Err(err).Msg("device not created")
			continue
		}
		out.Created = append(out.Created, created{r.DeviceID, cs})
	}
	log.Info().Int("created", len(out.Created)).Int("failed", len(out.Failed)).Dur("took", time.Since(began)).Msg("devices created")
	w := c.App.Writer
	if jsonOutput(c) {
		if err := printJSON(w, out); err != nil {
			return err
		}
	} else {
		var b strings.Builder
		for _, d := range out.Created {
			b.WriteString(d.ConnectionString)
			b.WriteByte('\n')
		}
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	if firstErr == nil {
		return nil
	}
	names := make([]string, 0, min(len(out.Failed), 5))
	for _, f := range out.Failed[:min(len(out.Failed), 5)] {
		names = append(names, f.DeviceID)
	}
	more := ""
	if len(out.Failed) > len(names) {
		more = fmt.Sprintf(" and %d more", len(out.Failed)-len(names))
	}
	err = fmt.Errorf("created %d of %d devices; %d failed (%s%s); first failure: %w",
		len(out.Created), n, len(out.Failed), strings.Join(names, ", "), more, firstErr)
	if errors.Is(firstErr, service.ErrDeviceAlreadyExists) {
		return withHint(err, "some names are taken: pick another --prefix, continue the numbering with --start, or print existing connection strings with 'dmctl service device connection-string'")
	}
	return serviceError(err, "")
}

// tagCreated sets tags on every device that was created, conc at a time; a
// device whose tags could not be set counts as failed.
func tagCreated(ctx context.Context, client *service.Client, results []service.CreateResult, tags json.RawMessage, conc int) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(conc, len(results)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				r := &results[i]
				if _, err := client.UpdateTwin(ctx, r.DeviceID, service.TwinPatch{Tags: tags}, "*"); err != nil {
					r.Err = fmt.Errorf("device %q created, but its tags were not set: %w", r.DeviceID, err)
				}
			}
		}()
	}
	for i := range results {
		if results[i].Err == nil {
			next <- i
		}
	}
	close(next)
	wg.Wait()
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

// ---- fleet reboot ----

func runFleetReboot(c *cli.Context) error {
	cond := strings.TrimSpace(c.String("query"))
	if c.IsSet("device") {
		return usageErrorf("use either --device ID (one device) or --query CONDITION (a fleet)", "--device and --query are mutually exclusive")
	}
	if cond == "" {
		return usageErrorf(`give a condition, e.g. --query "tags.site = 'lab'"`, "empty --query")
	}
	if strings.HasPrefix(strings.ToUpper(cond), "SELECT ") {
		return usageErrorf(`--query takes only the condition (the WHERE clause body), e.g. --query "tags.site = 'lab'"`, "--query is a whole query, not a condition")
	}
	if c.IsSet("no-wait") || (c.IsSet("wait") && !c.Bool("wait")) {
		return usageErrorf("a fleet reboot always confirms through the twins; bound it with --wait-timeout", "--no-wait does not go with --query")
	}
	opts := service.FleetRebootOptions{
		Condition:        cond,
		WaitTimeout:      c.Duration("wait-timeout"),
		PollInterval:     c.Duration("poll-interval"),
		MaxExecutionTime: c.Duration("job-timeout"),
		JobIDPrefix:      c.String("job-prefix"),
	}
	var err error
	if opts.Payload, err = jsonFlag(c, "payload", "{}"); err != nil {
		return err
	}
	if opts.ResponseTimeout, err = methodTimeout(c, "response-timeout", service.MinResponseTimeout); err != nil {
		return err
	}
	if opts.ConnectTimeout, err = methodTimeout(c, "connect-timeout", 0); err != nil {
		return err
	}
	if opts.WaitTimeout <= 0 || opts.PollInterval <= 0 || opts.MaxExecutionTime <= 0 {
		return usageErrorf("--wait-timeout, --poll-interval and --job-timeout must be positive durations, e.g. 2m, 1s and 1h", "invalid --wait-timeout, --poll-interval or --job-timeout")
	}
	if c.IsSet("waves") {
		if opts.Waves, err = service.ParseWaves(c.String("waves")); err != nil {
			return usageErrorf("use cumulative percentages or counts, e.g. --waves 1%,10%,100% or --waves 1,10,100", "invalid --waves: %v", err)
		}
	}
	if opts.AbortFailureRate, err = service.ParseRate(c.String("abort-failure-rate")); err != nil {
		return usageErrorf("write the threshold as a percentage, e.g. --abort-failure-rate 5% (100% never stops)", "invalid --abort-failure-rate: %v", err)
	}
	if p := opts.JobIDPrefix; p != "" {
		if err := service.ValidJobID(p + "-w999-999"); err != nil {
			return usageErrorf("job ids are up to 64 ASCII letters, digits and '-'; the prefix leaves room for -wN", "invalid --job-prefix: %v", err)
		}
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()

	pr := newFleetProgress(c.App.ErrWriter, loggerFrom(c))
	opts.Progress = pr.update
	res, err := client.FleetReboot(c.Context, opts)
	pr.finish()
	if res != nil && !errors.Is(err, service.ErrNoDevices) {
		w := c.App.Writer
		var perr error
		if jsonOutput(c) {
			perr = printJSON(w, fleetJSON(res))
		} else {
			perr = printFleetSummary(w, res)
		}
		if perr != nil && err == nil {
			err = perr
		}
	}
	return fleetError(err)
}

// fleetError adds a hint for the failures of a fleet reboot.
func fleetError(err error) error {
	var dse *service.DeviceStatusError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, service.ErrNoDevices):
		return withHint(err, `check the condition, e.g. with: dmctl service query "SELECT deviceId FROM devices WHERE <condition>"`)
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &dse):
		return withHint(err, "some devices refused the reboot; their answers are in the summary ('-o json' for all details)")
	case errors.Is(err, service.ErrMethodTimeout):
		return withHint(err, "some devices did not answer within --response-timeout: raise it, or check them")
	case errors.Is(err, service.ErrDeviceNotOnline):
		return withHint(err, "some devices were not connected: start them, or let the hub wait for them with --connect-timeout")
	case errors.Is(err, service.ErrRebootNotConfirmed):
		return withHint(err, "some devices answered but did not report a new rebootTime in time: raise --wait-timeout, or check that they report rebootTime after restarting")
	case errors.Is(err, service.ErrJobAlreadyExists):
		return withHint(err, "a job with that id exists already: choose another --job-prefix")
	}
	return serviceError(err, "")
}

// fleetProgress shows a fleet reboot's progress on stderr: one live line on
// a terminal, log lines every few seconds otherwise.
type fleetProgress struct {
	w       io.Writer
	tty     bool
	log     zerolog.Logger
	every   time.Duration
	last    time.Time
	lastMsg string
	live    bool // a live line is on screen
}

func newFleetProgress(w io.Writer, log zerolog.Logger) *fleetProgress {
	f, ok := w.(*os.File)
	return &fleetProgress{w: w, tty: ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())), log: log, every: 5 * time.Second}
}

func (p *fleetProgress) update(fp service.FleetProgress) {
	switch fp.Stage {
	case service.FleetBaseline:
		p.line()
		p.log.Info().Int("devices", fp.Devices).Int("waves", fp.Waves).Msg("read the devices' rebootTime; starting the reboot jobs")
	case service.FleetWaveStarted:
		p.line()
		p.log.Info().Int("wave", fp.Wave).Int("waves", fp.Waves).Int("devices", fp.WaveSize).Strs("jobs", fp.JobIDs).Msg("reboot job created")
		p.last = time.Time{}
		p.show(fp)
	case service.FleetWavePolled:
		if fp.Err != nil {
			p.line()
			p.log.Warn().Err(fp.Err).Strs("jobs", fp.JobIDs).Msg("poll failed; still waiting")
		}
		p.show(fp)
	case service.FleetWaveDone:
		p.show(fp)
		p.line()
		cnt := fp.Counts
		p.log.Info().Int("wave", fp.Wave).Int("waves", fp.Waves).Strs("jobs", fp.JobIDs).Str("jobStatus", fp.JobStatus).
			Int("succeeded", cnt.Succeeded).Int("failed", cnt.Failed).Int("offline", cnt.Offline).
			Int("unconfirmed", cnt.Unconfirmed).Dur("took", fp.Elapsed).Msg("wave done")
	case service.FleetStoppedEarly:
		p.line()
		p.log.Warn().Str("reason", fp.Reason).Msg("rollout stopped")
	}
}

// show renders the live line, or a log line at most every p.every.
func (p *fleetProgress) show(fp service.FleetProgress) {
	cnt := fp.Counts
	done := cnt.Succeeded + cnt.Failed + cnt.Offline + cnt.Unconfirmed
	answered, status := fp.Stats.Finished(), fp.JobStatus
	if !p.tty {
		msg := fmt.Sprintf("%d/%d/%d/%d/%s", answered, cnt.Succeeded, cnt.Failed+cnt.Offline, cnt.Unconfirmed, status)
		if fp.Stage != service.FleetWaveDone && (msg == p.lastMsg || time.Since(p.last) < p.every) {
			return
		}
		p.last, p.lastMsg = time.Now(), msg
		if fp.Stage == service.FleetWaveDone {
			return // the wave-done log line follows
		}
		p.log.Info().Int("wave", fp.Wave).Strs("jobs", fp.JobIDs).Str("jobStatus", status).Int("devices", fp.WaveSize).
			Int("answered", answered).Int("confirmed", cnt.Succeeded).Int("failed", cnt.Failed).
			Int("offline", cnt.Offline).Dur("elapsed", fp.Elapsed.Round(time.Millisecond)).Msg("reboot progress")
		return
	}
	const width = 16
	filled := 0
	if fp.WaveSize > 0 {
		filled = done * width / fp.WaveSize
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	line := fmt.Sprintf("wave %d/%d [%s] %d/%d  answered %d  confirmed %d  failed %d  offline %d  (job %s, %s)",
		fp.Wave, fp.Waves, bar, done, fp.WaveSize, answered, cnt.Succeeded, cnt.Failed, cnt.Offline, status,
		fp.Elapsed.Round(100*time.Millisecond))
	fmt.Fprint(p.w, "\r\x1b[K"+line)
	p.live = true
}

// line ends the live line so that a log line can follow.
func (p *fleetProgress) line() {
	if p.live {
		fmt.Fprintln(p.w)
		p.live = false
	}
}

func (p *fleetProgress) finish() { p.line() }

// fleetOutput is the JSON summary of a fleet reboot.
type fleetOutput struct {
	Query       string              `json:"query"`
	Counts      service.FleetCounts `json:"counts"`
	Stopped     bool                `json:"stopped"`
	StopReason  string              `json:"stopReason,omitempty"`
	Interrupted bool                `json:"interrupted,omitempty"`
	WavesPlan   int                 `json:"wavesPlanned"`
	DurationMs  int64               `json:"durationMs"`
	Waves       []fleetWaveOutput   `json:"waves"`
	Devices     []fleetDeviceOutput `json:"devices"`
}

type fleetWaveOutput struct {
	Wave          int                 `json:"wave"`
	JobIDs        []string            `json:"jobIds"`
	Size          int                 `json:"size"`
	JobStatus     string              `json:"jobStatus"`
	FailureReason string              `json:"failureReason,omitempty"`
	Counts        service.FleetCounts `json:"counts"`
	FailureRate   float64             `json:"failureRate"`
	DurationMs    int64               `json:"durationMs"`
}

type fleetDeviceOutput struct {
	DeviceID           string          `json:"deviceId"`
	Outcome            string          `json:"outcome"`
	Failure            string          `json:"failure,omitempty"`
	Reason             string          `json:"reason,omitempty"`
	Wave               int             `json:"wave,omitempty"`
	JobID              string          `json:"jobId,omitempty"`
	Status             *int            `json:"status"`
	Payload            json.RawMessage `json:"payload,omitempty"`
	ErrorCode          int             `json:"errorCode,omitempty"`
	PreviousRebootTime *string         `json:"previousRebootTime"`
	RebootTime         *string         `json:"rebootTime"`
}

func fleetJSON(r *service.FleetResult) fleetOutput {
	out := fleetOutput{
		Query: r.Condition, Counts: r.Counts, Stopped: r.Stopped, StopReason: r.StopReason,
		Interrupted: r.Interrupted, WavesPlan: r.Planned, DurationMs: r.Duration.Milliseconds(),
		Waves: []fleetWaveOutput{}, Devices: make([]fleetDeviceOutput, 0, len(r.Devices)),
	}
	for _, w := range r.Waves {
		out.Waves = append(out.Waves, fleetWaveOutput{
			Wave: w.Wave, JobIDs: w.JobIDs, Size: w.Size, JobStatus: w.JobStatus, FailureReason: w.FailureReason,
			Counts: w.Counts, FailureRate: w.FailureRate, DurationMs: w.Duration.Milliseconds(),
		})
	}
	for _, d := range r.Devices {
		o := fleetDeviceOutput{
			DeviceID: d.DeviceID, Outcome: string(d.Outcome), Failure: string(d.Failure), Reason: d.Reason,
			Wave: d.Wave, JobID: d.JobID, ErrorCode: d.ErrorCode,
		}
		if d.Status != 0 {
			st := d.Status
			o.Status = &st
			o.Payload = jsonValue(d.Payload)
		}
		if d.HasPreviousTime {
			v := d.PreviousRebootTime
			o.PreviousRebootTime = &v
		}
		if d.HasRebootTime {
			v := d.RebootTime
			o.RebootTime = &v
		}
		out.Devices = append(out.Devices, o)
	}
	return out
}

// jobsText names a wave's jobs in a table cell: the first, and how many
// more.
func jobsText(ids []string) string {
	switch len(ids) {
	case 0:
		return "-"
	case 1:
		return ids[0]
	}
	return fmt.Sprintf("%s (+%d more)", ids[0], len(ids)-1)
}

// maxListed bounds the devices the text summary lists one by one.
const maxListed = 50

// printFleetSummary prints the counts, the waves, and the devices that did
// not succeed (the first maxListed of them).
func printFleetSummary(w io.Writer, r *service.FleetResult) error {
	c := r.Counts
	waves := "1 wave"
	if r.Planned != 1 {
		waves = fmt.Sprintf("%d of %d waves", len(r.Waves), r.Planned)
	}
	fmt.Fprintf(w, "Rebooted %d of %d devices where %s (%s, %s).\n", c.Succeeded, c.Total, r.Condition, waves, r.Duration.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, kv := range []struct {
		k string
		v int
	}{{"succeeded", c.Succeeded}, {"failed", c.Failed}, {"offline", c.Offline}, {"unconfirmed", c.Unconfirmed}, {"skipped", c.Skipped}} {
		fmt.Fprintf(tw, "  %s:\t%d\n", kv.k, kv.v)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Waves) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WAVE\tJOB\tDEVICES\tSUCCEEDED\tFAILED\tOFFLINE\tUNCONFIRMED\tJOB STATUS\tTOOK")
		for _, wv := range r.Waves {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", wv.Wave, jobsText(wv.JobIDs), wv.Size, wv.Counts.Succeeded,
				wv.Counts.Failed, wv.Counts.Offline, wv.Counts.Unconfirmed, wv.JobStatus, wv.Duration.Round(time.Millisecond))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	var bad []service.DeviceReboot
	skipped := 0
	for _, d := range r.Devices {
		switch d.Outcome {
		case service.OutcomeSucceeded:
		case service.OutcomeSkipped:
			skipped++
		default:
			bad = append(bad, d)
		}
	}
	if len(bad) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Not rebooted:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, d := range bad[:min(len(bad), maxListed)] {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", d.DeviceID, d.Outcome, d.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(bad) > maxListed {
			fmt.Fprintf(w, "  ... and %d more (-o json lists every device)\n", len(bad)-maxListed)
		}
	}
	if r.Interrupted {
		fmt.Fprintln(w, "\nInterrupted: unfinished jobs were cancelled; devices not confirmed by then count as unconfirmed.")
	}
	if r.Stopped && !r.Interrupted {
		fmt.Fprintf(w, "\nRollout stopped: %s; %d devices skipped.\n", r.StopReason, skipped)
	}
	return nil
}

// ---- jobs ----

func jobFlag() cli.Flag {
	return &cli.StringFlag{Name: "job", Aliases: []string{"j"}, Usage: "job id"}
}

func requireJob(c *cli.Context) (string, error) {
	id := c.String("job")
	if id == "" {
		return "", usageErrorf("name the job with --job ID ('dmctl service job list' shows them)", "missing --job")
	}
	if err := service.ValidJobID(id); err != nil {
		return "", usageErrorf("job ids are up to 64 ASCII letters, digits and '-'", "invalid --job: %v", err)
	}
	return id, nil
}

// jobError adds hints to the errors of the job commands.
func jobError(err error) error {
	if errors.Is(err, service.ErrJobNotFound) {
		return withHint(err, "no such job: 'dmctl service job list' shows the hub's jobs")
	}
	return serviceError(err, "")
}

func serviceJobShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print a job, its statistics and, with --devices, each device's row",
		Description: `-o json prints the job as the hub returns it (JobResponse); with --devices,
{"job": ..., "devices": [...]} where devices are the rows of
SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '<job>'.`,
		Flags: serviceFlags(jobFlag(),
			&cli.BoolFlag{Name: "devices", Usage: "also list each device's row (status, the device's answer or the error)"}),
		Action: func(c *cli.Context) error {
			id, err := requireJob(c)
			if err != nil {
				return err
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			job, err := client.Job(c.Context, id)
			if err != nil {
				return jobError(err)
			}
			var rows []service.DeviceJob
			if c.Bool("devices") {
				rows = []service.DeviceJob{}
				err = client.DeviceJobs(c.Context, id, func(r service.DeviceJob) error {
					rows = append(rows, r)
					return nil
				})
				if err != nil {
					return jobError(err)
				}
			}
			w := c.App.Writer
			if jsonOutput(c) {
				if rows == nil {
					return printJSON(w, job)
				}
				return printJSON(w, struct {
					Job     *service.JobResponse `json:"job"`
					Devices []service.DeviceJob  `json:"devices"`
				}{job, rows})
			}
			if err := printJob(w, job); err != nil || rows == nil {
				return err
			}
			fmt.Fprintln(w)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE ID\tSTATUS\tRESULT")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.DeviceID, r.Status, rowResult(r))
			}
			return tw.Flush()
		},
	}
}

// rowResult describes a device row's outcome in one line.
func rowResult(r service.DeviceJob) string {
	if mr := r.MethodResponse(); mr != nil {
		return fmt.Sprintf("device answered %d %s", mr.Status, truncateText(compactJSON(mr.Payload), 120))
	}
	if r.Error != nil {
		return truncateText(strings.TrimSpace("error "+r.Error.Code+": "+r.Error.Description), 160)
	}
	return ""
}

func truncateText(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// hubTime renders one of the hub's timestamps, "-" when unset.
func hubTime(s string) string {
	if t, ok := service.Time(s); ok {
		return t.Format(time.RFC3339)
	}
	return "-"
}

func printJob(w io.Writer, j *service.JobResponse) error {
	st := j.Stats()
	rows := [][2]string{
		{"Job ID", j.JobID}, {"Type", j.Type}, {"Status", j.Status},
	}
	if j.FailureReason != "" {
		rows = append(rows, [2]string{"Failure reason", j.FailureReason})
	}
	if j.StatusMessage != "" {
		rows = append(rows, [2]string{"Status message", j.StatusMessage})
	}
	if m := j.CloudToDeviceMethod; m != nil {
		rows = append(rows, [2]string{"Method", fmt.Sprintf("%s %s (response timeout %ds)", m.MethodName, truncateText(compactJSON(m.Payload), 200), m.ResponseTimeoutInSeconds)})
	}
	if len(j.UpdateTwin) > 0 && string(j.UpdateTwin) != "null" {
		rows = append(rows, [2]string{"Twin update", truncateText(compactJSON(j.UpdateTwin), 200)})
	}
	rows = append(rows,
		[2]string{"Condition", truncateText(j.QueryCondition, 200)},
		[2]string{"Created", hubTime(j.CreatedTime)},
		[2]string{"Start", hubTime(j.StartTime)},
		[2]string{"End", hubTime(j.EndTime)},
		[2]string{"Devices", fmt.Sprintf("%d (succeeded %d, failed %d, running %d, pending %d)",
			st.DeviceCount, st.SucceededCount, st.FailedCount, st.RunningCount, st.PendingCount)},
	)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, kv := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

var jobTypeNames = map[string]string{
	"method": service.JobTypeDeviceMethod, "twin": service.JobTypeUpdateTwin,
	strings.ToLower(service.JobTypeDeviceMethod): service.JobTypeDeviceMethod,
	strings.ToLower(service.JobTypeUpdateTwin):   service.JobTypeUpdateTwin,
}

var jobStatusNames = []string{service.JobQueued, service.JobScheduled, service.JobRunning, service.JobCompleted,
	service.JobFailed, service.JobCancelled, "enqueued", "unknown"}

func serviceJobListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the hub's jobs, oldest first",
		Flags: serviceFlags(
			&cli.StringFlag{Name: "type", Usage: "only jobs of this type: method (scheduleDeviceMethod) or twin (scheduleUpdateTwin)"},
			&cli.StringFlag{Name: "status", Usage: "only jobs with this status: " + strings.Join(jobStatusNames, ", ")},
		),
		Action: func(c *cli.Context) error {
			var f service.JobFilter
			if t := c.String("type"); t != "" {
				var ok bool
				if f.Type, ok = jobTypeNames[strings.ToLower(t)]; !ok {
					return usageErrorf("use --type method or --type twin", "invalid --type %q", t)
				}
			}
			if st := strings.ToLower(c.String("status")); st != "" {
				if !slices.Contains(jobStatusNames, st) {
					return usageErrorf("use --status "+strings.Join(jobStatusNames, ", "), "invalid --status %q", c.String("status"))
				}
				f.Status = st
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			jobs, err := client.Jobs(c.Context, f)
			if err != nil {
				return jobError(err)
			}
			if jsonOutput(c) {
				return printJSON(c.App.Writer, jobs)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB ID\tTYPE\tSTATUS\tDEVICES\tSUCCEEDED\tFAILED\tCREATED")
			for _, j := range jobs {
				st := j.Stats()
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", j.JobID, j.Type, j.Status, st.DeviceCount,
					st.SucceededCount, st.FailedCount, hubTime(j.CreatedTime))
			}
			return tw.Flush()
		},
	}
}

func serviceJobCancelCommand() *cli.Command {
	return &cli.Command{
		Name:  "cancel",
		Usage: "cancel a job that has not finished (devices already called keep their outcome)",
		Description: `Devices the job has not called yet are not called; calls in flight finish.
A job that has already finished is shown unchanged.`,
		Flags: serviceFlags(jobFlag()),
		Action: func(c *cli.Context) error {
			id, err := requireJob(c)
			if err != nil {
				return err
			}
			client, err := newServiceClient(c)
			if err != nil {
				return err
			}
			defer client.Close()
			job, err := client.CancelJob(c.Context, id)
			if err != nil {
				return jobError(err)
			}
			if jsonOutput(c) {
				return printJSON(c.App.Writer, job)
			}
			st := job.Stats()
			_, err = fmt.Fprintf(c.App.Writer, "Job %s is %s (devices %d: succeeded %d, failed %d, running %d, pending %d).\n",
				job.JobID, job.Status, st.DeviceCount, st.SucceededCount, st.FailedCount, st.RunningCount, st.PendingCount)
			return err
		},
	}
}
