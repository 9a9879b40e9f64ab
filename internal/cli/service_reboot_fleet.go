package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/rollout"
)

// The fleet half of service reboot: --query reboots every device a twin query
// picks, through IoT Hub jobs, in waves, with live progress.

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
	opts := rollout.Options{
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
		if opts.Waves, err = rollout.ParseWaves(c.String("waves")); err != nil {
			return usageErrorf("use cumulative percentages or counts, e.g. --waves 1%,10%,100% or --waves 1,10,100", "invalid --waves: %v", err)
		}
	}
	if opts.AbortFailureRate, err = rollout.ParseRate(c.String("abort-failure-rate")); err != nil {
		return usageErrorf("write the threshold as a percentage, e.g. --abort-failure-rate 5% (100% never stops)", "invalid --abort-failure-rate: %v", err)
	}
	if p := opts.JobIDPrefix; p != "" {
		if err := iothub.ValidJobID(p + "-w999-999"); err != nil {
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
	res, err := rollout.Run(c.Context, client, opts)
	pr.finish()
	if res != nil && !errors.Is(err, rollout.ErrNoDevices) {
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
	case errors.Is(err, rollout.ErrNoDevices):
		return withHint(err, conditionHint)
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
	case refused(err):
		return conditionError(err)
	}
	return serviceError(err, "", 0)
}

// fleetProgress shows a fleet reboot's progress on stderr: one live line on
// a terminal, log lines every few seconds otherwise.
type fleetProgress struct {
	live *liveLine
	log  zerolog.Logger
	throttle
}

func newFleetProgress(w io.Writer, log zerolog.Logger) *fleetProgress {
	return &fleetProgress{live: newLiveLine(w), log: log, throttle: throttle{every: 5 * time.Second}}
}

func (p *fleetProgress) update(fp rollout.Progress) {
	switch fp.Stage {
	case rollout.StageBaseline:
		p.line()
		p.log.Info().Int("devices", fp.Devices).Int("waves", fp.Waves).Msg("read the devices' rebootTime; starting the reboot jobs")
	case rollout.StageWaveStarted:
		p.line()
		p.log.Info().Int("wave", fp.Wave).Int("waves", fp.Waves).Int("devices", fp.WaveSize).Strs("jobs", fp.JobIDs).Msg("reboot job created")
		p.last = time.Time{}
		p.show(fp)
	case rollout.StageWavePolled:
		if fp.Err != nil {
			p.line()
			p.log.Warn().Err(fp.Err).Strs("jobs", fp.JobIDs).Msg("poll failed; still waiting")
		}
		p.show(fp)
	case rollout.StageWaveDone:
		p.show(fp)
		p.line()
		cnt := fp.Counts
		p.log.Info().Int("wave", fp.Wave).Int("waves", fp.Waves).Strs("jobs", fp.JobIDs).Str("jobStatus", fp.JobStatus).
			Int("succeeded", cnt.Succeeded).Int("failed", cnt.Failed).Int("offline", cnt.Offline).
			Int("unconfirmed", cnt.Unconfirmed).Dur("took", fp.Elapsed).Msg("wave done")
	case rollout.StageStoppedEarly:
		p.line()
		p.log.Warn().Str("reason", fp.Reason).Msg("rollout stopped")
	}
}

// show renders the live line, or a log line at most every p.every.
func (p *fleetProgress) show(fp rollout.Progress) {
	cnt := fp.Counts
	done := cnt.Succeeded + cnt.Failed + cnt.Offline + cnt.Unconfirmed
	answered, status := fp.Stats.Finished(), fp.JobStatus
	if !p.live.tty {
		msg := fmt.Sprintf("%d/%d/%d/%d/%s", answered, cnt.Succeeded, cnt.Failed+cnt.Offline, cnt.Unconfirmed, status)
		if fp.Stage == rollout.StageWaveDone || !p.due(msg) {
			return // at a wave's end, the wave-done log line follows
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
	p.live.show(line)
}

// line ends the live line so that a log line can follow.
func (p *fleetProgress) line() { p.live.end() }

func (p *fleetProgress) finish() { p.line() }

// fleetOutput is the JSON summary of a fleet reboot.
type fleetOutput struct {
	Query       string              `json:"query"`
	Counts      rollout.Counts      `json:"counts"`
	Stopped     bool                `json:"stopped"`
	StopReason  string              `json:"stopReason,omitempty"`
	Interrupted bool                `json:"interrupted,omitempty"`
	WavesPlan   int                 `json:"wavesPlanned"`
	DurationMs  int64               `json:"durationMs"`
	Waves       []fleetWaveOutput   `json:"waves"`
	Devices     []fleetDeviceOutput `json:"devices"`
}

type fleetWaveOutput struct {
	Wave          int            `json:"wave"`
	JobIDs        []string       `json:"jobIds"`
	Size          int            `json:"size"`
	JobStatus     string         `json:"jobStatus"`
	FailureReason string         `json:"failureReason,omitempty"`
	Counts        rollout.Counts `json:"counts"`
	FailureRate   float64        `json:"failureRate"`
	DurationMs    int64          `json:"durationMs"`
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

func fleetJSON(r *rollout.Result) fleetOutput {
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
func printFleetSummary(w io.Writer, r *rollout.Result) error {
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
	var bad []rollout.Device
	skipped := 0
	for _, d := range r.Devices {
		switch d.Outcome {
		case rollout.OutcomeSucceeded:
		case rollout.OutcomeSkipped:
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
