package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

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
func hubTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
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
	if j.UpdateTwin != nil {
		b, _ := json.Marshal(j.UpdateTwin)
		rows = append(rows, [2]string{"Twin update", truncateText(compactJSON(b), 200)})
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
