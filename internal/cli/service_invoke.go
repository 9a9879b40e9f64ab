package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

func serviceInvokeCommand() *cli.Command {
	return &cli.Command{
		Name:  "invoke",
		Usage: "invoke any direct method on a device (or one of its modules) and print its answer",
		Description: `Sends the method once (never retried) and prints the device's status and
payload. With --module the method goes to that module of the device. Exits 7
when the device answers with a status of 400 or more.`,
		Flags: serviceFlags(
			deviceFlag(),
			moduleFlag("invoke the method on this module of the device"),
			&cli.StringFlag{Name: "method", Aliases: []string{"m"}, Usage: "method name"},
			&cli.StringFlag{Name: "payload", Usage: "method payload: JSON, or @FILE (@- for stdin)", Value: "{}"},
			&cli.DurationFlag{Name: "response-timeout", Usage: "how long the hub waits for the device's answer (5s-5m, whole seconds)", Value: service.DefaultResponseTimeout},
			&cli.DurationFlag{Name: "connect-timeout", Usage: "how long the hub waits for the device to connect (0-5m)", Value: 0},
		),
		Action: serviceAction(parseInvokeArgs, runServiceInvoke),
	}
}

// invokeArgs are the flags of service invoke, checked.
type invokeArgs struct {
	id, module, method string
	payload            json.RawMessage
	response, connect  time.Duration
}

func parseInvokeArgs(c *cli.Context) (invokeArgs, error) {
	id, err := requireDevice(c)
	if err != nil {
		return invokeArgs{}, err
	}
	a := invokeArgs{id: id, module: c.String("module"), method: c.String("method")}
	if a.method == "" {
		return invokeArgs{}, usageErrorf("name the method with --method NAME", "missing --method")
	}
	if a.payload, a.response, a.connect, err = methodArgs(c); err != nil {
		return invokeArgs{}, err
	}
	return a, nil
}

func runServiceInvoke(c *cli.Context, s *service.Client, a invokeArgs) (any, func(io.Writer) error, error) {
	rts, cts := int((a.response+time.Second-1)/time.Second), int((a.connect+time.Second-1)/time.Second)
	start := time.Now()
	req := iothub.MethodRequest{
		MethodName: a.method, Payload: a.payload, ResponseTimeoutInSeconds: &rts, ConnectTimeoutInSeconds: &cts,
	}
	var res *iothub.MethodResult
	var err error
	who := fmt.Sprintf("device %q", a.id)
	if a.module == "" {
		res, err = s.InvokeMethod(c.Context, a.id, req)
	} else {
		res, err = s.InvokeModuleMethod(c.Context, a.id, a.module, req)
		who = fmt.Sprintf("module %q of device %q", a.module, a.id)
	}
	took := time.Since(start)
	if err != nil {
		return nil, nil, err
	}
	if res.Status >= 400 {
		err = fmt.Errorf("invoke %q on %s: %w", a.method, who, &service.DeviceStatusError{Status: res.Status, Payload: res.Payload})
	}
	out := struct {
		DeviceID string          `json:"deviceId"`
		ModuleID string          `json:"moduleId,omitempty"`
		Method   string          `json:"method"`
		Status   int             `json:"status"`
		Payload  json.RawMessage `json:"payload"`
		InvokeMs int64           `json:"invokeMs"`
	}{a.id, a.module, a.method, res.Status, jsonValue(res.Payload), took.Milliseconds()}
	return out, func(w io.Writer) error {
		fmt.Fprintf(w, "Device status: %d\n%s\n", res.Status, compactJSON(res.Payload))
		return nil
	}, err
}
