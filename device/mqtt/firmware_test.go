package mqtt_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
)

// fwPackage writes a package file and returns its file:// URI and SHA-256.
func fwPackage(t *testing.T, content string) (uri, sum string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256([]byte(content))
	return "file://" + file, hex.EncodeToString(s[:])
}

// fwDevice starts a device with fast reboots and applies.
func fwDevice(t *testing.T, srv *hubtest.Server, id string) *rig {
	return startDevice(t, srv, id, mqtt.Config{}, device.Config{
		RebootDelay:        50 * time.Millisecond,
		FirmwareApplyDelay: 20 * time.Millisecond,
		FirmwareVersion:    "1.0.0",
	})
}

// setDesiredFirmware patches the twin's desired firmware through the REST API.
func setDesiredFirmware(t *testing.T, h *hubREST, id, version, uri, check string) {
	t.Helper()
	patch := map[string]any{"properties": map[string]any{"desired": map[string]any{
		iothub.FirmwareProperty: map[string]string{iothub.FwVersion: version, iothub.FwPackageURI: uri, iothub.FwPackageCheckValue: check},
	}}}
	if status, body := h.do(t, http.MethodPatch, "/twins/"+id, patch); status != http.StatusOK {
		t.Fatalf("patch desired firmware: HTTP %d: %s", status, body)
	}
}

// firmwareStatuses lists the reported firmware steps the device emitted,
// as "status version" (version: current, or pending while updating).
func firmwareStatuses(r *rig) []string {
	var out []string
	for _, e := range r.ev.Matching(func(e device.Event) bool { return e.Kind == device.EventFirmware }) {
		v := e.Firmware.CurrentFwVersion
		if e.Firmware.PendingFwVersion != "" {
			v = e.Firmware.PendingFwVersion
		}
		out = append(out, e.Firmware.FwUpdateStatus+" "+v)
	}
	return out
}

// waitFirmware waits until the twin's reported firmware has status and
// currentFwVersion, and returns it.
func waitFirmware(t *testing.T, srv *hubtest.Server, id, status, current string) map[string]any {
	t.Helper()
	v := waitReported(t, srv, id, iothub.FirmwareProperty, func(v any) bool {
		m, _ := v.(map[string]any)
		return m[iothub.FwUpdateStatus] == status && m[iothub.CurrentFwVersion] == current
	})
	return v.(map[string]any)
}

// waitFirmwareEvent waits for the firmware event whose "status version"
// (as firmwareStatuses spells it) starts with what.
func waitFirmwareEvent(t *testing.T, r *rig, what string) {
	t.Helper()
	r.ev.WaitFor(t, "firmware event "+what, 1, patience, func(e device.Event) bool {
		return e.Kind == device.EventFirmware && strings.HasPrefix(e.Firmware.FwUpdateStatus+" "+e.Firmware.CurrentFwVersion, what)
	})
}

func TestFirmwareUpdate(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := fwDevice(t, srv, "fw1")
	h := newREST(t, srv)
	waitFirmware(t, srv, "fw1", iothub.FwStatusCurrent, "1.0.0")

	uri, sum := fwPackage(t, "firmware 2.0.0")
	setDesiredFirmware(t, h, "fw1", "2.0.0", uri, strings.ToUpper(sum))
	fw := waitFirmware(t, srv, "fw1", iothub.FwStatusCurrent, "2.0.0")
	waitFirmwareEvent(t, r, iothub.FwStatusCurrent+" 2.0.0")
	if fw[iothub.PendingFwVersion] != "" || fw[iothub.FwUpdateSubstatus] != "" {
		t.Errorf("reported firmware after the update = %v, want no pending version or substatus", fw)
	}
	start, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(fw[iothub.LastFwUpdateStartTime]))
	end, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(fw[iothub.LastFwUpdateEndTime]))
	if start.IsZero() || end.Before(start) {
		t.Errorf("lastFwUpdateStartTime %v, lastFwUpdateEndTime %v: want two times, end after start", fw[iothub.LastFwUpdateStartTime], fw[iothub.LastFwUpdateEndTime])
	}
	want := []string{"current 1.0.0", "downloading 2.0.0", "verifying 2.0.0", "applying 2.0.0", "rebooting 2.0.0", "current 2.0.0"}
	if got := firmwareStatuses(r); !slices.Equal(got, want) {
		t.Errorf("reported firmware steps %q, want %q", got, want)
	}
	if n := r.count(device.EventSuspended); n != 1 {
		t.Errorf("the update went offline %d times, want once (its reboot)", n)
	}
	if v := r.dev.FirmwareVersion(); v != "2.0.0" {
		t.Errorf("FirmwareVersion() = %q, want 2.0.0", v)
	}

	// The same version again: nothing happens.
	setDesiredFirmware(t, h, "fw1", "2.0.0", uri, sum)
	r.waitEvent(t, device.EventDesired, 2)
	time.Sleep(100 * time.Millisecond)
	if got := firmwareStatuses(r); len(got) != len(want) {
		t.Errorf("desired version already current: steps %q, want none after %q", got[len(want):], want)
	}
	// The version survives a rebootDevice.
	if res := h.invoke(t, "fw1", device.RebootMethod, "", 5); res.Status != 200 {
		t.Fatalf("rebootDevice: %d %s", res.Status, res.Payload)
	}
	r.waitEvent(t, device.EventRebooted, 1)
	if fw := waitFirmware(t, srv, "fw1", iothub.FwStatusCurrent, "2.0.0"); fw == nil || r.dev.FirmwareVersion() != "2.0.0" {
		t.Errorf("after a reboot the device runs %q", r.dev.FirmwareVersion())
	}
}

func TestFirmwareUpdateFailures(t *testing.T) {
	srv := hubtest.NewServer(t)
	h := newREST(t, srv)
	uri, sum := fwPackage(t, "firmware 2.0.0")
	other := sha256.Sum256([]byte("other"))
	for i, tc := range []struct {
		uri, check, want string
	}{
		{uri, hex.EncodeToString(other[:]), "checksum mismatch: got " + sum + ", want " + hex.EncodeToString(other[:])},
		{uri + ".missing", sum, "download failed: no such file or directory"},
		{"https://127.0.0.1:1/fw.bin", sum, "download failed: "},
		{"gopher://x/fw.bin", sum, `bad package URI: scheme "gopher"`},
		{"", sum, "desired firmware has no fwPackageURI"},
		{uri, "", "desired firmware has no fwPackageCheckValue"},
		{uri, "1234", `fwPackageCheckValue "1234" is not a SHA-256 digest`},
		{uri, sum, "desired firmware has no fwVersion"}, // the version is left out below
	} {
		id := fmt.Sprintf("bad%d", i)
		r := fwDevice(t, srv, id)
		waitFirmware(t, srv, id, iothub.FwStatusCurrent, "1.0.0")
		version := "2.0.0"
		if strings.Contains(tc.want, "no fwVersion") {
			version = ""
		}
		setDesiredFirmware(t, h, id, version, tc.uri, tc.check)
		fw := waitFirmware(t, srv, id, iothub.FwStatusRolledBack, "1.0.0")
		waitFirmwareEvent(t, r, iothub.FwStatusRolledBack)
		if sub := fmt.Sprint(fw[iothub.FwUpdateSubstatus]); !strings.HasPrefix(sub, tc.want) {
			t.Errorf("%s: substatus %q, want it to start %q", id, sub, tc.want)
		}
		got := firmwareStatuses(r)
		wantErr := "error " + version // the pending version, or the current one when none is desired
		if version == "" {
			wantErr = "error 1.0.0"
		}
		if i := slices.Index(got, wantErr); i < 0 || got[len(got)-1] != "rolledback 1.0.0" {
			t.Errorf("%s: steps %q, want %s then rolledback 1.0.0", id, got, wantErr)
		}
		if r.count(device.EventSuspended) != 0 || r.dev.FirmwareVersion() != "1.0.0" {
			t.Errorf("%s: a failed update rebooted (%d) or changed the version to %q", id, r.count(device.EventSuspended), r.dev.FirmwareVersion())
		}
	}
}

func TestFirmwareNewerVersionMidUpdate(t *testing.T) {
	srv := hubtest.NewServer(t)
	// Applying takes long enough for the newer version to arrive during it.
	r := startDevice(t, srv, "fw2", mqtt.Config{}, device.Config{
		RebootDelay:        50 * time.Millisecond,
		FirmwareApplyDelay: 2 * time.Second,
	})
	h := newREST(t, srv)
	waitFirmware(t, srv, "fw2", iothub.FwStatusCurrent, device.DefaultFirmwareVersion)
	uri2, sum2 := fwPackage(t, "firmware 2.0.0")
	uri3, sum3 := fwPackage(t, "firmware 3.0.0")
	setDesiredFirmware(t, h, "fw2", "2.0.0", uri2, sum2)
	r.ev.WaitFor(t, "firmware applying 2.0.0", 1, patience, func(e device.Event) bool {
		return e.Kind == device.EventFirmware && e.Firmware.FwUpdateStatus == iothub.FwStatusApplying
	})
	setDesiredFirmware(t, h, "fw2", "3.0.0", uri3, sum3)
	r.waitEvent(t, device.EventFirmwareAbandoned, 1)
	waitFirmware(t, srv, "fw2", iothub.FwStatusCurrent, "3.0.0")
	waitFirmwareEvent(t, r, iothub.FwStatusCurrent+" 3.0.0")
	want := []string{"current 1.0.0", "downloading 2.0.0", "verifying 2.0.0", "applying 2.0.0",
		"downloading 3.0.0", "verifying 3.0.0", "applying 3.0.0", "rebooting 3.0.0", "current 3.0.0"}
	if got := firmwareStatuses(r); !slices.Equal(got, want) {
		t.Errorf("steps %q, want %q", got, want)
	}
	if n := r.count(device.EventSuspended); n != 1 {
		t.Errorf("went offline %d times, want once (3.0.0's reboot)", n)
	}
}

func TestFactoryReset(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := fwDevice(t, srv, "fr1")
	h := newREST(t, srv)
	uri, sum := fwPackage(t, "firmware 2.0.0")
	setDesiredFirmware(t, h, "fr1", "2.0.0", uri, sum)
	waitFirmware(t, srv, "fr1", iothub.FwStatusCurrent, "2.0.0")
	if res := h.invoke(t, "fr1", device.RebootMethod, "", 5); res.Status != 200 {
		t.Fatalf("rebootDevice: %d %s", res.Status, res.Payload)
	}
	waitReported(t, srv, "fr1", device.RebootTimeProperty, func(any) bool { return true })
	// The campaign ends: the desired firmware is removed.
	if status, body := h.do(t, http.MethodPatch, "/twins/fr1", map[string]any{"properties": map[string]any{"desired": map[string]any{iothub.FirmwareProperty: nil}}}); status != http.StatusOK {
		t.Fatalf("remove desired firmware: HTTP %d: %s", status, body)
	}

	if res := h.invoke(t, "fr1", device.FactoryResetMethod, `{"delaySeconds": 7000}`, 5); res.Status != 400 {
		t.Errorf("factoryReset with delaySeconds 7000 = %d %s, want 400", res.Status, res.Payload)
	}
	if res := h.invoke(t, "fr1", device.FactoryResetMethod, `[1]`, 5); res.Status != 400 {
		t.Errorf("factoryReset with an array = %d %s, want 400", res.Status, res.Payload)
	}
	before := time.Now().UTC()
	res := h.invoke(t, "fr1", device.FactoryResetMethod, `{"delaySeconds": 0}`, 5)
	var body device.FactoryResetResponse
	if res.Status != 200 || json.Unmarshal(res.Payload, &body) != nil || !strings.Contains(body.Message, "1.0.0") {
		t.Fatalf("factoryReset = %d %s, want 200 and a message naming 1.0.0", res.Status, res.Payload)
	}
	ev := r.waitEvent(t, device.EventFactoryReset, 1)
	// Answered first: the answer went out before the device went offline.
	evs := r.ev.Events()
	answered := slices.IndexFunc(evs, func(e device.Event) bool {
		return e.Kind == device.EventMethodAnswered && e.Method == device.FactoryResetMethod && e.Status == 200
	})
	if off := slices.IndexFunc(evs[answered+1:], func(e device.Event) bool { return e.Kind == device.EventSuspended }); answered < 0 || off < 0 {
		t.Errorf("factoryReset answered at event %d, offline after it at %d: want an answer, then offline", answered, off)
	}
	at, err := time.Parse(time.RFC3339Nano, ev.ResetTime)
	if err != nil || at.Before(before) || !strings.HasSuffix(ev.ResetTime, "Z") {
		t.Errorf("factoryResetTime %q: want an RFC 3339 UTC time after %v", ev.ResetTime, before)
	}
	waitReported(t, srv, "fr1", device.FactoryResetTimeProperty, func(v any) bool { return v == ev.ResetTime })
	fw := waitFirmware(t, srv, "fr1", iothub.FwStatusCurrent, "1.0.0")
	if fw[iothub.LastFwUpdateStartTime] != "" || fw[iothub.PendingFwVersion] != "" {
		t.Errorf("reported firmware after the reset = %v, want the factory state", fw)
	}
	if _, ok := reported(t, srv, "fr1")[device.RebootTimeProperty]; ok {
		t.Errorf("rebootTime still reported after the factory reset")
	}
	if v := r.dev.FirmwareVersion(); v != "1.0.0" {
		t.Errorf("FirmwareVersion() after the reset = %q, want 1.0.0", v)
	}
}

func TestFirmwareNewerVersionWhileRebooting(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "fw3", mqtt.Config{}, device.Config{
		RebootDelay:        time.Second, // offline long enough for the newer version to arrive
		FirmwareApplyDelay: -1,
	})
	h := newREST(t, srv)
	waitFirmware(t, srv, "fw3", iothub.FwStatusCurrent, device.DefaultFirmwareVersion)
	uri2, sum2 := fwPackage(t, "firmware 2.0.0")
	uri3, sum3 := fwPackage(t, "firmware 3.0.0")
	setDesiredFirmware(t, h, "fw3", "2.0.0", uri2, sum2)
	r.waitEvent(t, device.EventSuspended, 1)
	setDesiredFirmware(t, h, "fw3", "3.0.0", uri3, sum3) // read from the twin on reconnect
	waitFirmware(t, srv, "fw3", iothub.FwStatusCurrent, "3.0.0")
	waitFirmwareEvent(t, r, iothub.FwStatusCurrent+" 3.0.0")
	want := []string{"current 1.0.0", "downloading 2.0.0", "verifying 2.0.0", "applying 2.0.0", "rebooting 2.0.0", "current 2.0.0",
		"downloading 3.0.0", "verifying 3.0.0", "applying 3.0.0", "rebooting 3.0.0", "current 3.0.0"}
	if got := firmwareStatuses(r); !slices.Equal(got, want) {
		t.Errorf("steps %q, want %q", got, want)
	}
	if n := r.count(device.EventFirmwareAbandoned); n != 0 {
		t.Errorf("%d updates abandoned, want none: 2.0.0 was rebooting", n)
	}
}
