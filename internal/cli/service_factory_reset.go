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

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

func serviceFactoryResetCommand() *cli.Command {
	return &cli.Command{
		Name:  "factory-reset",
		Usage: "factory-reset a device (--device) or every device a condition picks (--query) with the factoryReset method",
		Description: `With --device: reads the twin's properties.reported.factoryResetTime (the
baseline, which may be absent), invokes the factoryReset direct method once
(never retried), prints the device's answer, then polls the twin until
factoryResetTime differs from the baseline (unless --no-wait).

With --query CONDITION (the body of a WHERE clause over twins, e.g.
"tags.site = 'lab'"): creates one IoT Hub job (scheduleDeviceMethod,
factoryReset; the hub does the fan-out) named --job-id (default
dmctl-factory-reset-<UTC time>), waits until it has finished and prints each
device's answer. The twins are not polled: check factoryResetTime later with
'dmctl service query'.

Exit codes are service reboot's: 0 reset confirmed (or invoked, with
--no-wait; with --query: every device answered below 400); 2 bad input;
3 authentication refused; 4 no such device; 5 device offline; 6 the device did
not answer within --response-timeout; 7 the device answered with status >= 400;
8 the new factoryResetTime did not appear within --wait-timeout. With --query
the worst device decides, in this order: 7, 6, 5, 1 (other failures);
130 when interrupted.`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "query", Aliases: []string{"q"}, Usage: "reset every device matching this condition (the body of a WHERE clause) through an IoT Hub job"},
			&cli.StringFlag{Name: "job-id", Usage: "with --query: the job's id", DefaultText: "dmctl-factory-reset-<UTC time>"},
			&cli.DurationFlag{Name: "job-timeout", Usage: "with --query: the job's maxExecutionTimeInSeconds", Value: service.DefaultJobTimeout},
			&cli.StringFlag{Name: "payload", Usage: "method payload: JSON, or @FILE (@- for stdin)", Value: "{}"},
			&cli.DurationFlag{Name: "response-timeout", Usage: "how long the hub waits for the device's answer (5s-5m, whole seconds)", Value: service.DefaultResponseTimeout},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long the hub waits for the device to connect (0-5m)", Value: 0},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the twin to show the new factoryResetTime", Value: true},
			&cli.BoolFlag{Name: "no-wait", Usage: "return once the device has answered (same as --wait=false)"},
			&cli.DurationFlag{Name: "wait-timeout", Usage: "how long to wait for the new factoryResetTime after the device's answer", Value: service.DefaultWaitTimeout},
			&cli.DurationFlag{Name: "poll-interval", Usage: "twin (or, with --query, job) poll interval", Value: service.DefaultPollInterval},
		),
		Action: func(c *cli.Context) error {
			if c.IsSet("query") {
				return serviceAction(parseResetFleet, resetFleet)(c)
			}
			return serviceAction(parseResetDevice, resetDevice)(c)
		},
	}
}

func parseResetDevice(c *cli.Context) (rebootArgs, error) {
	return parseOneDevice(c, "job-id", "job-timeout")
}

func resetDevice(c *cli.Context, s *service.Client, a rebootArgs) (any, func(io.Writer) error, error) {
	log := loggerFrom(c)
	log.Info().Str("device", a.id).Msg("invoking factoryReset")
	res, err := s.FactoryReset(c.Context, a.id, a.opts)
	switch {
	case errors.Is(err, context.Canceled):
		err = &exitError{err: fmt.Errorf("interrupted during the factory reset of device %s: it may or may not have been reset", a.id), code: exitInterrupted,
			hint: fmt.Sprintf("check later with 'dmctl service twin show --device %s' (properties.reported.factoryResetTime)", a.id)}
	case errors.Is(err, service.ErrFactoryResetNotConfirmed):
		err = &exitError{err: err, code: exitNotConfirmed,
			hint: "the device answered but did not report a new properties.reported.factoryResetTime in time: raise --wait-timeout, or check that the device reports factoryResetTime after it restarts"}
	}
	if res == nil {
		return nil, nil, err
	}
	out := struct {
		DeviceID          string          `json:"deviceId"`
		Status            int             `json:"status"`
		Payload           json.RawMessage `json:"payload"`
		FactoryResetTime  *string         `json:"factoryResetTime"`
		PreviousResetTime *string         `json:"previousFactoryResetTime"`
		InvokeMs          int64           `json:"invokeMs"`
		WaitMs            int64           `json:"waitMs"`
		Confirmed         bool            `json:"confirmed"`
	}{DeviceID: res.DeviceID, Status: res.Status, Payload: jsonValue(res.Payload),
		InvokeMs: res.InvokeDuration.Milliseconds(), WaitMs: res.WaitDuration.Milliseconds(), Confirmed: res.Confirmed}
	if res.HasResetTime {
		out.FactoryResetTime = &res.ResetTime
	}
	if res.HasPreviousTime {
		out.PreviousResetTime = &res.PreviousResetTime
	}
	if res.Confirmed {
		log.Info().Str("device", a.id).Str("factoryResetTime", res.ResetTime).Dur("waited", res.WaitDuration).Msg("factory reset confirmed")
	}
	return out, func(w io.Writer) error {
		if res.Status < 400 {
			fmt.Fprintln(w, "Successfully invoked the device to factory-reset.")
		} else {
			fmt.Fprintln(w, "The device refused to factory-reset.")
		}
		fmt.Fprintf(w, "Device status: %d\n%s\n", res.Status, compactJSON(res.Payload))
		switch {
		case !a.wait || res.Status >= 400:
		case res.Confirmed:
			fmt.Fprintf(w, "Last factory reset time: %s\n", res.ResetTime)
		case res.HasResetTime:
			fmt.Fprintf(w, "Last factory reset time: %s (unchanged since before the reset)\n", res.ResetTime)
		default:
			fmt.Fprintln(w, "Last factory reset time: none reported")
		}
		return nil
	}, err
}

// resetFleetArgs are the flags of factory-reset --query, checked.
type resetFleetArgs struct {
	job      service.JobRequest
	interval time.Duration
}

func parseResetFleet(c *cli.Context) (resetFleetArgs, error) {
	cond := strings.TrimSpace(c.String("query"))
	switch {
	case c.IsSet("device"):
		return resetFleetArgs{}, usageErrorf("use either --device ID (one device) or --query CONDITION (a fleet)", "--device and --query are mutually exclusive")
	case cond == "":
		return resetFleetArgs{}, usageErrorf(`give a condition, e.g. --query "tags.site = 'lab'"`, "empty --query")
	case strings.HasPrefix(strings.ToUpper(cond), "SELECT "):
		return resetFleetArgs{}, usageErrorf(`--query takes only the condition (the WHERE clause body), e.g. --query "tags.site = 'lab'"`, "--query is a whole query, not a condition")
	case c.IsSet("wait-timeout"):
		return resetFleetArgs{}, usageErrorf("with --query the command waits for the job; bound it with --job-timeout", "--wait-timeout does not go with --query")
	case c.Duration("poll-interval") <= 0 || c.Duration("job-timeout") <= 0:
		return resetFleetArgs{}, usageErrorf("--poll-interval and --job-timeout must be positive durations, e.g. 1s and 1h", "invalid --poll-interval or --job-timeout")
	}
	payload, rt, ct, err := methodArgs(c)
	if err != nil {
		return resetFleetArgs{}, err
	}
	id := c.String("job-id")
	if id == "" {
		id = "dmctl-factory-reset-" + time.Now().UTC().Format("20060102T150405Z")
	}
	if err := iothub.ValidJobID(id); err != nil {
		return resetFleetArgs{}, usageErrorf("job ids are up to 64 ASCII letters, digits and '-'", "invalid --job-id: %v", err)
	}
	return resetFleetArgs{interval: c.Duration("poll-interval"), job: service.JobRequest{
		JobID: id, Type: iothub.JobTypeDeviceMethod, QueryCondition: cond, MaxExecutionTime: c.Duration("job-timeout"),
		CloudToDeviceMethod: &iothub.JobMethod{MethodName: service.FactoryResetMethod, Payload: payload,
			ResponseTimeoutInSeconds: int((rt + time.Second - 1) / time.Second), ConnectTimeoutInSeconds: int((ct + time.Second - 1) / time.Second)},
	}}, nil
}

// resetRow is one device's outcome of a factory-reset job.
type resetRow struct {
	DeviceID string          `json:"deviceId"`
	Status   string          `json:"status"`            // the device job row's status
	Answer   int             `json:"answer,omitempty"`  // the device's method status
	Payload  json.RawMessage `json:"payload,omitempty"` // the device's answer
	Error    string          `json:"error,omitempty"`   // why the row failed
	code     int             // the row's IoT Hub error code
}

func resetFleet(c *cli.Context, s *service.Client, a resetFleetArgs) (any, func(io.Writer) error, error) {
	log := loggerFrom(c)
	job, err := s.CreateJob(c.Context, a.job)
	if err != nil {
		return nil, nil, queryError(err)
	}
	log.Info().Str("job", job.JobID).Str("condition", a.job.QueryCondition).Msg("factory reset job created")
	for !iothub.JobTerminal(job.Status) {
		select {
		case <-c.Context.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, cerr := s.CancelJob(cctx, job.JobID)
			cancel()
			return nil, nil, &exitError{err: fmt.Errorf("interrupted: job %s cancelled (cancel: %v); devices already called may have been reset", job.JobID, errText(cerr)), code: exitInterrupted}
		case <-time.After(a.interval):
		}
		if job, err = s.Job(c.Context, job.JobID); err != nil {
			return nil, nil, err
		}
		st := job.DeviceJobStatistics
		log.Info().Str("job", job.JobID).Str("status", job.Status).Int("succeeded", st.SucceededCount).Int("failed", st.FailedCount).Int("pending", st.PendingCount).Int("running", st.RunningCount).Msg("factory reset job")
	}
	rows := []resetRow{}
	err = s.DeviceJobs(c.Context, job.JobID, func(dj iothub.DeviceJob) error {
		r := resetRow{DeviceID: dj.DeviceID, Status: dj.Status}
		if o := dj.Outcome; o != nil && o.DeviceMethodResponse != nil {
			r.Answer, r.Payload = o.DeviceMethodResponse.Status, o.DeviceMethodResponse.Payload
		}
		if dj.Error != nil {
			r.Error, r.code = dj.Error.Description, dj.Error.CodeInt()
		}
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	out := struct {
		JobID   string     `json:"jobId"`
		Status  string     `json:"status"`
		Devices []resetRow `json:"devices"`
	}{job.JobID, job.Status, rows}
	return out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "Job %s: %s\n", job.JobID, job.Status)
		fmt.Fprintln(tw, "DEVICE ID\tSTATUS\tANSWER\tDETAIL")
		for _, r := range rows {
			detail := r.Error
			if detail == "" && len(r.Payload) > 0 {
				detail = compactJSON(r.Payload)
			}
			answer := "-"
			if r.Answer != 0 {
				answer = fmt.Sprint(r.Answer)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.DeviceID, r.Status, answer, detail)
		}
		return tw.Flush()
	}, fleetResetError(job, rows)
}

// fleetResetError is the worst outcome of a factory-reset job: 7 a device
// answered >= 400, 6 one did not answer in time, 5 one was offline, 1 any
// other failure (or the job failed).
func fleetResetError(job *iothub.JobResponse, rows []resetRow) error {
	worst, code, n := "", 0, 0
	rank := map[int]int{exitDeviceStatus: 4, exitMethodTimeout: 3, exitDeviceOffline: 2, exitFailure: 1}
	for _, r := range rows {
		c := 0
		switch {
		case r.Answer >= 400:
			c = exitDeviceStatus
		case r.Status == iothub.RowCompleted:
			continue
		case r.code == iothub.CodeGatewayTimeout:
			c = exitMethodTimeout
		case r.code == iothub.CodeDeviceNotOnline:
			c = exitDeviceOffline
		default:
			c = exitFailure
		}
		n++
		if rank[c] > rank[code] {
			worst, code = r.DeviceID, c
		}
	}
	switch {
	case n > 0:
		return &exitError{err: fmt.Errorf("factory reset job %s: %d of %d devices not reset (first of the worst: %s)", job.JobID, n, len(rows), worst), code: code,
			hint: fmt.Sprintf("see each device's row with 'dmctl service job show --job %s --devices'", job.JobID)}
	case !strings.EqualFold(job.Status, iothub.JobCompleted):
		return fmt.Errorf("factory reset job %s ended %s: %s", job.JobID, job.Status, job.FailureReason)
	}
	return nil
}

func errText(err error) string {
	if err == nil {
		return "done"
	}
	return err.Error()
}
