package cli

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

	"github.com/dmctl/dmctl/internal/iothub"
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
	if err := iothub.ValidJobID(id); err != nil {
		return "", usageErrorf("job ids are up to 64 ASCII letters, digits and '-'", "invalid --job: %v", err)
	}
	return id, nil
}

// jobError adds the hint for an unknown job; serviceAction adds the others.
func jobError(err error) error {
	if errors.Is(err, service.ErrJobNotFound) {
		return withHint(err, "no such job: 'dmctl service job list' shows the hub's jobs")
	}
	return err
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
		Action: serviceAction(requireJob, runServiceJobShow),
	}
}

func runServiceJobShow(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
	job, err := s.Job(c.Context, id)
	if err != nil {
		return nil, nil, jobError(err)
	}
	if !c.Bool("devices") {
		return job, func(w io.Writer) error { return printJob(w, job) }, nil
	}
	rows := []iothub.DeviceJob{}
	err = s.DeviceJobs(c.Context, id, func(r iothub.DeviceJob) error {
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		return nil, nil, jobError(err)
	}
	out := struct {
		Job     *iothub.JobResponse `json:"job"`
		Devices []iothub.DeviceJob  `json:"devices"`
	}{job, rows}
	return out, func(w io.Writer) error {
		if err := printJob(w, job); err != nil {
			return err
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE ID\tSTATUS\tRESULT")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.DeviceID, r.Status, rowResult(r))
		}
		return tw.Flush()
	}, nil
}

// rowResult describes a device row's outcome in one line.
func rowResult(r iothub.DeviceJob) string {
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

func printJob(w io.Writer, j *iothub.JobResponse) error {
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
	"method": iothub.JobTypeDeviceMethod, "twin": iothub.JobTypeUpdateTwin,
	strings.ToLower(iothub.JobTypeDeviceMethod): iothub.JobTypeDeviceMethod,
	strings.ToLower(iothub.JobTypeUpdateTwin):   iothub.JobTypeUpdateTwin,
}

var jobStatusNames = []string{iothub.JobQueued, iothub.JobScheduled, iothub.JobRunning, iothub.JobCompleted,
	iothub.JobFailed, iothub.JobCancelled, "enqueued", "unknown"}

func serviceJobListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the hub's jobs, oldest first",
		Flags: serviceFlags(
			&cli.StringFlag{Name: "type", Usage: "only jobs of this type: method (scheduleDeviceMethod) or twin (scheduleUpdateTwin)"},
			&cli.StringFlag{Name: "status", Usage: "only jobs with this status: " + strings.Join(jobStatusNames, ", ")},
		),
		Action: serviceAction(jobFilter, func(c *cli.Context, s *service.Client, f service.JobFilter) (any, func(io.Writer) error, error) {
			jobs, err := s.Jobs(c.Context, f)
			if err != nil {
				return nil, nil, jobError(err)
			}
			return jobs, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "JOB ID\tTYPE\tSTATUS\tDEVICES\tSUCCEEDED\tFAILED\tCREATED")
				for _, j := range jobs {
					st := j.Stats()
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", j.JobID, j.Type, j.Status, st.DeviceCount,
						st.SucceededCount, st.FailedCount, hubTime(j.CreatedTime))
				}
				return tw.Flush()
			}, nil
		}),
	}
}

// jobFilter reads --type and --status of service job list.
func jobFilter(c *cli.Context) (service.JobFilter, error) {
	var f service.JobFilter
	if t := c.String("type"); t != "" {
		var ok bool
		if f.Type, ok = jobTypeNames[strings.ToLower(t)]; !ok {
			return f, usageErrorf("use --type method or --type twin", "invalid --type %q", t)
		}
	}
	if st := strings.ToLower(c.String("status")); st != "" {
		if !slices.Contains(jobStatusNames, st) {
			return f, usageErrorf("use --status "+strings.Join(jobStatusNames, ", "), "invalid --status %q", c.String("status"))
		}
		f.Status = st
	}
	return f, nil
}

func serviceJobCancelCommand() *cli.Command {
	return &cli.Command{
		Name:  "cancel",
		Usage: "cancel a job that has not finished (devices already called keep their outcome)",
		Description: `Devices the job has not called yet are not called; calls in flight finish.
A job that has already finished is shown unchanged.`,
		Flags: serviceFlags(jobFlag()),
		Action: serviceAction(requireJob, func(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
			job, err := s.CancelJob(c.Context, id)
			if err != nil {
				return nil, nil, jobError(err)
			}
			return job, func(w io.Writer) error {
				st := job.Stats()
				_, err := fmt.Fprintf(w, "Job %s is %s (devices %d: succeeded %d, failed %d, running %d, pending %d).\n",
					job.JobID, job.Status, st.DeviceCount, st.SucceededCount, st.FailedCount, st.RunningCount, st.PendingCount)
				return err
			}, nil
		}),
	}
}
