package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

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
		Counts:   firmware.Counts{Current: 9, Failed: 1, ByStatus: map[string]int{"current": 9, "rolledback": 1}},
		Waves: []firmware.WaveResult{
			{Wave: 1, ConfigIDs: []string{"fw-x-w1"}, Size: 2, Counts: firmware.Counts{Current: 2}},
			{Wave: 2, ConfigIDs: []string{"fw-x-w2"}, Size: 8, Counts: firmware.Counts{Current: 7, Failed: 1}, FailureRate: 0.125},
		},
		DeviceList: []firmware.Device{
			{DeviceID: "sim-03", Wave: 2, Outcome: firmware.OutcomeFailed, Status: "rolledback", CurrentVersion: "1.0.0", Substatus: "checksum mismatch"},
			{DeviceID: "sim-04", Wave: 2, Outcome: firmware.OutcomeCurrent, Status: "current", CurrentVersion: "2.0.0"},
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
		"WAVE   CONFIGURATIONS  TARGETED  CURRENT  FAILED  PENDING\n",
		"2      fw-x-w2         8         7        1       0\n",
		"total                  10        9        1       0\n",
		"not started: 2 devices (waves 3 to 3)\n",
		"failed: sim-03 rolledback (version 1.0.0) checksum mismatch\n",
		"9 of 12 devices current on 2.0.0 in 3s\n",
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
		len(got.DeviceList) != 2 || got.DeviceList[0]["fwUpdateSubstatus"] != "checksum mismatch" {
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
}
