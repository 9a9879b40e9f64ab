package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

// TestExitCode pins the documented exit codes to the errors behind them,
// however deeply they are wrapped.
func TestExitCode(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("reboot: invoke: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"other", errors.New("boom"), exitFailure},
		{"usage", usageErrorf("hint", "bad flag"), exitUsage},
		{"malformed connection string", wrap(&sas.FieldError{Key: "SharedAccessKey", Reason: "not base64"}), exitUsage},
		{"expired token", wrap(sas.ErrExpired), exitAuth},
		{"bad signature", wrap(sas.ErrSignature), exitAuth},
		{"device refused", wrap(device.ErrUnauthorized), exitAuth},
		{"service 401", wrap(&service.APIError{Status: 401}), exitAuth},
		{"not found", wrap(&service.APIError{Status: 404, Code: 404001}), exitDeviceNotFound},
		{"offline", wrap(&service.APIError{Status: 404, Code: 404103}), exitDeviceOffline},
		{"method timeout", wrap(&service.APIError{Status: 504, Code: 504101}), exitMethodTimeout},
		{"device status", wrap(&service.DeviceStatusError{Status: 500}), exitDeviceStatus},
		{"not confirmed", wrap(service.ErrRebootNotConfirmed), exitNotConfirmed},
		{"interrupted", wrap(context.Canceled), exitInterrupted},
		{"hint keeps the class", withHint(wrap(&service.APIError{Status: 404, Code: 404103}), "start it"), exitDeviceOffline},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("%s: exitCode(%v) = %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestPrintError(t *testing.T) {
	var b bytes.Buffer
	printError(&b, withHint(fmt.Errorf("get twin: %w", errors.New("dmctl: no such thing")), "try again"))
	want := "dmctl: error: get twin: dmctl: no such thing\ndmctl: hint: try again\n"
	if b.String() != want {
		t.Fatalf("printError wrote %q, want %q", b.String(), want)
	}
	b.Reset()
	printError(&b, errors.New("plain"))
	if b.String() != "dmctl: error: plain\n" {
		t.Fatalf("printError wrote %q", b.String())
	}
}
