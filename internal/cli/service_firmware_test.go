package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/firmware"
)

// TestFirmwareExitCodes pins the campaign's documented exit codes.
func TestFirmwareExitCodes(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("firmware campaign: %w: 9 of 10 current", err) }
	for _, tc := range []struct {
		err      error
		want     int
		wantHint string
	}{
		{nil, exitOK, ""},
		{wrap(firmware.ErrSomeFailed), 9, "fwUpdateSubstatus"},
		{wrap(firmware.ErrTimedOut), 10, "raise --timeout"},
		{wrap(firmware.ErrAborted), 11, "run the campaign again"},
		{wrap(firmware.ErrOverridden), 12, "higher --priority"},
		{wrap(firmware.ErrNoDevices), exitFailure, "check the condition"},
		{fmt.Errorf("wave 1: %w", &service.APIError{Status: 409, Name: "ConfigurationAlreadyExists"}), exitFailure, "--id-prefix"},
	} {
		err := firmwareError(tc.err)
		if got := exitCode(err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
		// the class survives without the CLI's wrapping too
		if tc.want >= 9 {
			if got := exitCode(tc.err); got != tc.want {
				t.Errorf("bare exitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		}
		if err != nil {
			var b bytes.Buffer
			printError(&b, err)
			if !strings.Contains(b.String(), "dmctl: hint: ") || !strings.Contains(b.String(), tc.wantHint) {
				t.Errorf("%v: printed %q, want a hint with %q", tc.err, b.String(), tc.wantHint)
			}
		}
	}
}

func sampleResult() *firmware.Result {
	return &firmware.Result{
		Condition: "tags.site = 'lab'", Version: "2.0.0", PackageURI: "https://h/fw.bin", Checksum: "ab", IDPrefix: "fw-x",
		Devices: 12, Planned: 3, NotStarted: 2, Aborted: true, StopReason: "wave 2: failure rate 12.5% is above 5.0%",
		Duration: 3 * time.Second,
		Counts:   firmware.Counts{Current: 8, Failed: 1, Overridden: 1, ByStatus: map[string]int{"current": 8, "rolledback": 1, "waiting": 1}},
		Waves: []firmware.WaveResult{
			{Wave: 1, ConfigIDs: []string{"fw-x-w1"}, Size: 2, Counts: firmware.Counts{Current: 2}},
			{Wave: 2, ConfigIDs: []string{"fw-x-w2"}, Size: 8, Counts: firmware.Counts{Current: 6, Failed: 1, Overridden: 1}, FailureRate: 0.125},
		},
		DeviceList: []firmware.Device{
			{DeviceID: "sim-03", Wave: 2, Outcome: firmware.OutcomeFailed, Status: "rolledback", CurrentVersion: "1.0.0", Substatus: "checksum mismatch"},
			{DeviceID: "sim-04", Wave: 2, Outcome: firmware.OutcomeCurrent, Status: "current", CurrentVersion: "2.0.0"},
			{DeviceID: "sim-05", Wave: 2, Outcome: firmware.OutcomeOverridden, Status: "waiting", CurrentVersion: "1.5.0", OverriddenBy: "hold-1-5", DesiredVersion: "1.5.0"},
		},
	}
}

func TestFirmwareSummary(t *testing.T) {
	var b bytes.Buffer
	if err := printFirmwareSummary(&b, sampleResult()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"WAVE   CONFIGURATIONS  TARGETED  CURRENT  FAILED  OVERRIDDEN  PENDING\n",
		"2      fw-x-w2         8         6        1       1           0\n",
		"total                  10        8        1       1           0\n",
		"not started: 2 devices (waves 3 to 3)\n",
		"failed: sim-03 rolledback (version 1.0.0) checksum mismatch\n",
		"overridden: sim-05 by hold-1-5 (desired 1.5.0, version 1.5.0)\n",
		"8 of 12 devices current on 2.0.0 in 3s\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "sim-04") {
		t.Errorf("summary lists a current device:\n%s", out)
	}
	b.Reset()
	if err := printJSON(&b, firmwareJSON(sampleResult())); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Aborted    bool `json:"aborted"`
		NotStarted int  `json:"notStarted"`
		Waves      []struct {
			Targeted int             `json:"targeted"`
			Counts   firmware.Counts `json:"counts"`
		} `json:"waves"`
		DeviceList []map[string]any `json:"deviceList"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("JSON summary: %v\n%s", err, b.String())
	}
	if !got.Aborted || got.NotStarted != 2 || len(got.Waves) != 2 || got.Waves[1].Targeted != 8 || got.Waves[1].Counts.Failed != 1 ||
		got.Waves[1].Counts.Overridden != 1 || len(got.DeviceList) != 3 || got.DeviceList[0]["fwUpdateSubstatus"] != "checksum mismatch" ||
		got.DeviceList[2]["overriddenBy"] != "hold-1-5" || got.DeviceList[2]["desiredFwVersion"] != "1.5.0" {
		t.Errorf("JSON summary %s", b.String())
	}
}

func TestStatusLine(t *testing.T) {
	c := firmware.Counts{ByStatus: map[string]int{"downloading": 12, "applying": 3, "current": 85}}
	if got, want := statusLine(c), "downloading 12 · applying 3 · current 85 · error 0 · rolledback 0"; got != want {
		t.Errorf("statusLine = %q, want %q", got, want)
	}
	if got := statusLine(firmware.Counts{}); got != "current 0 · error 0 · rolledback 0" {
		t.Errorf("empty statusLine = %q", got)
	}
	c = firmware.Counts{Overridden: 2, ByStatus: map[string]int{"current": 3, "waiting": 2}}
	if got, want := statusLine(c), "waiting 2 · current 3 · error 0 · rolledback 0 · overridden 2"; got != want {
		t.Errorf("statusLine = %q, want %q", got, want)
	}
}

// parseFirmwareFlags runs firmwareOptions over args as the command's flags.
func parseFirmwareFlags(t *testing.T, args ...string) (firmware.Options, error) {
	t.Helper()
	cmd := serviceFirmwareUpdateCommand()
	var opts firmware.Options
	var optErr error
	cmd.Action = func(c *cli.Context) error {
		opts, optErr = firmwareOptions(c)
		return nil
	}
	app := &cli.App{Name: "dmctl", Commands: []*cli.Command{cmd}, Writer: io.Discard, ErrWriter: io.Discard}
	if err := app.Run(append([]string{"dmctl", "update"}, args...)); err != nil {
		t.Fatalf("flags %v: %v", args, err)
	}
	return opts, optErr
}

func TestFirmwarePackageFlags(t *testing.T) {
	dir := t.TempDir()
	pkg := filepath.Join(dir, "fw 2.0.0.bin")
	if err := os.WriteFile(pkg, []byte("test"), 0o600); err != nil {
		t.Fatal(err)
	}
	const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	base := []string{"--query", "tags.site = 'lab'", "--version", "2.0.0"}
	for _, tc := range []struct {
		args    []string
		uri     string
		wantSum string
	}{
		{[]string{"--package", pkg, "--package-uri", "https://localhost:8883/packages/"}, "https://localhost:8883/packages/fw%202.0.0.bin", sum},
		{[]string{"--package", pkg, "--package-uri", "https://h.example/x.bin", "--checksum", strings.ToUpper(sum)}, "https://h.example/x.bin", sum},
		{[]string{"--package", "file://" + pkg}, "file://" + pkg, sum},
		{[]string{"--package", "https://h.example/fw.bin", "--checksum", sum}, "https://h.example/fw.bin", sum},
	} {
		o, err := parseFirmwareFlags(t, append(base, tc.args...)...)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if o.PackageURI != tc.uri || o.Checksum != tc.wantSum {
			t.Errorf("%v: uri %q checksum %q, want %q %q", tc.args, o.PackageURI, o.Checksum, tc.uri, tc.wantSum)
		}
	}
	o, err := parseFirmwareFlags(t, append(base, "--package", pkg, "--package-uri", "https://h/", "--waves", "10%,100%",
		"--abort-failure-rate", "5%", "--priority", "20", "--id-prefix", "fw-lab-2")...)
	if err != nil || len(o.Waves) != 2 || o.AbortFailureRate != 0.05 || o.Priority != 20 || o.IDPrefix != "fw-lab-2" || o.Timeout != firmware.DefaultTimeout {
		t.Errorf("options %+v, %v", o, err)
	}
}
