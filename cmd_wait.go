package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
)

// serviceDeviceWaitCommand is `dmctl service device wait`: block until a
// device's connection state is the one asked for, so scripts never sleep.
func serviceDeviceWaitCommand() *cli.Command {
	return &cli.Command{
		Name:  "wait",
		Usage: "wait until a device is connected (or disconnected) to the hub",
		Description: `Polls the device identity until its connectionState is the one asked for.
Exits 0 once it is, or with the device-offline code (5) when --timeout passes
first (when waiting for "connected").`,
		Flags: serviceFlags(deviceFlag(),
			&cli.StringFlag{Name: "state", Usage: "connected or disconnected", Value: "connected"},
			&cli.DurationFlag{Name: "timeout", Usage: "how long to wait", Value: time.Minute},
			&cli.DurationFlag{Name: "poll-interval", Usage: "time between two reads of the identity", Value: 250 * time.Millisecond},
		),
		Action: runServiceDeviceWait,
	}
}

func runServiceDeviceWait(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
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
	for {
		d, err := client.Device(ctx, id)
		switch {
		case err == nil && d.ConnectionState == want:
			if jsonOutput(c) {
				return printJSON(c.App.Writer, map[string]any{
					"deviceId": id, "connectionState": d.ConnectionState,
					"waitedMs": time.Since(start).Milliseconds(),
				})
			}
			fmt.Fprintf(c.App.Writer, "device %s is %s\n", id, c.String("state"))
			return nil
		case err != nil && ctx.Err() == nil:
			return serviceError(err, id)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			if c.Context.Err() != nil {
				return c.Context.Err()
			}
			err := fmt.Errorf("device %q is not %s after %v", id, c.String("state"), timeout)
			if want == "Connected" {
				return &exitError{err: err, code: exitDeviceOffline,
					hint: "start the device (e.g. 'dmctl device run'), or raise --timeout"}
			}
			return withHint(err, "raise --timeout")
		}
	}
}
