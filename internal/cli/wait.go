package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
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
"connected"); the error then says how many devices were in the state and
names the first few that were not. A --query that matches no device fails
at once. On a terminal, stderr shows a live "N/M connected" line.`,
		Flags: serviceFlags(deviceFlag(),
			moduleFlag("wait for this module of the device instead (its own connection)"),
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
	id, mod, cond, want string
	timeout, interval   time.Duration
}

func parseWaitArgs(c *cli.Context) (waitArgs, error) {
	a := waitArgs{cond: c.String("query"), id: c.String("device"), mod: c.String("module")}
	switch {
	case a.mod != "" && a.cond != "":
		return a, usageErrorf("wait for one module with --device ID --module M", "--module cannot be combined with --query")
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
// in the state asked for, or --timeout passes. On a terminal, stderr shows a
// live "N/M connected" line while it waits.
func waitForState(c *cli.Context, client *service.Client, a waitArgs) (any, func(io.Writer) error, error) {
	ctx, cancel := context.WithTimeout(c.Context, a.timeout)
	defer cancel()
	start := time.Now()
	tick := time.NewTicker(a.interval)
	defer tick.Stop()
	id, cond, state := a.id, a.cond, c.String("state")
	live := newLiveLine(c.App.ErrWriter)
	defer live.clear()
	in, total := 0, 0 // of the last poll that succeeded
	for {
		var err error
		if cond != "" {
			var n, m int
			if n, m, err = queryInState(ctx, client, cond, a.want); err == nil {
				in, total = n, m
				if total == 0 {
					return nil, nil, withHint(fmt.Errorf("no device matches %s", cond),
						fmt.Sprintf(`check the condition, e.g. with: dmctl service query "SELECT deviceId FROM devices WHERE %s"`, cond))
				}
			}
		} else {
			var connState string
			if a.mod != "" {
				var m *iothub.Module
				if m, err = client.Module(ctx, id, a.mod); err == nil {
					connState = m.ConnectionState
				}
				err = moduleError(err, id, a.mod)
			} else {
				var d *iothub.Device
				if d, err = client.Device(ctx, id); err == nil {
					connState = d.ConnectionState
				}
			}
			if err == nil {
				in, total = 0, 1
				if connState == a.want {
					in = 1
				}
			}
		}
		switch {
		case err == nil && in == total:
			live.clear()
			out := map[string]any{"connectionState": a.want, "waitedMs": time.Since(start).Milliseconds()}
			line := fmt.Sprintf("device %s is %s", id, state)
			if a.mod != "" {
				out["moduleId"] = a.mod
				line = fmt.Sprintf("module %s/%s is %s", id, a.mod, state)
			}
			if cond != "" {
				out["query"], out["devices"] = cond, total
				line = fmt.Sprintf("%d devices are %s", total, state)
			} else {
				out["deviceId"] = id
			}
			return out, printLine(line), nil
		case err == nil:
			live.show(waitLine(in, total, state, time.Since(start)))
		case ctx.Err() == nil:
			if cond != "" {
				return nil, nil, queryConditionError(err)
			}
			return nil, nil, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			live.clear()
			if c.Context.Err() != nil {
				return nil, nil, c.Context.Err()
			}
			err := fmt.Errorf("device %s: not %s after %v", id, state, a.timeout)
			if a.mod != "" {
				err = fmt.Errorf("module %s/%s: not %s after %v", id, a.mod, state, a.timeout)
			}
			if cond != "" {
				err = fmt.Errorf("devices where %s: %d of %d %s after %v%s", cond, in, total, state, a.timeout,
					notInState(c.Context, client, cond, a.want, state, total-in))
			}
			if a.want == "Connected" {
				return nil, nil, &exitError{err: err, code: exitDeviceOffline,
					hint: "start the device (e.g. 'dmctl device run'), or raise --timeout"}
			}
			return nil, nil, withHint(err, "raise --timeout")
		}
	}
}

// queryConditionError adds the hint for a --query the hub refused; the
// hub's parser refusing it (HTTP 400) is a usage error.
func queryConditionError(err error) error {
	const hint = "check the --query condition: it is the WHERE clause of a twin query, e.g. \"tags.site = 'lab'\""
	var ae *service.APIError
	if errors.As(err, &ae) && ae.Status == 400 {
		return &exitError{err: err, hint: hint, code: exitUsage}
	}
	return withHint(err, hint)
}

// waitLine renders the live progress line of device wait.
func waitLine(in, total int, state string, elapsed time.Duration) string {
	return fmt.Sprintf("%d/%d %s (%v)", in, total, state, elapsed.Round(100*time.Millisecond))
}

// maxNamed is how many devices not in the state a timeout names.
const maxNamed = 5

// notInState names, for the timeout error, the devices of cond not in
// want: "; not connected: a, b and 3 more". It reads them with one more
// query, bounded in time; "" when that fails or none is left.
func notInState(ctx context.Context, client *service.Client, cond, want, state string, missing int) string {
	if missing <= 0 {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var ids []string
	q := fmt.Sprintf("SELECT TOP %d deviceId FROM devices WHERE (%s) AND connectionState != %s", maxNamed, cond, service.QuoteString(want))
	err := client.Query(ctx, q, 0, func(row json.RawMessage) error {
		var r struct {
			DeviceID string `json:"deviceId"`
		}
		if err := json.Unmarshal(row, &r); err != nil {
			return err
		}
		ids = append(ids, r.DeviceID)
		if len(ids) >= maxNamed {
			return service.ErrStopQuery
		}
		return nil
	})
	if err != nil || len(ids) == 0 {
		return ""
	}
	return "; not " + state + ": " + nameSome(ids, max(missing, len(ids)))
}

// nameSome lists ids, the first few of total: "a, b, c and 4 more".
func nameSome(ids []string, total int) string {
	list := strings.Join(ids, ", ")
	if more := total - len(ids); more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	return list
}

// queryInState counts the devices matching cond, and those of them in state.
func queryInState(ctx context.Context, client *service.Client, cond, state string) (in, total int, err error) {
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
	if total, err = count("(" + cond + ")"); err != nil {
		return 0, 0, err
	}
	if in, err = count("(" + cond + ") AND connectionState = " + service.QuoteString(state)); err != nil {
		return 0, 0, err
	}
	return in, total, nil
}

// liveLine is one line of progress on a terminal, rewritten in place; on
// anything else it writes nothing.
type liveLine struct {
	w     io.Writer
	tty   bool
	shown bool
}

func newLiveLine(w io.Writer) *liveLine {
	return &liveLine{w: w, tty: liveTerminal(w, os.Getenv)}
}

func (l *liveLine) show(line string) {
	if l.tty {
		fmt.Fprint(l.w, "\r\x1b[K"+line)
		l.shown = true
	}
}

// clear removes the line, so that what follows starts on a clean line.
func (l *liveLine) clear() {
	if l.shown {
		fmt.Fprint(l.w, "\r\x1b[K")
		l.shown = false
	}
}

// end keeps the line on screen and moves to the next one, so that a log
// line can follow it.
func (l *liveLine) end() {
	if l.shown {
		fmt.Fprintln(l.w)
		l.shown = false
	}
}

// throttle paces progress written as log lines (where no live line can
// be): a line is due when its text changed and every has passed since the
// last one.
type throttle struct {
	every   time.Duration
	last    time.Time
	lastMsg string
}

// due reports whether msg should be logged now, and if so records it.
func (t *throttle) due(msg string) bool {
	if msg == t.lastMsg || time.Since(t.last) < t.every {
		return false
	}
	t.last, t.lastMsg = time.Now(), msg
	return true
}
