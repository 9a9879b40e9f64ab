package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/firmware"
	"github.com/dmctl/dmctl/service/rollout"
)

// service firmware update: a firmware campaign from one command.

func serviceFirmwareCommand() *cli.Command {
	return &cli.Command{
		Name:        "firmware",
		Usage:       "update the firmware of a fleet through automatic device management configurations",
		Subcommands: []*cli.Command{serviceFirmwareUpdateCommand()},
	}
}

func serviceFirmwareUpdateCommand() *cli.Command {
	return &cli.Command{
		Name:  "update",
		Usage: "run a firmware campaign over the devices a twin condition picks, in waves, and follow it to the end",
		Description: `Reads the devices --query matches, splits them into --waves and gives each
wave a configuration (PREFIX-w1, PREFIX-w2, ...; a wave of more than 1,000
devices gets several) whose target condition lists the wave's device ids and
whose content is the desired firmware: {"fwVersion", "fwPackageURI",
"fwPackageCheckValue"} (the Azure firmware-update tutorial's twin schema).
It then reads the wave's reported firmware every --poll-interval, showing
the count per fwUpdateStatus, until every device is current on --version,
failed (error, rolledback) or overridden (a configuration of higher priority
applies there and sets another version, so this one never will). A wave whose share of failed devices is above
--abort-failure-rate (default 0%: any failure) stops the campaign before the
next wave. The configurations stay, so devices that connect later still
update.

The package: --package https://HOST/PATH (or http://) with --checksum
SHA256; or --package file:///PATH, whose checksum is computed (devices that
share this machine's files read it there); or --package FILE, a local copy
whose checksum is computed, with --package-uri saying where the devices
download it (a --package-uri ending in / gets the file's name added). With
'dmctl hub serve --packages DIR', a file DIR/NAME is at
https://<HostName>/packages/NAME, HostName as in the connection string.

Exit codes: 0 every device is current on --version; 9 some devices failed
(error or rolledback); 10 --timeout passed first; 11 the failure rule
stopped the campaign; 12 no device failed but some are overridden; 2 bad
input; 1 other failures.`,
		Flags: serviceFlags(
			&cli.StringFlag{Name: "query", Aliases: []string{"q"}, Usage: "the devices: a twin condition (the body of a WHERE clause)"},
			&cli.StringFlag{Name: "version", Usage: "the firmware version to install (desired fwVersion)"},
			&cli.StringFlag{Name: "package", Usage: "the package: an https:// or file:// URI, or a local FILE (then give --package-uri)"},
			&cli.StringFlag{Name: "package-uri", Usage: "with --package FILE: the URI the devices download it from (ending in /: the file's name is added)"},
			&cli.StringFlag{Name: "checksum", Usage: "the package's SHA-256 (64 hex digits); computed for a local or file:// package"},
			&cli.StringFlag{Name: "waves", Usage: "cumulative waves, as percentages or device counts (e.g. 10%,100%)", DefaultText: "one wave"},
			&cli.StringFlag{Name: "abort-failure-rate", Usage: "stop after a wave whose share of failed devices exceeds this", Value: "0%"},
			&cli.DurationFlag{Name: "timeout", Usage: "give up when the campaign has not ended by then", Value: firmware.DefaultTimeout},
			&cli.DurationFlag{Name: "poll-interval", Usage: "how often the devices' reported firmware is read", Value: firmware.DefaultPollInterval},
			&cli.IntFlag{Name: "priority", Usage: "the configurations' priority (higher wins over other configurations)", Value: 10},
			&cli.StringFlag{Name: "id-prefix", Usage: "configuration id prefix (PREFIX-w1, PREFIX-w2, ...)", DefaultText: "fw-<UTC time>"},
		),
		Action: runFirmwareUpdate,
	}
}

// firmwareOptions reads and checks the flags of service firmware update.
func firmwareOptions(c *cli.Context) (firmware.Options, error) {
	o := firmware.Options{
		Condition: strings.TrimSpace(c.String("query")),
		Version:   strings.TrimSpace(c.String("version")),
		Timeout:   c.Duration("timeout"), PollInterval: c.Duration("poll-interval"),
		Priority: c.Int("priority"), IDPrefix: c.String("id-prefix"),
	}
	switch {
	case o.Condition == "":
		return o, usageErrorf(`give a condition, e.g. --query "tags.site = 'lab'"`, "missing --query")
	case strings.HasPrefix(strings.ToUpper(o.Condition), "SELECT "):
		return o, usageErrorf(`--query takes only the condition (the WHERE clause body), e.g. --query "tags.site = 'lab'"`, "--query is a whole query, not a condition")
	case o.Version == "":
		return o, usageErrorf("give the version to install, e.g. --version 2.0.0", "missing --version")
	case o.Timeout <= 0 || o.PollInterval <= 0:
		return o, usageErrorf("--timeout and --poll-interval are positive durations, e.g. 30m and 1s", "invalid --timeout or --poll-interval")
	}
	var err error
	if o.PackageURI, o.Checksum, err = firmwarePackage(c); err != nil {
		return o, err
	}
	if c.IsSet("waves") {
		if o.Waves, err = rollout.ParseWaves(c.String("waves")); err != nil {
			return o, usageErrorf("use cumulative percentages or counts, e.g. --waves 10%,100% or --waves 1,10,100", "invalid --waves: %v", err)
		}
	}
	if o.AbortFailureRate, err = rollout.ParseRate(c.String("abort-failure-rate")); err != nil {
		return o, usageErrorf("write the threshold as a percentage, e.g. --abort-failure-rate 5% (100% never stops)", "invalid --abort-failure-rate: %v", err)
	}
	if c.IsSet("id-prefix") {
		if err := firmware.ValidIDPrefix(o.IDPrefix); err != nil {
			return o, usageErrorf("configuration ids are lowercase letters, digits and -:+%_#*?!(),=@;$' (up to 128 with the -wN suffix)", "invalid --id-prefix: %v", err)
		}
	}
	return o, nil
}

// firmwarePackage resolves --package, --package-uri and --checksum to the
// URI the devices download and the package's SHA-256.
func firmwarePackage(c *cli.Context) (uri, sum string, err error) {
	pkg := strings.TrimSpace(c.String("package"))
	given := strings.TrimSpace(c.String("checksum"))
	if given != "" {
		if given, err = firmware.ParseChecksum(given); err != nil {
			return "", "", usageErrorf("--checksum is the package's SHA-256 as 64 hex digits (sha256sum FILE prints it)", "invalid --checksum: %v", err)
		}
	}
	if pkg == "" {
		return "", "", usageErrorf("give --package https://HOST/fw.bin --checksum SHA256, --package file:///PATH, or --package FILE --package-uri URI", "missing --package")
	}
	local := ""
	if u, perr := url.Parse(pkg); perr == nil && u.Scheme != "" && len(u.Scheme) > 1 {
		if c.IsSet("package-uri") {
			return "", "", usageErrorf("--package-uri goes with a local --package FILE", "--package is a URI already (%s)", u.Scheme)
		}
		switch strings.ToLower(u.Scheme) {
		case "https", "http":
			if u.Host == "" {
				return "", "", usageErrorf("e.g. --package https://localhost:8883/packages/fw-2.0.0.bin", "invalid --package %q: no host", pkg)
			}
			if given == "" {
				return "", "", usageErrorf("the devices check the package against it: --checksum $(sha256sum fw.bin | cut -d' ' -f1), or give a local copy as --package FILE --package-uri URI", "an https:// --package needs --checksum")
			}
			return pkg, given, nil
		case "file":
			if u.Path == "" {
				return "", "", usageErrorf("e.g. --package file:///var/fw/fw-2.0.0.bin", "invalid --package %q: no path", pkg)
			}
			uri, local = pkg, u.Path
		default:
			return "", "", usageErrorf("use an https://, http:// or file:// URI, or a local file", "unsupported --package scheme %q", u.Scheme)
		}
	} else {
		uri = strings.TrimSpace(c.String("package-uri"))
		if uri == "" {
			return "", "", usageErrorf("say where the devices download it, e.g. --package-uri https://localhost:8883/packages/"+fileBase(pkg)+" (dmctl hub serve --packages DIR serves DIR/NAME at /packages/NAME)", "--package FILE needs --package-uri")
		}
		u, perr := url.Parse(uri)
		if perr != nil || (u.Scheme != "https" && u.Scheme != "http" && u.Scheme != "file") || (u.Scheme != "file" && u.Host == "") {
			return "", "", usageErrorf("e.g. --package-uri https://localhost:8883/packages/fw-2.0.0.bin", "invalid --package-uri %q", uri)
		}
		if strings.HasSuffix(uri, "/") {
			uri += url.PathEscape(fileBase(pkg))
		}
		local = pkg
	}
	sum, err = firmware.FileChecksum(local)
	if err != nil {
		return "", "", usageErrorf("--package names a file to compute the checksum from; check the path", "read the package: %v", err)
	}
	if given != "" && given != sum {
		return "", "", usageErrorf("the file is not the package --checksum describes: check both", "--checksum %s does not match %s (its SHA-256 is %s)", given, local, sum)
	}
	return uri, sum, nil
}

func fileBase(p string) string {
	if i := strings.LastIndexAny(p, `/\`); i >= 0 {
		return p[i+1:]
	}
	return p
}

func runFirmwareUpdate(c *cli.Context) error {
	opts, err := firmwareOptions(c)
	if err != nil {
		return err
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	pr := newFirmwareProgress(c.App.ErrWriter, loggerFrom(c))
	opts.Progress = pr.update
	res, err := firmware.Run(c.Context, client, opts)
	pr.finish()
	if res != nil {
		var perr error
		if jsonOutput(c) {
			perr = printJSON(c.App.Writer, firmwareJSON(res))
		} else {
			perr = printFirmwareSummary(c.App.Writer, res)
		}
		if perr != nil && err == nil {
			err = perr
		}
	}
	return firmwareError(err)
}

// firmwareError adds the exit code and a hint for a campaign's failures.
func firmwareError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, firmware.ErrAborted):
		return &exitError{err: err, code: exitFwAborted, hint: "the failed devices and their fwUpdateSubstatus are in the summary; fix the package or the devices, then run the campaign again (devices already current stay current)"}
	case errors.Is(err, firmware.ErrTimedOut):
		return &exitError{err: err, code: exitFwTimedOut, hint: "pending devices may be offline or slow; the configurations stay, so they update when they come back: raise --timeout, or check them"}
	case errors.Is(err, firmware.ErrSomeFailed):
		return &exitError{err: err, code: exitFwFailed, hint: "the failed devices and their fwUpdateSubstatus are in the summary ('-o json' for all details)"}
	case errors.Is(err, firmware.ErrOverridden):
		return &exitError{err: err, code: exitFwOverridden, hint: "the 'overridden:' lines name the configuration that applies there instead: delete it or lower its priority, or run the campaign with a higher --priority"}
	case errors.Is(err, firmware.ErrNoDevices):
		return withHint(err, conditionHint)
	case errors.Is(err, service.ErrConfigurationExists):
		return withHint(err, "a configuration with that id exists already: choose another --id-prefix")
	case refused(err):
		return conditionError(err)
	}
	return serviceError(err, "", 0)
}

// firmwareStatuses orders the status counts of the live line.
var firmwareStatuses = []string{
	firmware.StatusWaiting, iothub.FwStatusDownloading, iothub.FwStatusVerifying, iothub.FwStatusApplying,
	iothub.FwStatusRebooting, iothub.FwStatusCurrent, iothub.FwStatusError, iothub.FwStatusRolledBack,
}

// statusLine renders counts as "waiting 2 · downloading 12 · ... · rolledback 0":
// always current, error and rolledback; the others when some device shows them.
func statusLine(c firmware.Counts) string {
	var parts []string
	known := map[string]bool{}
	for _, s := range firmwareStatuses {
		known[s] = true
		n := c.ByStatus[s]
		if n > 0 || s == iothub.FwStatusCurrent || s == iothub.FwStatusError || s == iothub.FwStatusRolledBack {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	for s, n := range c.ByStatus {
		if !known[s] {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	if c.Overridden > 0 {
		parts = append(parts, fmt.Sprintf("overridden %d", c.Overridden))
	}
	return strings.Join(parts, " · ")
}

// firmwareProgress shows a campaign's progress on stderr: one live line on
// a terminal, a log line when the counts change (at most every few
// seconds) otherwise.
type firmwareProgress struct {
	live *liveLine
	log  zerolog.Logger
	throttle
}

func newFirmwareProgress(w io.Writer, log zerolog.Logger) *firmwareProgress {
	return &firmwareProgress{live: newLiveLine(w), log: log, throttle: throttle{every: 2 * time.Second}}
}

func (p *firmwareProgress) update(fp firmware.Progress) {
	switch fp.Stage {
	case firmware.StageDevices:
		p.log.Info().Int("devices", fp.Devices).Int("waves", fp.Waves).Msg("read the devices; starting the campaign")
	case firmware.StageWaveStarted:
		p.line()
		p.log.Info().Int("wave", fp.Wave).Int("waves", fp.Waves).Int("devices", fp.WaveSize).Strs("configurations", fp.ConfigIDs).Msg("configuration created")
		p.last = time.Time{}
		p.show(fp)
	case firmware.StageWavePolled:
		if fp.Err != nil {
			p.line()
			p.log.Warn().Err(fp.Err).Int("wave", fp.Wave).Msg("progress query failed; still waiting")
		}
		p.show(fp)
	case firmware.StageWaveDone:
		p.show(fp)
		p.line()
		p.log.Info().Int("wave", fp.Wave).Int("waves", fp.Waves).Int("current", fp.Counts.Current).
			Int("failed", fp.Counts.Failed).Int("overridden", fp.Counts.Overridden).Dur("took", fp.Elapsed).Msg("wave done")
	case firmware.StageStopped:
		p.line()
		p.log.Warn().Str("reason", fp.Reason).Msg("campaign stopped")
	}
}

func (p *firmwareProgress) show(fp firmware.Progress) {
	msg := statusLine(fp.Counts)
	if !p.live.tty {
		if fp.Stage == firmware.StageWaveDone || !p.due(msg) {
			return
		}
		p.log.Info().Int("wave", fp.Wave).Int("devices", fp.WaveSize).Str("status", msg).Dur("elapsed", fp.Elapsed.Round(time.Millisecond)).Msg("firmware progress")
		return
	}
	p.live.show(fmt.Sprintf("wave %d/%d  %s  (%s)", fp.Wave, fp.Waves, msg, fp.Elapsed.Round(100*time.Millisecond)))
}

// line ends the live line so that a log line can follow.
func (p *firmwareProgress) line() { p.live.end() }

func (p *firmwareProgress) finish() { p.line() }

// printFirmwareSummary writes the per-wave table and the failed devices.
func printFirmwareSummary(w io.Writer, r *firmware.Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tCONFIGURATIONS\tTARGETED\tCURRENT\tFAILED\tOVERRIDDEN\tPENDING")
	for _, wr := range r.Waves {
		ids := strings.Join(wr.ConfigIDs, ",")
		if ids == "" {
			ids = "(none created)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%d\n", wr.Wave, ids, wr.Size, wr.Counts.Current, wr.Counts.Failed, wr.Counts.Overridden, wr.Counts.Pending)
	}
	fmt.Fprintf(tw, "total\t\t%d\t%d\t%d\t%d\t%d\n", r.Devices-r.NotStarted, r.Counts.Current, r.Counts.Failed, r.Counts.Overridden, r.Counts.Pending)
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.NotStarted > 0 {
		fmt.Fprintf(w, "not started: %d devices (waves %d to %d)\n", r.NotStarted, len(r.Waves)+1, r.Planned)
	}
	for _, d := range r.DeviceList {
		switch d.Outcome {
		case firmware.OutcomeFailed:
			fmt.Fprintf(w, "failed: %s %s (version %s) %s\n", d.DeviceID, d.Status, d.CurrentVersion, d.Substatus)
		case firmware.OutcomeOverridden:
			fmt.Fprintf(w, "overridden: %s by %s (desired %s, version %s)\n", d.DeviceID, d.OverriddenBy, d.DesiredVersion, d.CurrentVersion)
		}
	}
	_, err := fmt.Fprintf(w, "%d of %d devices current on %s in %s\n", r.Counts.Current, r.Devices, r.Version, r.Duration.Round(100*time.Millisecond))
	return err
}

// firmwareOutput is the JSON summary of a campaign.
type firmwareOutput struct {
	Query        string               `json:"query"`
	Version      string               `json:"version"`
	PackageURI   string               `json:"packageUri"`
	Checksum     string               `json:"checksum"`
	IDPrefix     string               `json:"idPrefix"`
	Devices      int                  `json:"devices"`
	WavesPlanned int                  `json:"wavesPlanned"`
	NotStarted   int                  `json:"notStarted"`
	Counts       firmware.Counts      `json:"counts"`
	Aborted      bool                 `json:"aborted"`
	TimedOut     bool                 `json:"timedOut"`
	StopReason   string               `json:"stopReason,omitempty"`
	DurationMs   int64                `json:"durationMs"`
	Waves        []firmwareWaveOutput `json:"waves"`
	DeviceList   []firmware.Device    `json:"deviceList"`
}

type firmwareWaveOutput struct {
	Wave             int             `json:"wave"`
	ConfigurationIDs []string        `json:"configurationIds"`
	Targeted         int             `json:"targeted"`
	Counts           firmware.Counts `json:"counts"`
	FailureRate      float64         `json:"failureRate"`
	DurationMs       int64           `json:"durationMs"`
}

func firmwareJSON(r *firmware.Result) firmwareOutput {
	out := firmwareOutput{
		Query: r.Condition, Version: r.Version, PackageURI: r.PackageURI, Checksum: r.Checksum, IDPrefix: r.IDPrefix,
		Devices: r.Devices, WavesPlanned: r.Planned, NotStarted: r.NotStarted, Counts: r.Counts, Aborted: r.Aborted,
		TimedOut: r.TimedOut, StopReason: r.StopReason, DurationMs: r.Duration.Milliseconds(),
		Waves: []firmwareWaveOutput{}, DeviceList: r.DeviceList,
	}
	if out.DeviceList == nil {
		out.DeviceList = []firmware.Device{}
	}
	for _, wr := range r.Waves {
		ids := wr.ConfigIDs
		if ids == nil {
			ids = []string{}
		}
		out.Waves = append(out.Waves, firmwareWaveOutput{
			Wave: wr.Wave, ConfigurationIDs: ids, Targeted: wr.Size, Counts: wr.Counts,
			FailureRate: wr.FailureRate, DurationMs: wr.Duration.Milliseconds(),
		})
	}
	return out
}
