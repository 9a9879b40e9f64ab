package compat

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// loopback3 serialises the tests that run `dmctl hub serve` on 127.0.0.3's
// fixed ports 8883 and 443 while other tests run in parallel.
var loopback3 sync.Mutex

// Exit codes of dmctl service firmware update.
const (
	exitCampaignCurrent    = 0
	exitCampaignSomeFailed = 9
)

// firmwareDevice is firmware_device.js (the official device SDK with a
// firmware handler on the tutorial's twin schema) connected to a hub.
type firmwareDevice struct {
	id string
	p  *proc
}

// startFirmwareDevice registers id on h with the given tags and starts
// firmware_device.js for it, running version, and waits until it has
// reported its firmware.
func startFirmwareDevice(t *testing.T, ctx context.Context, h hubServe, id, version string, tags map[string]any, extra ...string) firmwareDevice {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	k := base64.StdEncoding.EncodeToString(key)
	status, body, err := h.rest(ctx, "PUT", "/devices/"+url.PathEscape(id), map[string]any{"deviceId": id,
		"authentication": map[string]any{"type": "sas", "symmetricKey": map[string]any{"primaryKey": k, "secondaryKey": k}}})
	if err != nil || status != http.StatusOK {
		t.Fatalf("PUT /devices/%s: HTTP %d %s %v", id, status, body, err)
	}
	status, body, err = h.rest(ctx, "PATCH", "/twins/"+url.PathEscape(id), map[string]any{"tags": tags})
	if err != nil || status != http.StatusOK {
		t.Fatalf("PATCH /twins/%s tags: HTTP %d %s %v", id, status, body, err)
	}
	cs := "HostName=" + h.host + ";DeviceId=" + id + ";SharedAccessKey=" + k
	p := startProc(t, ctx, "firmware_device.js "+id, []string{"DEVICE_CONNECTION_STRING=" + cs, "NODE_EXTRA_CA_CERTS=" + h.caFile},
		nodeArgv("firmware_device.js", append([]string{"--version", version}, extra...)...)...)
	if _, err := p.waitEvent(ctx, "ready", nil); err != nil {
		t.Fatalf("the firmware device %s never reported its firmware: %v", id, err)
	}
	return firmwareDevice{id: id, p: p}
}

// statuses is the sequence of fwUpdateStatus values the device reported.
func (d firmwareDevice) statuses() []string {
	var out []string
	for _, l := range d.p.stdoutLines() {
		var ev struct {
			Event  string `json:"event"`
			Status string `json:"status"`
		}
		if json.Unmarshal([]byte(l), &ev) == nil && ev.Event == "status" {
			out = append(out, ev.Status)
		}
	}
	return out
}

// statusIs matches a firmware_device.js status event.
func statusIs(status, version string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["status"] == status && m["version"] == version }
}

// reportedFirmware reads the device's reported firmware through h's REST API.
func reportedFirmware(t *testing.T, ctx context.Context, h hubServe, id string) map[string]any {
	t.Helper()
	status, body, err := h.rest(ctx, "GET", "/twins/"+url.PathEscape(id), nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /twins/%s: HTTP %d %s %v", id, status, body, err)
	}
	var tw iothub.Twin
	if err := json.Unmarshal(body, &tw); err != nil {
		t.Fatalf("GET /twins/%s: %v", id, err)
	}
	fw, _ := tw.Properties.Reported[iothub.FirmwareProperty].(map[string]any)
	return fw
}

// writePackage writes n random bytes to dir/name and returns their SHA-256 (hex).
func writePackage(t *testing.T, dir, name string, n int) string {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestOfficialFirmwareDeviceUpdatedByDmctl: official-SDK devices with the
// firmware-update tutorial's handler are updated by `dmctl service firmware
// update` against `dmctl hub serve --packages DIR`, downloading the package
// from the hub over HTTPS and checking its SHA-256. A first campaign updates
// one device (exit 0); a second, created later at the same priority, moves
// it on and also targets a device whose download arrives corrupted: that one
// ends rolledback on its old version and the campaign exits "some failed".
func TestOfficialFirmwareDeviceUpdatedByDmctl(t *testing.T) {
	t.Parallel()
	dmctl := requireDmctl(t, "hub serve", "hub connection-string", "service firmware update")
	loopback3.Lock()
	defer loopback3.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pkgDir := t.TempDir()
	sum2 := writePackage(t, pkgDir, "fw-2.0.0.bin", 256<<10)
	sum3 := writePackage(t, pkgDir, "fw-3.0.0.bin", 128<<10)
	h := startHubServe(t, ctx, dmctl, "127.0.0.3", "--packages", pkgDir)
	run := newID("fw")
	good := startFirmwareDevice(t, ctx, h, run+"-good", "1.0.0", map[string]any{"fwcompat": map[string]any{"run": run, "ring": "first"}})
	bad := startFirmwareDevice(t, ctx, h, run+"-bad", "1.0.0", map[string]any{"fwcompat": map[string]any{"run": run}}, "--corrupt-download")

	campaign := func(name, condition, version, sum string) runResult {
		uri := "https://" + h.host + "/packages/fw-" + version + ".bin"
		return runProc(t, ctx, "dmctl service firmware update "+name, nil, dmctl, "service", "firmware", "update",
			"--query", condition, "--version", version, "--package", uri, "--checksum", sum,
			"--timeout", "40s", "--poll-interval", "200ms", "--id-prefix", run+"-"+name, "-o", "json",
			"--connection-string", h.dmctlCS, "--ca-file", h.caFile)
	}

	r := campaign("first", fmt.Sprintf("tags.fwcompat.run = '%s' AND tags.fwcompat.ring = 'first'", run), "2.0.0", sum2)
	if r.code != exitCampaignCurrent {
		t.Fatalf("the first campaign (one device, a good package) exit code %d, want %d:\n%s", r.code, exitCampaignCurrent, r)
	}
	// dmctl may see the reported "current" before the script prints it.
	if _, err := good.p.waitEvent(ctx, "status", statusIs("current", "2.0.0")); err != nil {
		t.Fatalf("the device never printed its current status on 2.0.0: %v", err)
	}
	if ev, err := good.p.waitEvent(ctx, "downloaded", nil); err != nil || ev["sha256"] != sum2 {
		t.Errorf("the device's download of fw-2.0.0.bin: %v %v, want SHA-256 %s", ev, err, sum2)
	}
	want := []string{"downloading", "verifying", "applying", "rebooting", "current"}
	if got := good.statuses(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the device reported fwUpdateStatus %v, want %v", got, want)
	}
	if fw := reportedFirmware(t, ctx, h, good.id); fw[iothub.CurrentFwVersion] != "2.0.0" || fw[iothub.FwUpdateStatus] != "current" {
		t.Errorf("reported firmware after the first campaign: %v, want current on 2.0.0", fw)
	}
	if got := bad.statuses(); len(got) != 0 {
		t.Errorf("the untargeted device started an update: %v", got)
	}

	r = campaign("second", fmt.Sprintf("tags.fwcompat.run = '%s'", run), "3.0.0", sum3)
	if r.code != exitCampaignSomeFailed {
		t.Fatalf("the second campaign (one device's download corrupted) exit code %d, want %d (some failed):\n%s", r.code, exitCampaignSomeFailed, r)
	}
	if _, err := good.p.waitEvent(ctx, "status", statusIs("current", "3.0.0")); err != nil {
		t.Errorf("the device never printed its current status on 3.0.0: %v", err)
	}
	if _, err := bad.p.waitEvent(ctx, "status", statusIs("rolledback", "1.0.0")); err != nil {
		t.Errorf("the corrupted device never printed its rolledback status: %v", err)
	}
	var summary struct {
		Counts struct {
			Current int `json:"current"`
			Failed  int `json:"failed"`
			Pending int `json:"pending"`
		} `json:"counts"`
		DeviceList []struct {
			DeviceID string `json:"deviceId"`
			Outcome  string `json:"outcome"`
			Status   string `json:"fwUpdateStatus"`
		} `json:"deviceList"`
	}
	if err := r.lastJSON(&summary); err != nil {
		t.Fatalf("the second campaign's -o json summary: %v\n%s", err, r)
	}
	if c := summary.Counts; c.Current != 1 || c.Failed != 1 || c.Pending != 0 {
		t.Errorf("the second campaign counts %+v, want 1 current, 1 failed, 0 pending", c)
	}
	outcomes := map[string]string{}
	for _, d := range summary.DeviceList {
		outcomes[d.DeviceID] = d.Outcome + "/" + d.Status
	}
	if outcomes[good.id] != "current/current" || outcomes[bad.id] != "failed/rolledback" {
		t.Errorf("the second campaign's devices %v, want %s current/current and %s failed/rolledback", outcomes, good.id, bad.id)
	}
	if fw := reportedFirmware(t, ctx, h, good.id); fw[iothub.CurrentFwVersion] != "3.0.0" || fw[iothub.FwUpdateStatus] != "current" {
		t.Errorf("the later campaign at the same priority did not win: reported firmware %v, want current on 3.0.0", fw)
	}
	fw := reportedFirmware(t, ctx, h, bad.id)
	if fw[iothub.CurrentFwVersion] != "1.0.0" || fw[iothub.FwUpdateStatus] != "rolledback" ||
		!strings.Contains(fmt.Sprint(fw[iothub.FwUpdateSubstatus]), "checksum mismatch") {
		t.Errorf("the corrupted device's reported firmware %v, want rolledback on 1.0.0 with a checksum-mismatch substatus", fw)
	}
	if got, want := strings.Join(bad.statuses(), ","), "downloading,verifying,error,rolledback"; got != want {
		t.Errorf("the corrupted device reported fwUpdateStatus %s, want %s", got, want)
	}

	for _, d := range []firmwareDevice{good, bad} {
		d.p.closeStdin()
		if code, err := d.p.wait(ctx); err != nil || code != 0 {
			t.Errorf("firmware device %s exit code %d (%v), want 0", d.id, code, err)
		}
	}
}
