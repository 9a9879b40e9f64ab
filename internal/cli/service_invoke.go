package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

func serviceInvokeCommand() *cli.Command {
	return &cli.Command{
		Name:  "invoke",
		Usage: "invoke any direct method on a device and print its answer",
		Description: `Sends the method once (never retried) and prints the device's status and
payload. Exits 7 when the device answers with a status of 400 or more.`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "method", Aliases: []string{"m"}, Usage: "method name"},
			&cli.StringFlag{Name: "payload", Usage: "method payload: JSON, or @FILE (@- for stdin)", Value: "{}"},
			&cli.DurationFlag{Name: "response-timeout", Usage: "how long the hub waits for the device's answer (5s-5m, whole seconds)", Value: service.DefaultResponseTimeout},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long the hub waits for the device to connect (0-5m)", Value: 0},
		),
		Action: runServiceInvoke,
	}
}

func runServiceInvoke(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	method := c.String("method")
	if method == "" {
		return usageErrorf("name the method with --method NAME", "missing --method")
	}
	payload, rt, ct, err := methodArgs(c)
	if err != nil {
		return err
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	rts, cts := int((rt+time.Second-1)/time.Second), int((ct+time.Second-1)/time.Second)
	start := time.Now()
	res, err := client.InvokeMethod(c.Context, id, iothub.MethodRequest{
		MethodName: method, Payload: payload, ResponseTimeoutInSeconds: &rts, ConnectTimeoutInSeconds: &cts,
	})
	took := time.Since(start)
	if err != nil {
		return serviceError(err, id)
	}
	w := c.App.Writer
	if jsonOutput(c) {
		err = printJSON(w, struct {
			DeviceID string          `json:"deviceId"`
			Method   string          `json:"method"`
			Status   int             `json:"status"`
			Payload  json.RawMessage `json:"payload"`
			InvokeMs int64           `json:"invokeMs"`
		}{id, method, res.Status, jsonValue(res.Payload), took.Milliseconds()})
	} else {
		fmt.Fprintf(w, "Device status: %d\n%s\n", res.Status, compactJSON(res.Payload))
	}
	if err != nil {
		return err
	}
	if res.Status >= 400 {
		return fmt.Errorf("invoke %q on device %q: %w", method, id, &service.DeviceStatusError{Status: res.Status, Payload: res.Payload})
	}
	return nil
}
