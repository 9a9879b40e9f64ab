package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

const serviceCSHint = "pass --connection-string or set IOTHUB_CONNECTION_STRING to the hub's service connection string, 'HostName=<hub>;SharedAccessKeyName=<policy>;SharedAccessKey=<base64>' ('dmctl hub connection-string' prints the local hub's)"

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "service",
		Usage: "call IoT Hub's service API: reboot and invoke methods, twins, devices, modules, queries, statistics",
		Description: `Talks HTTPS to the hub named by the service connection string
(--connection-string or IOTHUB_CONNECTION_STRING). HostName may carry a port
(HostName=localhost:8883 for the local hub); without one, 443 is used. Add
trust for a private CA with --ca-file or DMCTL_CA_FILE; HTTPS_PROXY is honoured.`,
		Subcommands: []*cli.Command{
			serviceRebootCommand(),
			serviceInvokeCommand(),
			{
				Name:        "twin",
				Usage:       "read and update device and module twins",
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
			serviceModuleCommand(),
			serviceQueryCommand(),
			serviceStatsCommand(),
			serviceFirmwareCommand(),
			serviceConfigurationCommand(),
			serviceFactoryResetCommand(),
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
		caFileFlag(),
		outputFlag(),
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
		return nil, usageErrorf(fmt.Sprintf(`--%s takes JSON, e.g. --%s '%s', or @FILE`, name, name, jsonExample(c, name)), "--%s is not valid JSON: %v", name, err)
	}
	return buf.Bytes(), nil
}

// jsonExample is a JSON value for a flag's hint, with only keys the
// receiver knows: rebootDevice's delaySeconds for its payload, a generic
// object for anything else.
func jsonExample(c *cli.Context, name string) string {
	if name == "payload" && (c.Command.Name == "reboot" || c.String("method") == service.RebootMethod) {
		return `{"delaySeconds": 5}`
	}
	return `{"key": "value"}`
}

// queryError makes the hub's refusal of a query (HTTP 400, with the
// parser's message) a usage error with a hint on the query language.
func queryError(err error) error {
	var ae *service.APIError
	if err == nil || hinted(err) || !errors.As(err, &ae) || ae.Status != 400 {
		return err
	}
	return &exitError{err: err, code: exitUsage,
		hint: `check the query: SELECT <fields or *> FROM devices [WHERE <condition>], strings in single quotes, e.g. "SELECT * FROM devices WHERE tags.site = 'lab'"`}
}

// conditionHint is the hint for a --query condition nothing matched or the
// hub refused.
const conditionHint = `check the condition (the body of a WHERE clause, strings in single quotes), e.g. with: dmctl service query "SELECT deviceId FROM devices WHERE <condition>"`

// conditionError is the hub's refusal (HTTP 400) of a query built from a
// --query condition, as a usage error with conditionHint.
func conditionError(err error) error {
	return &exitError{err: err, code: exitUsage, hint: conditionHint}
}

// refused reports whether the hub refused the request as malformed (HTTP 400).
func refused(err error) bool {
	var ae *service.APIError
	return errors.As(err, &ae) && ae.Status == 400
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

// serviceError adds a hint for the failures a user can fix; an error that
// has a hint (or an exit code) of its own already is left alone.
// connectTimeout is the --connect-timeout the command was given (0: none).
func serviceError(err error, deviceID string, connectTimeout time.Duration) error {
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
	case hinted(err):
		return err
	case errors.Is(err, service.ErrRebootNotConfirmed):
		return withHint(err, "the device answered but did not report a new properties.reported.rebootTime in time: raise --wait-timeout, or check that the device reports rebootTime after it restarts")
	case errors.As(err, &dse):
		return err
	case errors.Is(err, service.ErrUnauthorized):
		return withHint(err, "the hub refused the credentials: check the connection string's SharedAccessKeyName and SharedAccessKey, and that the policy has the rights the command needs (ServiceConnect, RegistryRead/RegistryWrite)")
	case errors.Is(err, service.ErrDeviceNotFound):
		return withHint(err, fmt.Sprintf("no device %q in the hub's registry: check --device, or register it with 'dmctl service device create --device %s'", deviceID, deviceID))
	case errors.Is(err, service.ErrDeviceNotOnline) && connectTimeout > 0:
		return withHint(err, fmt.Sprintf("the hub waited --connect-timeout %v and the device did not connect and subscribe to direct methods: check that it runs against this hub (the HostName of its connection string) and that its log shows it connected; 'dmctl service device wait --device ID' waits for it", connectTimeout))
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

// moduleError gives a missing module its hint and exit code 4 (no such
// identity, as for a device), and a module that is not online a hint of its
// own; other errors are left to serviceError.
func moduleError(err error, deviceID, moduleID string) error {
	if err == nil || hinted(err) || moduleID == "" {
		return err
	}
	if errors.Is(err, service.ErrDeviceNotOnline) {
		return withHint(err, fmt.Sprintf("the module is not connected, or has not subscribed to direct methods: run it with its own connection string ('dmctl service module connection-string --device %s --module %s' prints it), or let the hub wait for it with --connect-timeout", deviceID, moduleID))
	}
	if !errors.Is(err, service.ErrModuleNotFound) {
		return err
	}
	return &exitError{err: err, code: exitDeviceNotFound,
		hint: fmt.Sprintf("no module %q on device %q: check --module, list the device's modules with 'dmctl service module list --device %s', or register it with 'dmctl service module create --device %s --module %s'", moduleID, deviceID, deviceID, deviceID, moduleID)}
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
