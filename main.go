// Command dmctl manages devices through Azure IoT Hub: it simulates a device
// that handles the rebootDevice direct method, reboots devices from the
// service side and confirms the reboot through the device twin, and runs a
// local IoT Hub that the official Azure IoT SDKs accept.
package main

import "os"

func main() {
	os.Exit(run())
}

// run executes the command line and returns the process exit code.
func run() int {
	ctx, stop := signalContext()
	defer stop()
	err := newApp(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	if err != nil {
		printError(os.Stderr, err)
	}
	return exitCode(err)
}
