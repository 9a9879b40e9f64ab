package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/firmware"
)

// Exit codes. They are part of dmctl's contract with scripts and are listed
// in the README; never renumber one.
const (
	exitOK             = 0
	exitFailure        = 1   // anything not listed below
	exitUsage          = 2   // usage error or malformed input
	exitAuth           = 3   // authentication refused
	exitDeviceNotFound = 4   // no such device identity
	exitDeviceOffline  = 5   // device not connected (or not listening for methods)
	exitMethodTimeout  = 6   // device did not answer the method in time
	exitDeviceStatus   = 7   // device answered with a status >= 400
	exitNotConfirmed   = 8   // reboot not confirmed in the twin in time
	exitFwFailed       = 9   // firmware campaign: some devices failed (error, rolledback)
	exitFwTimedOut     = 10  // firmware campaign: --timeout passed before it ended
	exitFwAborted      = 11  // firmware campaign: the failure rule stopped it
	exitFwOverridden   = 12  // firmware campaign: some devices are held on other firmware by a configuration of higher priority
	exitInterrupted    = 130 // SIGINT/SIGTERM while a command was working
)

// classes maps sentinel errors to exit codes, first match wins.
var classes = []struct {
	target error
	code   int
}{
	{sas.ErrMalformed, exitUsage},
	{sas.ErrExpired, exitAuth},
	{sas.ErrSignature, exitAuth},
	{sas.ErrAudience, exitAuth},
	{device.ErrUnauthorized, exitAuth},
	{service.ErrRebootNotConfirmed, exitNotConfirmed},
	{firmware.ErrAborted, exitFwAborted},
	{firmware.ErrTimedOut, exitFwTimedOut},
	{firmware.ErrSomeFailed, exitFwFailed},
	{firmware.ErrOverridden, exitFwOverridden},
	{service.ErrUnauthorized, exitAuth},
	{service.ErrDeviceNotFound, exitDeviceNotFound},
	{service.ErrDeviceNotOnline, exitDeviceOffline},
	{service.ErrMethodTimeout, exitMethodTimeout},
}

// exitCode is the one place that turns an error into a process exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) && ee.code != 0 {
		return ee.code
	}
	// Checked first: the device's own error status wins over anything the
	// wait for the reboot found afterwards.
	var dse *service.DeviceStatusError
	if errors.As(err, &dse) {
		return exitDeviceStatus
	}
	for _, c := range classes {
		if errors.Is(err, c.target) {
			return c.code
		}
	}
	if errors.Is(err, context.Canceled) {
		return exitInterrupted
	}
	return exitFailure
}

// printError writes "dmctl: error: ..." and, where a fix is known,
// "dmctl: hint: ...".
func printError(w io.Writer, err error) {
	msg := strings.TrimPrefix(err.Error(), "dmctl: ")
	fmt.Fprintf(w, "dmctl: error: %s\n", msg)
	var ee *exitError
	for e := err; errors.As(e, &ee); e = ee.err {
		if ee.hint != "" {
			fmt.Fprintf(w, "dmctl: hint: %s\n", ee.hint)
			return
		}
	}
}
