package cli

import (
	"context"
	"encoding/json"
	"fmt"
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
		Action: runServiceDeviceWait,
	}
}

func runServiceDeviceWait(c *cli.Context) error {
	cond := c.String("query")
	id := c.String("device")
	switch {
	case cond != "" && id != "":
		return usageErrorf("give --device ID or --query COND, not both", "--device and --query are exclusive")
	case cond == "" && id == "":
		return usageErrorf("name the device with --device ID, or pick devices with --query COND", "missing --device")
	}
	var want string
	switch c.String("state") {
	case "connected":
		want = "Connected"
	case "disconnected":
		want = "Disconnected"
	default:
		return usageErrorf("use --state connected or --state disconnected", "invalid --state %q", c.String("state"))
	}
	timeout, interval := c.Duration("timeout"), c.Duration("poll-interval")
	if timeout <= 0 || interval <= 0 {
		return usageErrorf("use positive durations, e.g. --timeout 60s --poll-interval 250ms", "invalid --timeout or --poll-interval")
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()

	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	what := "device " + id
	if cond != "" {
		what = "devices where " + cond
	}
	for {
		done, n, err := false, 0, error(nil)
		if cond != "" {
			done, n, err = queryInState(ctx, client, cond, want)
		} else {
			var d *iothub.Device
			d, err = client.Device(ctx, id)
			done, n = err == nil && d.ConnectionState == want, 1
		}
		switch {
		case err == nil && done:
			if jsonOutput(c) {
				out := map[string]any{"connectionState": want, "waitedMs": time.Since(start).Milliseconds()}
				if cond != "" {
					out["query"], out["devices"] = cond, n
				} else {
					out["deviceId"] = id
				}
				return printJSON(c.App.Writer, out)
			}
			if cond != "" {
				fmt.Fprintf(c.App.Writer, "%d devices are %s\n", n, c.String("state"))
			} else {
				fmt.Fprintf(c.App.Writer, "device %s is %s\n", id, c.String("state"))
			}
			return nil
		case err != nil && ctx.Err() == nil:
			if cond != "" {
				return withHint(err, "check the --query condition: it is the WHERE clause of a twin query")
			}
			return serviceError(err, id)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			if c.Context.Err() != nil {
				return c.Context.Err()
			}
			err := fmt.Errorf("%s: not %s after %v", what, c.String("state"), timeout)
			if want == "Connected" {
				return &exitError{err: err, code: exitDeviceOffline,
					hint: "start the device (e.g. 'dmctl device run'), or raise --timeout"}
			}
			return withHint(err, "raise --timeout")
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
