package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

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
