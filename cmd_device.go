package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/sas"
)

// deviceCommand is `dmctl device`: the simulated device.
func deviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "device",
		Usage: "simulated device that answers rebootDevice",
		Subcommands: []*cli.Command{
			{
				Name:  "run",
				Usage: "connect as a device, handle direct methods and reboots until interrupted",
				Description: "Connects to IoT Hub over MQTT (TLS, port 8883) or MQTT over WebSockets (port 443;\n" +
					"HTTPS_PROXY is honoured), answers rebootDevice with 200, goes offline for the\n" +
					"reboot delay (a {\"delaySeconds\": N} payload overrides it, 0-3600), reconnects and\n" +
					"reports rebootTime. Unknown methods are answered with 404, payloads that are not\n" +
					"JSON with 400. Reconnects after any drop with capped exponential backoff and\n" +
					"renews its SAS token at 80% of --sas-ttl. Stops cleanly on SIGINT/SIGTERM.",
				Flags: []cli.Flag{
					&cli.StringFlag{
						Name:    "connection-string",
						Usage:   "device connection string (HostName=...;DeviceId=...;SharedAccessKey=...)",
						EnvVars: []string{"IOTHUB_DEVICE_CONNECTION_STRING"},
					},
					&cli.StringFlag{
						Name:  "transport",
						Usage: "mqtt (TLS, port 8883) or mqtt-ws (WebSockets, port 443); a port in HostName wins",
						Value: string(mqtt.TransportMQTT),
					},
					&cli.DurationFlag{
						Name:  "reboot-delay",
						Usage: "how long a reboot keeps the device offline",
						Value: device.DefaultRebootDelay,
					},
					&cli.DurationFlag{
						Name:  "sas-ttl",
						Usage: "lifetime of each SAS token; renewed at 80% of it",
						Value: mqtt.DefaultSASTTL,
					},
					&cli.DurationFlag{
						Name:  "max-backoff",
						Usage: "longest wait between reconnect attempts",
						Value: mqtt.DefaultMaxBackoff,
					},
					caFileFlag,
				},
				Action: runDevice,
			},
		},
	}
}

func runDevice(c *cli.Context) error {
	log := loggerFrom(c)
	raw := c.String("connection-string")
	if raw == "" {
		return usageErrorf("pass --connection-string or set IOTHUB_DEVICE_CONNECTION_STRING ('dmctl service device create' prints one)",
			"no device connection string")
	}
	cs, err := sas.ParseDevice(raw)
	if err != nil {
		return withHint(fmt.Errorf("device connection string: %w", err),
			"expected HostName=<hub>;DeviceId=<id>;SharedAccessKey=<base64 key>")
	}
	transport := mqtt.Transport(c.String("transport"))
	if transport != mqtt.TransportMQTT && transport != mqtt.TransportWebSockets {
		return usageErrorf("use --transport mqtt or --transport mqtt-ws", "invalid --transport %q", transport)
	}
	delay := c.Duration("reboot-delay")
	switch {
	case delay < 0 || delay > device.MaxRebootDelaySeconds*time.Second:
		return usageErrorf("use a duration from 0s to 1h", "invalid --reboot-delay %s", delay)
	case delay == 0:
		delay = device.NoRebootDelay
	}
	ttl := c.Duration("sas-ttl")
	if ttl < time.Second {
		return usageErrorf("use a duration of at least 1s, e.g. 1h", "invalid --sas-ttl %s", ttl)
	}
	maxBackoff := c.Duration("max-backoff")
	if maxBackoff <= 0 {
		return usageErrorf("use a positive duration, e.g. 60s", "invalid --max-backoff %s", maxBackoff)
	}
	pool, err := loadCAPool(c)
	if err != nil {
		return err
	}
	conn, err := mqtt.New(mqtt.Config{
		ConnectionString: cs,
		Transport:        transport,
		RootCAs:          pool,
		ClientType:       "dmctl/" + resolveVersion(),
		SASTTL:           ttl,
		MaxBackoff:       maxBackoff,
		Log:              log,
	})
	if err != nil {
		return usageErrorf("use a device connection string with SharedAccessKey or SharedAccessSignature", "%v", err)
	}
	dev := device.New(conn, device.Config{RebootDelay: delay, Log: log})

	errc := make(chan error, 1)
	go func() { errc <- dev.Run(c.Context) }()
	select {
	case <-conn.Ready():
		fmt.Fprintf(c.App.Writer, "device %s connected to %s, waiting for direct methods (Ctrl-C to stop)\n",
			cs.DeviceID, conn.Target())
		err = <-errc
	case err = <-errc:
	}
	switch {
	case errors.Is(err, device.ErrUnauthorized):
		return &exitError{err: err, code: exitAuth,
			hint: "check DeviceId and SharedAccessKey ('dmctl service device connection-string' prints the current ones) and that the device is enabled"}
	case errors.Is(err, device.ErrUntrusted):
		return withHint(err, "trust the hub's CA with --ca-file or DMCTL_CA_FILE ('dmctl hub serve' keeps it as ca.pem in its data folder)")
	}
	return err
}
