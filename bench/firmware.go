package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/soak"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/firmware"
	"github.com/dmctl/dmctl/service/rollout"
)

// The firmware campaign's fixed settings (section 7).
const (
	fwFrom         = "1.0.0"
	fwTo           = "2.0.0"
	fwPackageSize  = 64 << 10
	fwApplyDelay   = 100 * time.Millisecond
	fwRebootDelay  = time.Second
	fwDownloadConc = 64 // dmctl device run --download-concurrency (its default)
	fwPackageName  = "fw-2.0.0.bin"
)

// firmwareRow is section 7: one campaign from fwFrom to fwTo.
type firmwareRow struct {
	Devices  int
	Waves    string // the plan, e.g. "100%"
	Planned  int    // waves planned
	Current  int    // devices current on fwTo at the end
	Failed   int
	Pending  int
	Wall     time.Duration // firmware.Run: first query to every device current (or the end)
	Slowest  time.Duration // campaign start to the latest lastFwUpdateEndTime a device reported
	SlowUpd  time.Duration // the longest lastFwUpdateStartTime..EndTime of one device
	Stamped  int           // devices whose reported times were read
	Started  time.Duration // campaign start to the (last) wave's configurations created
	Reached  time.Duration // wave start to the first poll with no device waiting (every device got the desired firmware)
	Download time.Duration // wave start to the first poll with no device waiting or downloading
	HubRSS   int64         // hub VmRSS at the end
	FleetRSS int64         // device process VmRSS at the end
	Connect  time.Duration // fleet start to every device connected
	Err      string        // the campaign's error, if any
}

// downloadsPerSec is the devices over the time until every download had
// finished, as seen by the campaign's polls (so a lower bound).
func (f firmwareRow) downloadsPerSec() float64 {
	if f.Download <= 0 {
		return 0
	}
	return float64(f.Devices) / f.Download.Seconds()
}

// firmwareSection runs section 7: a `dmctl hub serve --packages DIR`
// process, a fleet of cfg.FirmwareDevices devices at fwFrom as one
// `dmctl device run` process, and one campaign to fwTo run in the bench
// with service/firmware (what `dmctl service firmware update` runs).
func firmwareSection(ctx context.Context, cfg *config, res *results, bin string) {
	if cfg.FirmwareDevices == 0 {
		res.note("firmware campaign skipped (-firmware-devices 0)")
		return
	}
	if err := firmwareCampaign(ctx, cfg, res, bin); err != nil {
		res.note("firmware campaign of %d devices: %v", cfg.FirmwareDevices, err)
	}
}

func firmwareCampaign(ctx context.Context, cfg *config, res *results, bin string) error {
	waves, err := rollout.ParseWaves(cfg.FirmwareWaves)
	if err != nil {
		return fmt.Errorf("-firmware-waves: %w", err)
	}
	dir, err := dataDir(cfg, "firmware")
	if err != nil {
		return err
	}
	pkgDir := filepath.Join(dir, "packages")
	sum, err := writePackage(filepath.Join(pkgDir, fwPackageName))
	if err != nil {
		return err
	}
	h, err := startHubProc(ctx, cfg, bin, filepath.Join(dir, "hub"), "--packages", pkgDir)
	if err != nil {
		return err
	}
	defer h.stop()

	n := cfg.FirmwareDevices
	cfg.progress("firmware: registering %d devices", n)
	ids := service.SequentialIDs("fw", 0, n)
	css := make([]string, n)
	for i, r := range h.svc.CreateDevicesBulk(ctx, ids, nil, 0) {
		if r.Err != nil {
			return fmt.Errorf("register %s: %w", r.DeviceID, r.Err)
		}
		css[i] = "HostName=localhost:" + h.port + ";DeviceId=" + r.DeviceID + ";SharedAccessKey=" + r.Device.Authentication.SymmetricKey.PrimaryKey
	}
	file := filepath.Join(dir, "fleet.txt")
	if err := writeLines(file, css); err != nil {
		return err
	}
	ready := filepath.Join(dir, "fleet.ready.json")
	cfg.progress("firmware: dmctl device run with %d devices at %s", n, fwFrom)
	t0 := time.Now()
	f, err := start("dmctl device run", []string{"DMCTL_CA_FILE=" + h.caFile}, "", bin, "--log-level", "warn",
		"device", "run", "--connection-strings-file", file, "--ready-file", ready,
		"--connect-rate", strconv.Itoa(cfg.ConnectRate)+"/s",
		"--firmware-version", fwFrom, "--firmware-apply-delay", fwApplyDelay.String(),
		"--reboot-delay", fwRebootDelay.String(), "--download-concurrency", strconv.Itoa(fwDownloadConc))
	if err != nil {
		return err
	}
	defer f.stop(30 * time.Second)
	if _, err := f.waitFile(ctx, ready, 60*time.Second+time.Duration(n)*time.Second/time.Duration(max(1, cfg.ConnectRate))*3); err != nil {
		return err
	}
	row := firmwareRow{Devices: n, Waves: cfg.FirmwareWaves, Connect: time.Since(t0)}

	cfg.progress("firmware: campaign %s -> %s over %d devices, waves %s", fwFrom, fwTo, n, cfg.FirmwareWaves)
	var waveStart time.Time
	start := time.Now()
	cres, err := firmware.Run(ctx, h.svc, firmware.Options{
		Condition:        "connectionState = 'Connected'",
		Version:          fwTo,
		PackageURI:       "https://localhost:" + h.port + "/packages/" + fwPackageName,
		Checksum:         sum,
		Waves:            waves,
		AbortFailureRate: -1,
		Timeout:          10*time.Minute + time.Duration(n)*10*time.Millisecond,
		IDPrefix:         "bench",
		Progress: func(p firmware.Progress) {
			switch p.Stage {
			case firmware.StageWaveStarted:
				waveStart = time.Now()
				row.Started = waveStart.Sub(start)
			case firmware.StageWavePolled:
				c := p.Counts
				if p.Wave == p.Waves && row.Reached == 0 && c.ByStatus[firmware.StatusWaiting] == 0 {
					row.Reached = time.Since(waveStart)
				}
				past := c.Current + c.Failed + c.ByStatus[iothub.FwStatusVerifying] +
					c.ByStatus[iothub.FwStatusApplying] + c.ByStatus[iothub.FwStatusRebooting]
				if p.Wave == p.Waves && row.Download == 0 && past == p.WaveSize {
					row.Download = time.Since(waveStart)
				}
			}
		},
	})
	if cres == nil {
		return fmt.Errorf("campaign: %w", err)
	}
	row.Wall, row.Planned = cres.Duration, cres.Planned
	row.Current, row.Failed, row.Pending = cres.Counts.Current, cres.Counts.Failed, cres.Counts.Pending+cres.NotStarted
	if err != nil {
		row.Err = err.Error()
	}
	if row.Planned > 1 {
		row.Download = 0 // only one wave's downloads are timed; see downloadsPerSec
	}
	if row.Current != n {
		row.Reached, row.Download = 0, 0 // the figures are for a campaign that finished
	}
	if err := readUpdateTimes(ctx, h.svc, start, &row); err != nil {
		res.note("firmware: reading the devices' update times: %v", err)
	}
	row.HubRSS, _ = soak.RSS(h.pid())
	row.FleetRSS, _ = soak.RSS(f.pid())
	res.Firmware = &row
	return nil
}

// writePackage writes fwPackageSize random bytes to path and returns their
// SHA-256 in hex.
func writePackage(path string) (string, error) {
	b := make([]byte, fwPackageSize)
	_, _ = rand.Read(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// readUpdateTimes reads every device's reported lastFwUpdateStartTime and
// lastFwUpdateEndTime (stamped by the device on this machine's clock) and
// sets the slowest device's figures.
func readUpdateTimes(ctx context.Context, svc *service.Client, start time.Time, row *firmwareRow) error {
	q := "SELECT deviceId, properties.reported." + iothub.FirmwareProperty + " AS firmware FROM devices"
	return svc.Query(ctx, q, 0, func(raw json.RawMessage) error {
		var r struct {
			Firmware struct {
				Version string `json:"currentFwVersion"`
				Start   string `json:"lastFwUpdateStartTime"`
				End     string `json:"lastFwUpdateEndTime"`
			} `json:"firmware"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("unexpected query row %s", raw)
		}
		if r.Firmware.Version != fwTo {
			return nil
		}
		s, err1 := time.Parse(time.RFC3339Nano, r.Firmware.Start)
		e, err2 := time.Parse(time.RFC3339Nano, r.Firmware.End)
		if err1 != nil || err2 != nil {
			return nil
		}
		row.Stamped++
		row.Slowest = max(row.Slowest, e.Sub(start))
		row.SlowUpd = max(row.SlowUpd, e.Sub(s))
		return nil
	})
}

func (r *results) firmwareGoal() goal {
	const what = "10,000-device firmware campaign, start to all current, on one machine"
	f := r.Firmware
	if f == nil {
		return goal{what, "not measured", "-"}
	}
	m := fmt.Sprintf("%s for %d devices, %d current", secs(f.Wall), f.Devices, f.Current)
	if f.Devices != 10000 {
		return goal{what, m + " (not measured at 10,000)", "-"}
	}
	return goal{what, m, yesNo(f.Current == f.Devices)}
}

func (r *results) firmwareMarkdown(cfg *config, w func(string, ...any)) {
	w("\n## 7. Firmware campaign\n\n")
	w("`dmctl hub serve --packages DIR` as a process, DIR holding one %d KiB package of random bytes; a fleet of devices as one "+
		"`dmctl device run --connection-strings-file` process started with `--firmware-version %s --firmware-apply-delay %s --reboot-delay %s "+
		"--download-concurrency %d`; then one campaign to %s (waves `%s`, no abort rule, progress polled every %s) run in the bench "+
		"with service/firmware, the engine of `dmctl service firmware update`. Every device downloads the package over HTTPS from the hub, "+
		"checks its SHA-256, applies it, reboots (offline for the reboot delay), reconnects and reports current.\n\n",
		fwPackageSize>>10, fwFrom, fwApplyDelay, fwRebootDelay, fwDownloadConc, fwTo, cfg.FirmwareWaves, firmware.DefaultPollInterval)
	f := r.Firmware
	if f == nil {
		w("Not measured (see the notes).\n")
		return
	}
	w("| devices | waves | start to all current | current | failed | pending | slowest device | longest device update | downloads/s | hub RSS at the end | fleet RSS at the end |\n")
	w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	dl := "-"
	if f.Download > 0 {
		dl = fmt.Sprintf("≥ %.0f", f.downloadsPerSec())
	}
	w("| %d | %d (`%s`) | %s | %d | %d | %d | %s | %s | %s | %s | %s |\n", f.Devices, f.Planned, f.Waves, secs(f.Wall),
		f.Current, f.Failed, f.Pending, secs(f.Slowest), secs(f.SlowUpd), dl, mib(f.HubRSS), mib(f.FleetRSS))
	w("\n*Start to all current* is firmware.Run from its first query to the poll that saw every device current (so it includes up to one poll interval). "+
		"*Slowest device* is the latest `lastFwUpdateEndTime` a device reported, from the campaign's start (device clocks are this machine's; %d devices' times read); "+
		"*longest device update* is the largest `lastFwUpdateEndTime − lastFwUpdateStartTime` of one device. "+
		"*Downloads/s* is the devices over the time from the wave's configurations being created to the first poll that saw no device waiting or downloading, a lower bound (one-wave plans only). "+
		"The fleet connected in %s before the campaign started.\n", f.Stamped, secs(f.Connect))
	if f.Reached > 0 && f.Download > 0 {
		w("\nTimeline (polls of the last wave, so within a poll interval): the wave's configurations were created %s after the campaign's start; "+
			"%s later no device was still waiting (every device had the desired firmware and had reported downloading); "+
			"%s after the configurations every download had finished.\n", secs(f.Started), secs(f.Reached), secs(f.Download))
	}
	if f.Err != "" {
		w("\nThe campaign ended with: %s\n", oneLine(f.Err))
	}
}
