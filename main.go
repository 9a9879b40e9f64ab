// Command dmctl manages devices through Azure IoT Hub: it simulates a device
// that handles the rebootDevice direct method, reboots devices from the
// service side and confirms the reboot through the device twin, and runs a
// local IoT Hub that the official Azure IoT SDKs accept. The commands live in
// internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/dmctl/dmctl/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
