package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// The help of the module and stats commands, kept beside them.
func serviceModuleCommand() *cli.Command {
	return &cli.Command{
		Name:  "module",
		Usage: "manage the module identities of a device",
		Subcommands: []*cli.Command{
			serviceModuleCreateCommand(), serviceModuleShowCommand(), serviceModuleListCommand(),
			serviceModuleDeleteCommand(), serviceModuleCSCommand(),
		},
	}
}

// moduleFlag is --module on the module commands (required) and on invoke
// and twin (optional: the device's own when unset).
func moduleFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "module", Usage: usage}
}

// moduleID names the device and the module of a module command.
type moduleID struct{ device, module string }

func requireModule(c *cli.Context) (moduleID, error) {
	d, err := requireDevice(c)
	if err != nil {
		return moduleID{}, err
	}
	m := c.String("module")
	if m == "" {
		return moduleID{}, usageErrorf("name the module with --module ID", "missing --module")
	}
	return moduleID{d, m}, nil
}

func serviceModuleCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "register a module identity on a device and print it (keys left out; see connection-string)",
		Description: `Registers --module on --device, which must exist. With --auth sas (the
default) the hub generates the module's keys; x509-thumbprint and x509-ca
work as for 'dmctl service device create'. A module that exists already
fails the command (--if-exists fail, the default); with --if-exists print it
is printed as it is, so the same command can be run again.`,
		Flags: serviceFlags(append([]cli.Flag{deviceFlag(), moduleFlag("module id"),
			&cli.StringFlag{Name: "if-exists", Usage: "for a module that exists already: `fail` or print (the module as it is, left unchanged)", Value: "fail"},
		}, authFlags()...)...),
		Action: serviceAction(moduleCreateArgs, createModule),
	}
}

type moduleCreate struct {
	moduleID
	auth        *iothub.Authentication
	printExists bool
}

func moduleCreateArgs(c *cli.Context) (moduleCreate, error) {
	id, err := requireModule(c)
	if err != nil {
		return moduleCreate{}, err
	}
	auth, err := authArgs(c)
	if err != nil {
		return moduleCreate{}, err
	}
	printExists, err := ifExistsFlag(c)
	if err != nil {
		return moduleCreate{}, err
	}
	return moduleCreate{id, auth, printExists}, nil
}

func createModule(c *cli.Context, s *service.Client, a moduleCreate) (any, func(io.Writer) error, error) {
	m, err := s.CreateModule(c.Context, a.device, a.module, a.auth)
	existing := false
	if errors.Is(err, service.ErrModuleAlreadyExists) && a.printExists {
		m, err = s.Module(c.Context, a.device, a.module)
		existing = true
	}
	if err != nil {
		if errors.Is(err, service.ErrModuleAlreadyExists) {
			err = withHint(err, fmt.Sprintf("print its connection string with 'dmctl service module connection-string --device %s --module %s', or add --if-exists print", a.device, a.module))
		}
		return nil, nil, err
	}
	out := struct {
		iothub.Module
		Existing bool `json:"existing,omitempty"`
	}{redactModuleKeys(*m), existing}
	return out, printModuleText(m), nil
}

// redactModuleKeys drops a module's symmetric keys from output that is not
// about credentials.
func redactModuleKeys(m iothub.Module) iothub.Module {
	if m.Authentication != nil {
		a := *m.Authentication
		a.SymmetricKey = nil
		m.Authentication = &a
	}
	return m
}

// printModuleText is the text of module create and show.
func printModuleText(m *iothub.Module) func(io.Writer) error {
	return func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		rows := [][2]string{
			{"Module ID", m.ModuleID}, {"Device ID", m.DeviceID}, {"Connection state", m.ConnectionState},
			{"Last activity", textTime(m.LastActivityTime)}, {"Authentication", authType(m.Authentication)},
		}
		rows = append(rows, thumbprintRows(m.Authentication)...)
		if m.ManagedBy != "" {
			rows = append(rows, [2]string{"Managed by", m.ManagedBy})
		}
		rows = append(rows, [2]string{"ETag", m.ETag}, [2]string{"Generation ID", m.GenerationID})
		for _, kv := range rows {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
		return tw.Flush()
	}
}

func authType(a *iothub.Authentication) string {
	if a == nil {
		return ""
	}
	return a.Type
}

// thumbprintRows are the text rows of an identity's X.509 thumbprints.
func thumbprintRows(a *iothub.Authentication) [][2]string {
	if a == nil || a.X509Thumbprint == nil {
		return nil
	}
	var rows [][2]string
	if p := a.X509Thumbprint.PrimaryThumbprint; p != nil && *p != "" {
		rows = append(rows, [2]string{"Primary thumbprint", *p})
	}
	if s := a.X509Thumbprint.SecondaryThumbprint; s != nil && *s != "" {
		rows = append(rows, [2]string{"Secondary thumbprint", *s})
	}
	return rows
}

func serviceModuleShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print a module identity (keys left out; see connection-string)",
		Flags: serviceFlags(deviceFlag(), moduleFlag("module id")),
		Action: serviceAction(requireModule, func(c *cli.Context, s *service.Client, id moduleID) (any, func(io.Writer) error, error) {
			m, err := s.Module(c.Context, id.device, id.module)
			if err != nil {
				return nil, nil, err
			}
			return redactModuleKeys(*m), printModuleText(m), nil
		}),
	}
}

func serviceModuleListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the module identities of a device (keys left out)",
		Flags: serviceFlags(deviceFlag()),
		Action: serviceAction(requireDevice, func(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
			ms, err := s.Modules(c.Context, id)
			if err != nil {
				return nil, nil, err
			}
			sort.Slice(ms, func(i, j int) bool { return ms[i].ModuleID < ms[j].ModuleID })
			out := make([]iothub.Module, 0, len(ms))
			for _, m := range ms {
				out = append(out, redactModuleKeys(m))
			}
			return out, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "MODULE ID\tAUTHENTICATION\tCONNECTION\tLAST ACTIVITY")
				for _, m := range ms {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.ModuleID, authType(m.Authentication), m.ConnectionState, textTime(m.LastActivityTime))
				}
				return tw.Flush()
			}, nil
		}),
	}
}

func serviceModuleDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:  "delete",
		Usage: "remove a module identity",
		Flags: serviceFlags(deviceFlag(), moduleFlag("module id"), &cli.StringFlag{Name: "etag", Usage: "delete only if the module's etag is still this one"}),
		Action: serviceAction(requireModule, func(c *cli.Context, s *service.Client, id moduleID) (any, func(io.Writer) error, error) {
			if err := s.DeleteModule(c.Context, id.device, id.module, c.String("etag")); err != nil {
				return nil, nil, err
			}
			return map[string]any{"deviceId": id.device, "moduleId": id.module, "deleted": true}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Deleted module %s of device %s.\n", id.module, id.device)
				return err
			}, nil
		}),
	}
}

func serviceModuleCSCommand() *cli.Command {
	return &cli.Command{
		Name:  "connection-string",
		Usage: "print a module's connection string (it holds the module's key)",
		Flags: serviceFlags(deviceFlag(), moduleFlag("module id"), &cli.StringFlag{Name: "key", Usage: "primary or secondary", Value: "primary"}),
		Action: serviceAction(func(c *cli.Context) (moduleKey, error) {
			id, err := requireModule(c)
			if err != nil {
				return moduleKey{}, err
			}
			which, err := keyFlag(c)
			return moduleKey{id, which}, err
		}, func(c *cli.Context, s *service.Client, a moduleKey) (any, func(io.Writer) error, error) {
			m, err := s.Module(c.Context, a.device, a.module)
			if err != nil {
				return nil, nil, err
			}
			cs, err := s.ModuleConnectionString(m, a.which)
			if err != nil {
				return nil, nil, err
			}
			return map[string]string{"deviceId": m.DeviceID, "moduleId": m.ModuleID, "connectionString": cs}, printLine(cs), nil
		}),
	}
}

type moduleKey struct {
	moduleID
	which service.KeyKind
}

// keyFlag reads --key of the connection-string commands.
func keyFlag(c *cli.Context) (service.KeyKind, error) {
	switch c.String("key") {
	case "primary":
		return service.PrimaryKey, nil
	case "secondary":
		return service.SecondaryKey, nil
	}
	return 0, usageErrorf("use --key primary or --key secondary", "invalid --key %q", c.String("key"))
}

// Values of --auth.
const (
	authSAS        = "sas"
	authThumbprint = "x509-thumbprint"
	authCA         = "x509-ca"
)

// authFlags are the flags that choose how a new identity authenticates.
func authFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "auth", Usage: "how the identity authenticates: sas (symmetric keys), x509-thumbprint (a self-signed certificate: --cert or --primary-thumbprint, which imply it) or x509-ca (a certificate signed by a CA the hub trusts, its subject CN the id)", Value: authSAS},
		&cli.StringFlag{Name: "cert", Usage: "with x509-thumbprint: the identity's certificate `FILE` (PEM); its SHA-1 thumbprint is registered as the primary"},
		&cli.StringFlag{Name: "primary-thumbprint", Usage: "with x509-thumbprint: the primary certificate's thumbprint (SHA-1 or SHA-256 hex)"},
		&cli.StringFlag{Name: "secondary-thumbprint", Usage: "with x509-thumbprint: a second certificate's thumbprint, for rolling certificates over"},
	}
}

const authHint = "use --auth sas, --auth x509-thumbprint --cert FILE (or --primary-thumbprint HEX), or --auth x509-ca"

// authArgs reads --auth and its certificate flags; nil means SAS. --cert
// or a thumbprint without --auth means x509-thumbprint.
func authArgs(c *cli.Context) (*iothub.Authentication, error) {
	mode := c.String("auth")
	x509Flags := c.IsSet("cert") || c.IsSet("primary-thumbprint") || c.IsSet("secondary-thumbprint")
	if !c.IsSet("auth") && x509Flags {
		mode = authThumbprint
	}
	switch mode {
	case authSAS, authCA:
		for _, f := range []string{"cert", "primary-thumbprint", "secondary-thumbprint"} {
			if c.IsSet(f) {
				return nil, usageErrorf("--"+f+" goes with --auth x509-thumbprint", "--%s with --auth %s", f, mode)
			}
		}
		if mode == authCA {
			return service.CAAuth(), nil
		}
		return nil, nil
	case authThumbprint:
	default:
		return nil, usageErrorf(authHint, "invalid --auth %q", mode)
	}
	var primary string
	switch {
	case c.IsSet("cert") && c.IsSet("primary-thumbprint"):
		return nil, usageErrorf("--cert registers the certificate's thumbprint as the primary; give one of them", "--cert and --primary-thumbprint are mutually exclusive")
	case c.IsSet("cert"):
		t, err := certThumbprint(c, c.String("cert"))
		if err != nil {
			return nil, err
		}
		primary = t
	case c.IsSet("primary-thumbprint"):
		t, err := service.ParseThumbprint(c.String("primary-thumbprint"))
		if err != nil {
			return nil, usageErrorf("give the hex thumbprint 'openssl x509 -noout -fingerprint -sha1 -in FILE' prints, or --cert FILE", "--primary-thumbprint: %v", err)
		}
		primary = t
	default:
		return nil, usageErrorf("give the device's certificate with --cert FILE, or its thumbprint with --primary-thumbprint HEX", "--auth x509-thumbprint needs --cert or --primary-thumbprint")
	}
	var secondary string
	if c.IsSet("secondary-thumbprint") {
		t, err := service.ParseThumbprint(c.String("secondary-thumbprint"))
		if err != nil {
			return nil, usageErrorf("give the hex thumbprint 'openssl x509 -noout -fingerprint -sha1 -in FILE' prints", "--secondary-thumbprint: %v", err)
		}
		secondary = t
	}
	return service.ThumbprintAuth(primary, secondary), nil
}

// certThumbprint reads a PEM certificate file and returns its thumbprint;
// an expired certificate is registered, with a warning.
func certThumbprint(c *cli.Context, file string) (string, error) {
	const hint = "--cert takes the identity's certificate as PEM ('dmctl device cert create' makes one)"
	if strings.TrimSpace(file) == "" {
		return "", usageErrorf(hint, "--cert is empty")
	}
	data, err := readLimited(file, maxJSONFlagFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", usageErrorf(hint, "--cert: %s does not exist", file)
		}
		return "", usageErrorf(hint, "--cert: %v", err)
	}
	cert, err := service.ParseCertificatePEM(data)
	if err != nil {
		return "", usageErrorf(hint, "--cert %s: %v", file, err)
	}
	if time.Now().After(cert.NotAfter) {
		log := loggerFrom(c)
		log.Warn().Str("cert", file).Time("not_after", cert.NotAfter).Msg("the certificate has expired: the hub will refuse it at login")
	}
	return service.Thumbprint(cert), nil
}
