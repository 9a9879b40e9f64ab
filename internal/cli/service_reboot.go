package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

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

// runServiceReboot reboots one device (--device) or, with --query, a fleet.
func runServiceReboot(c *cli.Context) error {
	if c.IsSet("query") {
		return runFleetReboot(c)
	}
	return serviceAction(parseRebootArgs, rebootDevice)(c)
}

// rebootArgs are the flags of a one-device reboot, checked.
type rebootArgs struct {
	id   string
	wait bool
	opts service.RebootOptions // all but Progress
}

func parseRebootArgs(c *cli.Context) (rebootArgs, error) {
	return parseOneDevice(c, "waves", "abort-failure-rate", "job-prefix", "job-timeout")
}

// parseOneDevice checks the flags of a confirmed method on one device
// (service reboot --device, service factory-reset --device): the flags
// named in queryOnly belong to --query and are refused here.
func parseOneDevice(c *cli.Context, queryOnly ...string) (rebootArgs, error) {
	for _, f := range queryOnly {
		if c.IsSet(f) {
			return rebootArgs{}, usageErrorf("--"+f+" goes with --query", "--%s without --query", f)
		}
	}
	id := c.String("device")
	if id == "" {
		return rebootArgs{}, usageErrorf("name the device with --device ID, or pick devices with --query CONDITION", "missing --device or --query")
	}
	payload, rt, ct, err := methodArgs(c)
	if err != nil {
		return rebootArgs{}, err
	}
	if c.Duration("wait-timeout") <= 0 || c.Duration("poll-interval") <= 0 {
		return rebootArgs{}, usageErrorf("--wait-timeout and --poll-interval must be positive durations, e.g. 2m and 1s", "invalid --wait-timeout or --poll-interval")
	}
	wait := c.Bool("wait") && !c.Bool("no-wait")
	return rebootArgs{id: id, wait: wait, opts: service.RebootOptions{
		Payload:         payload,
		ResponseTimeout: rt,
		ConnectTimeout:  ct,
		NoWait:          !wait,
		WaitTimeout:     c.Duration("wait-timeout"),
		PollInterval:    c.Duration("poll-interval"),
	}}, nil
}

// rebootDevice reboots a.id, printing the device's answer (text) and
// logging the stages as they come; the result is the reboot time.
func rebootDevice(c *cli.Context, s *service.Client, a rebootArgs) (any, func(io.Writer) error, error) {
	w, log, asJSON, id, wait := c.App.Writer, loggerFrom(c), jsonOutput(c), a.id, a.wait
	opts := a.opts
	opts.Progress = func(p service.RebootProgress) {
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
				log.Info().Str("device", id).Dur("timeout", opts.WaitTimeout).Msg("waiting for the device to report a new rebootTime")
			}
		case service.StagePolled:
			log.Debug().Str("device", id).Int("poll", p.Poll).AnErr("error", p.Err).Msg("rebootTime not updated yet")
		case service.StageConfirmed:
			log.Info().Str("device", id).Str("rebootTime", r.RebootTime).Dur("waited", r.WaitDuration).Msg("reboot confirmed")
		}
	}
	res, err := s.Reboot(c.Context, id, opts)
	if errors.Is(err, context.Canceled) {
		err = interruptedReboot(id, res, err)
	}
	if res == nil {
		return nil, nil, err
	}
	return rebootJSON(res), func(w io.Writer) error {
		if !wait || res.Status >= 400 {
			return nil
		}
		switch {
		case res.Confirmed:
			fmt.Fprintf(w, "Last reboot time: %s\n", res.RebootTime)
		case res.HasRebootTime:
			fmt.Fprintf(w, "Last reboot time: %s (unchanged since before the reboot)\n", res.RebootTime)
		case errors.Is(err, service.ErrRebootNotConfirmed):
			fmt.Fprintln(w, "Last reboot time: none reported")
		}
		return nil
	}, err
}

// interruptedReboot says what state an interrupted reboot was left in,
// instead of "context canceled"; the exit code stays 130. res is nil when
// the device had not answered yet.
func interruptedReboot(id string, res *service.RebootResult, err error) error {
	check := fmt.Sprintf("check later with 'dmctl service twin show --device %s' (properties.reported.rebootTime)", id)
	if res == nil {
		return &exitError{err: fmt.Errorf("interrupted before device %s answered rebootDevice: the reboot may or may not have been requested", id),
			code: exitInterrupted, hint: check}
	}
	was := "no rebootTime reported before"
	if res.HasPreviousTime {
		was = "it was " + res.PreviousRebootTime + " before"
	}
	return &exitError{err: fmt.Errorf("interrupted while waiting for the reboot of device %s: the device answered %d, its new rebootTime is not confirmed yet (%s)", id, res.Status, was),
		code: exitInterrupted, hint: "the device may still be rebooting: " + check}
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
