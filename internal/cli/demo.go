package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

const demoDeviceID = "myDeviceId"

// demoCommand is `dmctl demo`: the device-management tutorial end to end, in
// one process, on an ephemeral local hub.
func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the reboot tutorial end to end on an ephemeral local hub (no cloud needed)",
		Description: `Starts a local IoT Hub on a loopback port in a temporary folder, registers
a device, runs dmctl's simulated device, reboots it with the rebootDevice
direct method and waits until the twin reports the new rebootTime. Device and
service steps are narrated side by side. Nothing is left behind. --keep leaves
the hub and the device running until Ctrl-C and prints the connection strings
needed to go on by hand from another shell.`,
		Flags: []cli.Flag{
			&cli.DurationFlag{
				Name:  "reboot-delay",
				Usage: "how long the simulated device stays offline while rebooting",
				Value: 2 * time.Second,
			},
			&cli.StringFlag{
				Name:  "device",
				Usage: "id of the demo device",
				Value: demoDeviceID,
			},
			&cli.BoolFlag{
				Name:  "keep",
				Usage: "keep the hub and device running afterwards and print how to reach them",
			},
			&cli.StringFlag{
				Name:  "ready-file",
				Usage: "with --keep: once the demo is done and the hub keeps running, write its addresses and CA path to this `file` (JSON)",
			},
			outputFlag(),
		},
		Action: runDemo,
	}
}

// narrator writes labelled lines from the device and service sides.
type narrator struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	quiet bool
}

func (n *narrator) say(side, format string, args ...any) {
	if n.quiet {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	el := time.Since(n.start).Seconds()
	fmt.Fprintf(n.w, "%5.2fs  %-9s %s\n", el, "["+side+"]", fmt.Sprintf(format, args...))
}

// narrate turns the simulated device's typed events into narration.
func (n *narrator) narrate(ev device.Event) {
	switch ev.Kind {
	case device.EventConnected:
		n.say("device", "connected to %s over %s", ev.Target, ev.Transport)
	case device.EventSubscribed:
		n.say("device", "listening for direct methods and twin updates")
	case device.EventMethodAnswered:
		n.say("device", "%s received: answering %d", ev.Method, ev.Status)
	case device.EventRebootStarted:
		n.say("device", "rebooting: offline for %s", ev.Delay)
	case device.EventRebooted:
		n.say("device", "back online, reported rebootTime %s", ev.RebootTime)
	case device.EventConnectFailed, device.EventRebootFailed, device.EventReportRejected, device.EventMethodResponseFailed:
		n.say("device", "%s: %v", ev.Kind, ev.Err)
	}
}

func runDemo(c *cli.Context) error {
	ctx := c.Context
	delay := c.Duration("reboot-delay")
	if delay < 0 || delay > device.MaxRebootDelaySeconds*time.Second {
		return usageErrorf("use a duration from 0s to 1h", "invalid --reboot-delay %s", delay)
	}
	id := c.String("device")
	n := &narrator{w: c.App.Writer, start: time.Now(), quiet: jsonOutput(c)}
	if !n.quiet {
		fmt.Fprintf(n.w, "dmctl demo: reboot a device with a direct method and confirm it through its twin\n\n")
	}
	// Library logs below warn would drown the narration, unless the user
	// asked for a level with --log-level or DMCTL_LOG_LEVEL.
	log := loggerFrom(c)
	if !logLevelChosen(c) && log.GetLevel() < zerolog.WarnLevel {
		log = log.Level(zerolog.WarnLevel)
	}

	dir, err := os.MkdirTemp("", "dmctl-demo-")
	if err != nil {
		return err
	}
	keep := c.Bool("keep")
	if c.IsSet("ready-file") && !keep {
		return usageErrorf("--ready-file goes with --keep", "--ready-file without --keep")
	}
	defer os.RemoveAll(dir)

	h, err := hub.New(hub.Config{DataDir: dir, Listen: []string{"127.0.0.1:0"}, Hostname: "localhost", Log: log})
	if err != nil {
		return fmt.Errorf("start local hub: %w", err)
	}
	defer h.Close()
	if err := h.Start(ctx); err != nil {
		return fmt.Errorf("start local hub: %w", err)
	}
	n.say("hub", "local IoT Hub listening on %s (TLS: MQTT, MQTT over WebSockets and HTTPS on one port)", h.Addrs()[0])

	svcCS, err := sas.ParseService(h.ServiceConnectionString())
	if err != nil {
		return err
	}
	svc, err := service.New(svcCS, service.WithRootCAs(h.CAPool()), service.WithLogger(log),
		service.WithUserAgent("dmctl/"+resolveVersion()))
	if err != nil {
		return err
	}
	defer svc.Close()

	d, err := svc.CreateDevice(ctx, id)
	if err != nil {
		return serviceError(err, id, 0)
	}
	devCSText, err := svc.DeviceConnectionString(d, service.PrimaryKey)
	if err != nil {
		return err
	}
	n.say("service", "registered device %q in the hub's identity registry", id)
	devCS, err := sas.ParseDevice(devCSText)
	if err != nil {
		return err
	}

	conn, err := mqtt.New(mqtt.Config{
		ConnectionString: devCS,
		RootCAs:          h.CAPool(),
		ClientType:       "dmctl/" + resolveVersion(),
		Log:              log,
		OnEvent:          n.narrate,
	})
	if err != nil {
		return err
	}
	rebootDelay := delay
	if rebootDelay == 0 {
		rebootDelay = device.NoRebootDelay
	}
	dev := device.New(conn, device.Config{RebootDelay: rebootDelay, Log: log, OnEvent: n.narrate})
	devCtx, stopDevice := context.WithCancel(ctx)
	devDone := make(chan error, 1)
	go func() { devDone <- dev.Run(devCtx) }()
	defer func() {
		stopDevice()
		<-devDone
	}()

	select {
	case <-conn.Ready():
	case err := <-devDone:
		devDone <- err
		return fmt.Errorf("simulated device: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}

	res, err := svc.Reboot(ctx, id, service.RebootOptions{
		Payload:         json.RawMessage(`{}`),
		ResponseTimeout: service.DefaultResponseTimeout,
		ConnectTimeout:  10 * time.Second,
		WaitTimeout:     delay + time.Minute,
		PollInterval:    250 * time.Millisecond,
		Progress: func(p service.RebootProgress) {
			switch p.Stage {
			case service.StageBaseline:
				if p.Result.HasPreviousTime {
					n.say("service", "twin read: last rebootTime %s", p.Result.PreviousRebootTime)
				} else {
					n.say("service", "twin read: no rebootTime reported yet")
				}
				n.say("service", "invoking rebootDevice on %q over HTTPS", id)
			case service.StageInvoked:
				n.say("service", "Successfully invoked the device to reboot. Device status %d, payload %s",
					p.Result.Status, compactJSON(p.Result.Payload))
				n.say("service", "watching the twin for a new rebootTime")
			case service.StageConfirmed:
				n.say("service", "Last reboot time: %s", p.Result.RebootTime)
			}
		},
	})
	if err != nil {
		return serviceError(err, id, 0)
	}
	if jsonOutput(c) {
		if err := printJSON(c.App.Writer, rebootJSON(res)); err != nil {
			return err
		}
	} else {
		n.say("demo", "device %q rebooted and confirmed through its twin in %s (method %s, wait %s)",
			id, (res.InvokeDuration + res.WaitDuration).Round(time.Millisecond),
			res.InvokeDuration.Round(time.Millisecond), res.WaitDuration.Round(time.Millisecond))
	}
	if !keep {
		return nil
	}
	return keepRunning(c, h, dir, devCSText, devDone)
}

// keepRunning prints how to reach the demo hub and device, then waits for
// Ctrl-C.
func keepRunning(c *cli.Context, h *hub.Server, dir, deviceCS string, devDone chan error) error {
	w := c.App.Writer
	fmt.Fprintf(w, "\nThe hub and the device keep running until Ctrl-C, which also removes %s.\n", dir)
	fmt.Fprintf(w, "In another shell:\n\n")
	fmt.Fprintf(w, "  export IOTHUB_CONNECTION_STRING='%s'\n", h.ServiceConnectionString())
	fmt.Fprintf(w, "  export IOTHUB_DEVICE_CONNECTION_STRING='%s'\n", deviceCS)
	fmt.Fprintf(w, "  export DMCTL_CA_FILE='%s'\n\n", h.CAFile())
	fmt.Fprintf(w, "  dmctl service reboot --device %s\n", c.String("device"))
	if f := c.String("ready-file"); f != "" {
		if err := writeReadyFile(f, readyInfo{Addrs: h.Addrs(), Hostname: h.Hostname(), CAFile: h.CAFile()}); err != nil {
			return err
		}
		defer os.Remove(f)
	}
	select {
	case <-c.Context.Done():
		return nil
	case err := <-devDone:
		devDone <- err
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("simulated device: %w", err)
		}
		return nil
	}
}

// logLevelChosen reports whether --log-level was given (flag or env).
func logLevelChosen(c *cli.Context) bool {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("log-level") {
			return true
		}
	}
	return false
}
