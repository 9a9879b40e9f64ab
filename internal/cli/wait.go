package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

// serviceDeviceWaitCommand is `dmctl service device wait`: block until a
// device's connection state is the one asked for, so scripts never sleep.
func serviceDeviceWaitCommand() *cli.Command {
	return &cli.Command{
		Name:  "wait",
		Usage: "wait until a device (or every device a query picks) is connected or disconnected",
		Description: `Polls the device identity until its connectionState is the one asked for.
With --query COND instead of --device, waits until every device matching the
twin query condition (such as "tags.site = 'lab'" or "deviceId IN ['a','b']")
is in that state, counting with two COUNT() queries per poll. Exits 0 once it is, or with the
device-offline code (5) when --timeout passes first (when waiting for
"connected").`,
		Flags: serviceFlags(deviceFlag(),
			&cli.StringFlag{Name: "query", Usage: "a twin query condition (WHERE clause) picking the devices to wait for"},
			&cli.StringFlag{Name: "state", Usage: "connected or disconnected", Value: "connected"},
			&cli.DurationFlag{Name: "timeout", Usage: "how long to wait", Value: time.Minute},
			&cli.DurationFlag{Name: "poll-interval", Usage: "time between two reads of the identity", Value: 250 * time.Millisecond},
		),
		Action: serviceAction(parseWaitArgs, waitForState),
	}
}

// waitArgs are the flags of service device wait, checked.
type waitArgs struct {
	id, cond, want    string
	timeout, interval time.Duration
}

func parseWaitArgs(c *cli.Context) (waitArgs, error) {
	a := waitArgs{cond: c.String("query"), id: c.String("device")}
	switch {
	case a.cond != "" && a.id != "":
		return a, usageErrorf("give --device ID or --query COND, not both", "--device and --query are exclusive")
	case a.cond == "" && a.id == "":
		return a, usageErrorf("name the device with --device ID, or pick devices with --query COND", "missing --device")
	}
	switch c.String("state") {
	case "connected":
		a.want = "Connected"
	case "disconnected":
		a.want = "Disconnected"
	default:
		return a, usageErrorf("use --state connected or --state disconnected", "invalid --state %q", c.String("state"))
	}
	a.timeout, a.interval = c.Duration("timeout"), c.Duration("poll-interval")
	if a.timeout <= 0 || a.interval <= 0 {
		return a, usageErrorf("use positive durations, e.g. --timeout 60s --poll-interval 250ms", "invalid --timeout or --poll-interval")
	}
	return a, nil
}

// waitForState polls until the device (or every device of the query) is
// in the state asked for, or --timeout passes.
func waitForState(c *cli.Context, client *service.Client, a waitArgs) (any, func(io.Writer) error, error) {
	ctx, cancel := context.WithTimeout(c.Context, a.timeout)
	defer cancel()
	start := time.Now()
	tick := time.NewTicker(a.interval)
	defer tick.Stop()
	id, cond, state := a.id, a.cond, c.String("state")
	what := "device " + id
	if cond != "" {
		what = "devices where " + cond
	}
	for {
		done, n, err := false, 0, error(nil)
		if cond != "" {
			done, n, err = queryInState(ctx, client, cond, a.want)
		} else {
			var d *iothub.Device
			d, err = client.Device(ctx, id)
			done, n = err == nil && d.ConnectionState == a.want, 1
		}
		switch {
		case err == nil && done:
			out := map[string]any{"connectionState": a.want, "waitedMs": time.Since(start).Milliseconds()}
			line := fmt.Sprintf("device %s is %s", id, state)
			if cond != "" {
				out["query"], out["devices"] = cond, n
				line = fmt.Sprintf("%d devices are %s", n, state)
			} else {
				out["deviceId"] = id
			}
			return out, printLine(line), nil
		case err != nil && ctx.Err() == nil:
			if cond != "" {
				return nil, nil, withHint(err, "check the --query condition: it is the WHERE clause of a twin query")
			}
			return nil, nil, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			if c.Context.Err() != nil {
				return nil, nil, c.Context.Err()
			}
			err := fmt.Errorf("%s: not %s after %v", what, state, a.timeout)
			if a.want == "Connected" {
				return nil, nil, &exitError{err: err, code: exitDeviceOffline,
					hint: "start the device (e.g. 'dmctl device run'), or raise --timeout"}
			}
			return nil, nil, withHint(err, "raise --timeout")
		}
	}
}

// queryInState reports whether every device matching cond is in state, and
// how many match.
func queryInState(ctx context.Context, client *service.Client, cond, state string) (bool, int, error) {
	count := func(where string) (int, error) {
		var n int
		err := client.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE "+where, 0, func(row json.RawMessage) error {
			var r struct {
				N int `json:"n"`
			}
			if err := json.Unmarshal(row, &r); err != nil {
				return err
			}
			n = r.N
			return nil
		})
		return n, err
	}
	total, err := count("(" + cond + ")")
	if err != nil {
		return false, 0, err
	}
	in, err := count("(" + cond + ") AND connectionState = " + service.QuoteString(state))
	if err != nil {
		return false, 0, err
	}
	return total > 0 && in == total, total, nil
}
