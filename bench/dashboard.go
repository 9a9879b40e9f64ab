package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/internal/browser"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/rollout"
)

// dashRebootDelay is the simulated reboot time of section 8.
const dashRebootDelay = time.Second

// dashboardRow is section 8: the Devices page open in headless Chromium
// while the whole fleet reboots through jobs.
type dashboardRow struct {
	Devices   int
	Confirmed int            // devices whose new rebootTime the rollout confirmed
	Wall      time.Duration  // rollout.Run: baseline query to every reboot confirmed
	HubEvents uint64         // events the hub recorded from the rollout's start until the page caught up
	HubSpan   time.Duration  // the hub's first to last of those events (0 when the ring no longer held the first)
	Received  int64          // #events-received grew by this much
	Lost      int64          // #events-lost grew by this much
	PageSpan  time.Duration  // the page's first to last counter change
	Lag       time.Duration  // the hub's last event to the page's count reaching the hub's
	Caught    bool           // the page's received + lost reached the hub's count
	Kinds     map[string]int // the window's hub events by kind (when the ring still held them all)
	Err       string
}

// perSec is the events the page received over the time from its first to
// its last counter change.
func (d dashboardRow) perSec() float64 {
	if d.PageSpan <= 0 {
		return 0
	}
	return float64(d.Received) / d.PageSpan.Seconds()
}

// hubPerSec is the hub's event rate over the same window.
func (d dashboardRow) hubPerSec() float64 {
	if d.HubSpan <= 0 {
		return 0
	}
	return float64(d.HubEvents) / d.HubSpan.Seconds()
}

// dashboardSection runs section 8.
func dashboardSection(ctx context.Context, cfg *config, res *results) {
	if cfg.DashboardDevices == 0 {
		res.note("dashboard section skipped (-dashboard-devices 0)")
		return
	}
	row, err := dashboardRun(ctx, cfg)
	if err != nil {
		res.note("dashboard under a fleet reboot of %d devices: %v", cfg.DashboardDevices, err)
		return
	}
	res.Dashboard = row
}

// counterJS installs, once, an observer that records every change of the
// page's two counters with the page's wall clock (ms since the epoch, the
// bench's clock too), and returns the current values.
const counterJS = `(() => {
  const num = id => parseInt((document.getElementById(id) || {}).textContent, 10) || 0;
  if (!window.__benchCounts) {
    window.__benchCounts = [];
    const rec = () => window.__benchCounts.push([Date.now(), num("events-received"), num("events-lost")]);
    for (const id of ["events-received", "events-lost"]) {
      const el = document.getElementById(id);
      if (el) new MutationObserver(rec).observe(el, {childList: true, characterData: true, subtree: true});
    }
  }
  return [num("events-received"), num("events-lost")];
})()`

func dashboardRun(ctx context.Context, cfg *config) (*dashboardRow, error) {
	n := cfg.DashboardDevices
	dir, err := dataDir(cfg, "hub-dashboard")
	if err != nil {
		return nil, err
	}
	h, err := hub.New(hub.Config{DataDir: dir, Listen: []string{"127.0.0.1:0"}, Dashboard: "127.0.0.1:0", Log: cfg.Log})
	if err != nil {
		return nil, err
	}
	if err := h.Start(ctx); err != nil {
		_ = h.Close()
		return nil, err
	}
	defer h.Close()
	svcCS, err := sas.ParseService(h.ServiceConnectionString())
	if err != nil {
		return nil, err
	}
	svc, err := service.New(svcCS, service.WithRootCAs(h.CAPool()))
	if err != nil {
		return nil, err
	}
	defer svc.Close()

	cfg.progress("dashboard: registering and connecting %d devices", n)
	port := strconv.Itoa(h.Port())
	ids := service.SequentialIDs("dash", 0, n)
	css := make([]*sas.ConnectionString, 0, n)
	for _, r := range svc.CreateDevicesBulk(ctx, ids, nil, 0) {
		if r.Err != nil {
			return nil, fmt.Errorf("register %s: %w", r.DeviceID, r.Err)
		}
		cs, err := sas.ParseDevice("HostName=localhost:" + port + ";DeviceId=" + r.DeviceID + ";SharedAccessKey=" + r.Device.Authentication.SymmetricKey.PrimaryKey)
		if err != nil {
			return nil, err
		}
		css = append(css, cs)
	}
	f, err := fleet.New(fleet.Config{
		Devices:     css,
		Conn:        mqtt.Config{RootCAs: h.CAPool(), ClientType: "dmctl-bench"},
		Device:      device.Config{RebootDelay: dashRebootDelay},
		ConnectRate: float64(cfg.ConnectRate),
		Log:         cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	fctx, cancelFleet := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = f.Run(fctx)
	}()
	defer func() { cancelFleet(); wg.Wait() }()
	select {
	case <-f.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(60*time.Second + time.Duration(n)*time.Second/time.Duration(max(1, cfg.ConnectRate))*3):
		return nil, fmt.Errorf("the %d devices did not connect", n)
	}

	cfg.progress("dashboard: Chromium on the Devices page")
	b, err := browser.Start(ctx, browser.Config{TrustCert: filepath.Join(dir, "server.pem")})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	tab, closeTab, err := b.Tab()
	if err != nil {
		return nil, err
	}
	defer closeTab()
	if err := timed(tab, 30*time.Second, "the login URL and the Devices page", chromedp.Navigate(h.DashboardURL()),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-device="`+ids[0]+`"]`))); err != nil {
		return nil, err
	}
	if err := waitLive(tab); err != nil {
		return nil, err
	}
	// Every device is connected and the page is live: the window opens
	// once the hub has been quiet for a second, so that the page has the
	// events of the connects before the counters are read.
	if err := hubQuiet(ctx, h, time.Second, 30*time.Second); err != nil {
		return nil, err
	}
	var pageBase [2]int64
	if err := waitCounts(tab, 30*time.Second, func(c [2]int64) bool { pageBase = c; return true }); err != nil {
		return nil, err
	}
	hubBase := h.Events().Last()

	cfg.progress("dashboard: fleet reboot of %d devices with the Devices page open", n)
	rres, err := rollout.Run(ctx, svc, rollout.Options{
		Condition:        "connectionState = 'Connected'",
		AbortFailureRate: -1,
		WaitTimeout:      2*time.Minute + time.Duration(n)*10*time.Millisecond,
		JobIDPrefix:      "bench-dashboard",
	})
	row := &dashboardRow{Devices: n}
	if rres != nil {
		row.Wall, row.Confirmed = rres.Duration, rres.Counts.Succeeded
	}
	if err != nil {
		row.Err = err.Error()
	}
	// The window closes when the hub has been quiet for a second and the
	// page has seen (received or been told it lost) every event of it.
	hubLast, quietSince := h.Events().Last(), time.Now()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if l := h.Events().Last(); l != hubLast {
			hubLast, quietSince = l, time.Now()
		}
		var c [2]int64
		if err := waitCounts(tab, 10*time.Second, func(v [2]int64) bool { c = v; return true }); err != nil {
			return nil, err
		}
		caught := uint64(c[0]-pageBase[0]+c[1]-pageBase[1]) >= hubLast-hubBase
		if caught && time.Since(quietSince) >= time.Second {
			row.Caught = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	row.HubEvents = hubLast - hubBase
	evs, lost := h.Events().Since(hubBase, int(row.HubEvents))
	if len(evs) > 0 && lost == 0 {
		row.HubSpan = evs[len(evs)-1].Time.Sub(evs[0].Time)
		row.Kinds = map[string]int{}
		for _, e := range evs {
			row.Kinds[string(e.Kind)]++
		}
	}
	var hubLastAt time.Time
	if len(evs) > 0 {
		hubLastAt = evs[len(evs)-1].Time
	}

	raw, err := chromedp.Run(tab, chromedp.Evaluate[[]byte](`window.__benchCounts`))
	if err != nil {
		return nil, fmt.Errorf("reading the page's counter changes: %w", err)
	}
	var changes [][3]int64
	if err := json.Unmarshal(raw, &changes); err != nil {
		return nil, fmt.Errorf("the page's counter changes: %w", err)
	}
	var first, last, reached int64
	for _, c := range changes {
		recv, lst := c[1]-pageBase[0], c[2]-pageBase[1]
		if recv+lst <= 0 {
			continue
		}
		if first == 0 {
			first = c[0]
		}
		last = c[0]
		row.Received, row.Lost = recv, lst
		if reached == 0 && uint64(recv+lst) >= row.HubEvents {
			reached = c[0]
		}
	}
	if first > 0 {
		row.PageSpan = time.Duration(last-first) * time.Millisecond
	}
	if reached > 0 && !hubLastAt.IsZero() {
		row.Lag = time.UnixMilli(reached).Sub(hubLastAt)
	}
	return row, nil
}

// hubQuiet waits until the hub has recorded no event for quiet.
func hubQuiet(ctx context.Context, h *hub.Server, quiet, limit time.Duration) error {
	last, since := h.Events().Last(), time.Now()
	deadline := time.Now().Add(limit)
	for time.Since(since) < quiet {
		if time.Now().After(deadline) {
			return fmt.Errorf("the hub did not go quiet for %v within %v", quiet, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if l := h.Events().Last(); l != last {
			last, since = l, time.Now()
		}
	}
	return nil
}

// timed runs actions in tab with a deadline; the error says what for.
func timed(tab context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tab, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// waitLive waits until the page says its event stream is live.
func waitLive(tab context.Context) error {
	ctx, cancel := context.WithTimeout(tab, 30*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](`(document.getElementById("stream-state") || {}).textContent === "live"`,
		chromedp.WithPollingInterval(50*time.Millisecond)))
	if err != nil {
		return fmt.Errorf("the Devices page's stream to be live: %w", err)
	}
	return nil
}

// waitCounts installs the counter observer, reads the two counters and
// hands them to ok until it accepts them.
func waitCounts(tab context.Context, d time.Duration, ok func([2]int64) bool) error {
	ctx, cancel := context.WithTimeout(tab, d)
	defer cancel()
	for {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[2]int64](counterJS))
		if err != nil {
			return fmt.Errorf("reading #events-received and #events-lost: %w", err)
		}
		if ok(v) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reading #events-received and #events-lost: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *results) dashboardGoal() goal {
	const what = "the Devices page keeps up with a 1,000-device fleet reboot (no event lost)"
	d := r.Dashboard
	if d == nil {
		return goal{what, "not measured", "-"}
	}
	m := fmt.Sprintf("%.0f events/s received, %d lost, caught up %s after the last event (%d devices)", d.perSec(), d.Lost, secs(d.Lag), d.Devices)
	if d.Devices != 1000 {
		return goal{what, m + " (not measured at 1,000)", "-"}
	}
	return goal{what, m, yesNo(d.Caught && d.Lost == 0)}
}

func (r *results) dashboardMarkdown(w func(string, ...any)) {
	w("\n## 8. Dashboard under a fleet reboot\n\n")
	w("A hub inside the bench process with its dashboard on, a fleet of devices (one device fleet in the bench, reboot delay %s), "+
		"and headless Chromium (internal/browser) logged in on the Devices page, whose event stream (/stream/events, every device) stays open. "+
		"Then one fleet reboot of every connected device through jobs (service/rollout, the engine of `dmctl service reboot --query`). "+
		"The window opens when the rollout starts and closes when the hub has been quiet for a second and the page's "+
		"`#events-received` + `#events-lost` reached the hub's count. A MutationObserver in the page stamps every change of the two counters with the page's clock (the bench's, same machine).\n\n", dashRebootDelay)
	d := r.Dashboard
	if d == nil {
		w("Not measured (see the notes).\n")
		return
	}
	w("| devices | confirmed | reboot wall time | hub events | hub events/s | page received | page lost | page first→last | events/s the page kept up with | lag after the last event |\n")
	w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	hubRate := "-" // the ring no longer held the window's first events
	if d.HubSpan > 0 {
		hubRate = fmt.Sprintf("%.0f", d.hubPerSec())
	}
	w("| %d | %d | %s | %d | %s | %d | %d | %s | %.0f | %s |\n", d.Devices, d.Confirmed, secs(d.Wall), d.HubEvents, hubRate,
		d.Received, d.Lost, secs(d.PageSpan), d.perSec(), secs(d.Lag))
	w("\n*Hub events* are those the hub recorded in the window (connects, disconnects, method calls and answers, twin patches); *hub events/s* is their count over the first to the last one's time. " +
		"*Events/s the page kept up with* is the page's received events over the time from its first to its last counter change. " +
		"*Lag* is the hub's last event's time to the page's count reaching the hub's.\n")
	if len(d.Kinds) > 0 {
		kinds := make([]string, 0, len(d.Kinds))
		for k := range d.Kinds {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%s %d", k, d.Kinds[k])
		}
		w("\nThe window's hub events by kind: %s.\n", strings.Join(parts, ", "))
	}
	if !d.Caught {
		w("\nThe page did not reach the hub's count within two minutes of the rollout's end.\n")
	}
	if d.Err != "" {
		w("\nThe fleet reboot ended with: %s\n", oneLine(d.Err))
	}
}
