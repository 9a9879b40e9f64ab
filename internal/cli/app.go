package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
)

const loggerKey = "logger"

// urfave/cli v2 appends two package-level flags of its own to every app and
// command, HelpFlag and VersionFlag, and BoolFlag.Apply writes into the flag
// it parses: two apps running at once in one process would race on them.
// They are replaced once, before any app exists, by flags that parse a copy.
// Its help command is shared the same way (every command's setup writes
// into it), so each command gets a help command of its own, built like it.
func init() {
	cli.HelpFlag = applyCopy{cli.HelpFlag.(*cli.BoolFlag)}
	cli.VersionFlag = applyCopy{cli.VersionFlag.(*cli.BoolFlag)}
	probe := &cli.App{}
	probe.Setup()
	h := probe.Command("help")
	helpTemplate = *h
	helpTemplate.Subcommands, helpTemplate.Flags = nil, nil
}

// helpTemplate is urfave/cli's help command, copied before any app ran.
var helpTemplate cli.Command

// newHelpCommand returns a help command for one command. Its own help
// subcommand hides help, so that setup stops there.
func newHelpCommand() *cli.Command {
	h, inner := helpTemplate, helpTemplate
	inner.HideHelp = true
	h.Subcommands = []*cli.Command{&inner}
	return &h
}

// addHelpCommands gives the app and each command the help command urfave/cli
// would otherwise add as one shared value, where it would add it: last. A
// command without subcommands keeps the help template it had, which
// urfave/cli picks by whether there are subcommands ('dmctl service help
// reboot'). The app's own is swapped in after Setup, so that it is named
// as urfave/cli's was ('dmctl help help' prints "help", not "dmctl help").
func addHelpCommands(app *cli.App) {
	var walk func(cmds []*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			walk(c.Subcommands)
			if len(c.Subcommands) == 0 && c.CustomHelpTemplate == "" {
				c.CustomHelpTemplate = cli.CommandHelpTemplate
			}
			c.Subcommands = append(c.Subcommands, newHelpCommand())
		}
	}
	walk(app.Commands)
	app.Setup()
	for i, c := range app.Commands {
		if c.Name == helpTemplate.Name {
			h := newHelpCommand()
			h.HelpName = " " + h.Name // what running urfave/cli's own names it
			app.Commands[i] = h
		}
	}
}

// applyCopy is a BoolFlag whose Apply leaves the shared value untouched.
type applyCopy struct{ *cli.BoolFlag }

func (f applyCopy) Apply(set *flag.FlagSet) error {
	c := *f.BoolFlag
	return c.Apply(set)
}

// Main runs the dmctl command line args (args[0] is the program name) with
// the given standard streams and returns the process exit code. Errors are
// printed to stderr as "dmctl: error: ..." with a hint where a fix is known.
// Nothing in it calls os.Exit; ctx ending (SIGINT, SIGTERM) interrupts the
// command.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	app.Reader = stdin
	err := app.RunContext(ctx, args)
	if err != nil {
		printError(stderr, err)
	}
	return exitCode(err)
}

// newApp builds the dmctl command tree. Results go to stdout, logs and errors
// to stderr; nothing in it calls os.Exit, so tests can run it in-process.
func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "dmctl",
		Usage:                "Azure IoT Hub device management: simulated device, service CLI and a local IoT Hub",
		Version:              resolveVersion(),
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		ExitErrHandler:       func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "log-level",
				Usage:   "log level: trace, debug, info, warn, error",
				Value:   "info",
				EnvVars: []string{"DMCTL_LOG_LEVEL"},
			},
			&cli.StringFlag{
				Name:        "log-format",
				Usage:       "log format: console or json",
				EnvVars:     []string{"DMCTL_LOG_FORMAT"},
				DefaultText: "console on a terminal, json otherwise",
			},
		},
		Before: func(c *cli.Context) error {
			l, err := newLogger(stderr, c.String("log-level"), c.String("log-format"))
			if err != nil {
				return err
			}
			c.App.Metadata[loggerKey] = l
			return nil
		},
		Commands: commands(),
	}
	app.Metadata = map[string]any{}
	setHelp(app.Commands, "")
	setUsageErrors(app.Commands)
	addHelpCommands(app)
	app.OnUsageError = onUsageError
	app.Action = func(c *cli.Context) error {
		if c.NArg() > 0 {
			return unknownCommand(c)
		}
		return cli.ShowAppHelp(c)
	}
	return app
}

// commands lists the top-level commands.
func commands() []*cli.Command {
	return []*cli.Command{
		withDeviceSend(deviceCommand()),
		serviceCommand(),
		hubCommand(),
		sasCommand(),
		demoCommand(),
		completionCommand(),
		manCommand(),
	}
}

func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageErrorf(flagSuggestion(c, err)+"run '"+c.Command.HelpName+" --help' for usage", "%v", err)
}

// setUsageErrors makes flag-parsing errors of every command, and unknown
// subcommands, usage errors.
func setUsageErrors(cmds []*cli.Command) {
	for _, cmd := range cmds {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = onUsageError
		}
		if cmd.Action == nil && len(cmd.Subcommands) > 0 {
			cmd.Action = func(c *cli.Context) error {
				if c.NArg() > 0 {
					return unknownCommand(c)
				}
				return cli.ShowSubcommandHelp(c)
			}
		}
		rejectArgs(cmd)
		setUsageErrors(cmd.Subcommands)
	}
}

func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	if level == "" {
		level = "info"
	}
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil {
		return zerolog.Nop(), usageErrorf("use one of trace, debug, info, warn, error", "invalid --log-level %q", level)
	}
	switch format {
	case "":
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			format = "console"
		} else {
			format = "json"
		}
	case "console", "json":
	default:
		return zerolog.Nop(), usageErrorf("use console or json", "invalid --log-format %q", format)
	}
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: osNoColor()}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// loggerFrom returns the logger the app built from the global flags.
func loggerFrom(c *cli.Context) zerolog.Logger {
	if l, ok := c.App.Metadata[loggerKey].(zerolog.Logger); ok {
		return l
	}
	return zerolog.Nop()
}

// outputFlag is -o/--output on every command that prints a result. Flags
// are built for each command, never shared: urfave/cli writes into a flag
// value when it parses it.
func outputFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "output",
		Aliases: []string{"o"},
		Usage:   "result format: text or json",
		Value:   "text",
		Action: func(_ *cli.Context, v string) error {
			if l := strings.ToLower(v); l != "text" && l != "json" {
				return usageErrorf("use -o text or -o json", "invalid --output %q", v)
			}
			return nil
		},
	}
}

// jsonOutput reports whether the command was asked for JSON results.
func jsonOutput(c *cli.Context) bool { return strings.EqualFold(c.String("output"), "json") }

// printJSON writes v as indented JSON and a newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// caFileFlag adds PEM certificates to the system roots. Certificate
// verification itself is never switched off.
func caFileFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "ca-file",
		Usage:   "PEM bundle of extra CA certificates to trust (added to the system roots)",
		EnvVars: []string{"DMCTL_CA_FILE"},
	}
}

// loadCAPool returns the system roots plus the certificates of --ca-file.
func loadCAPool(c *cli.Context) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	file := c.String("ca-file")
	if file == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, usageErrorf("check --ca-file or DMCTL_CA_FILE", "read CA file: %v", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, usageErrorf("the file must hold PEM \"CERTIFICATE\" blocks", "no certificate found in CA file %s", file)
	}
	return pool, nil
}

// exitError carries an exit-code class and an optional hint.
type exitError struct {
	err  error
	hint string
	code int // 0: classify err
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf reports bad input (exit code 2) with a hint on how to fix it.
func usageErrorf(hint, format string, args ...any) error {
	return &exitError{err: fmt.Errorf(format, args...), hint: hint, code: exitUsage}
}

// withHint attaches a hint to err; the exit code still follows from err.
func withHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &exitError{err: err, hint: hint}
}
