package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/dmctl/dmctl/internal/iothub"
)

// The fleet every subtest of TestDashboard shares: fleetSize devices
// tagged site=lab, fleet=f1, run by one `dmctl device run
// --connection-strings-file`.
const fleetSize = 20

// dash is one hub, one fleet and one Chromium logged in (in its default
// profile) with the URL the hub printed.
type dash struct {
	h        *hubProc
	b        *Browser
	fleet    *deviceProc
	loginURL string // where the login URL landed
}

// open opens a logged-in tab at path and waits until the page's event
// stream is live.
func (d *dash) open(t *testing.T, path string) context.Context {
	t.Helper()
	tab := openTab(t, d.b)
	do(t, tab, 15*time.Second, "page "+path, chromedp.Navigate(d.h.origin+path))
	waitText(t, tab, 15*time.Second, "#stream-state", "#stream-state to say live on "+path, func(s string) bool { return strings.TrimSpace(s) == "live" })
	return tab
}

// TestDashboard drives the dashboard of a real `dmctl hub serve` in
// headless Chromium, with real `dmctl device run` devices.
func TestDashboard(t *testing.T) {
	h := startHub(t)
	d := &dash{h: h, b: browse(t, h)}

	// The fleet, registered with the CLI and run as one process.
	css := h.service(t, "device", "create", "--count", fmt.Sprint(fleetSize), "--prefix", "fleet", "--tags", `{"site":"lab","fleet":"f1"}`)
	file := filepath.Join(h.dir, "fleet.txt")
	if err := os.WriteFile(file, []byte(css), 0o600); err != nil {
		t.Fatal(err)
	}
	d.fleet = h.runDevice(t, "fleet", "--connection-strings-file", file)

	// Log in with the printed URL in the default profile: every tab of
	// Tab shares the session from here on.
	tab := openTab(t, d.b)
	resp := get(t, tab, 15*time.Second, "the printed login URL", chromedp.NavigateResponse(h.dashURL))
	d.loginURL = get(t, tab, 5*time.Second, "the location after login", chromedp.Location())
	if resp.Status != 200 || d.loginURL != h.origin+"/" {
		t.Fatalf("the printed login URL: status %d at %s, want 200 at %s/ (redirected to the Devices page)", resp.Status, d.loginURL, h.origin)
	}

	t.Run("login", func(t *testing.T) { testLogin(t, d) })
	t.Run("no-session", func(t *testing.T) { testNoSession(t, d) })
	t.Run("configurations", func(t *testing.T) { testConfigurations(t, d) })
	t.Run("fleet-reboot", func(t *testing.T) { testFleetReboot(t, d) })
	t.Run("connection-live", func(t *testing.T) { testConnectionLive(t, d) })
	t.Run("desired-and-reboot", func(t *testing.T) { testDesiredAndReboot(t, d) })
	t.Run("escaped", func(t *testing.T) { testEscaped(t, d) })
	t.Run("d2c-message", func(t *testing.T) { testMessage(t, d) })
	t.Run("hub", func(t *testing.T) { testHubPage(t, d) })
	t.Run("logout", func(t *testing.T) { testLogout(t, d) }) // last: it ends the shared session
}

// testLogout: the Log out button ends the session; the pages then lead to
// the login page.
func testLogout(t *testing.T, d *dash) {
	tab := d.open(t, "/hub")
	ctx, cancel := context.WithTimeout(tab, 15*time.Second)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS("form#logout button")))
	if err != nil {
		t.Fatalf("clicking Log out: %v", err)
	}
	loc := get(t, tab, 5*time.Second, "location", chromedp.Location())
	if !strings.HasPrefix(loc, d.h.origin+"/login") {
		body, _ := chromedp.Run(tab, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("after Log out: status %d at %s (%q), want the login page", resp.Status, loc, tail(body, 200))
	}
	do(t, tab, 15*time.Second, "the Devices page after logging out", chromedp.Navigate(d.h.origin+"/"))
	if loc := get(t, tab, 5*time.Second, "location", chromedp.Location()); !strings.HasPrefix(loc, d.h.origin+"/login") {
		t.Errorf("the Devices page after logging out: at %s, want /login", loc)
	}
}

// testLogin: the login URL set a session cookie with the contract's
// attributes; the same token is refused a second time; the login form
// takes the owner connection string and refuses a wrong one.
func testLogin(t *testing.T, d *dash) {
	tab := openTab(t, d.b)
	cookies := get(t, tab, 5*time.Second, "the browser's cookies for the dashboard",
		func(ctx context.Context, tg *chromedp.Target) ([]*network.Cookie, error) {
			r, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{d.h.origin + "/"}})
			return r.Cookies, err
		})
	var session *network.Cookie
	for _, c := range cookies {
		if c.Name == "__Host-dmctl-session" {
			session = c
		}
	}
	if session == nil {
		t.Fatalf("no __Host-dmctl-session cookie after the login URL (cookies: %d)", len(cookies))
	}
	if !session.HTTPOnly || !session.Secure || session.SameSite != network.CookieSameSiteStrict || session.Path != "/" {
		t.Errorf("session cookie: HttpOnly %v, Secure %v, SameSite %q, Path %q; want HttpOnly, Secure, Strict, /", session.HTTPOnly, session.Secure, session.SameSite, session.Path)
	}

	// A second use of the token, in a browser context with no cookie.
	fresh := openFreshTab(t, d.b)
	resp := get(t, fresh, 15*time.Second, "the login URL a second time", chromedp.NavigateResponse(d.h.dashURL))
	if resp.Status != 401 {
		t.Errorf("the used login token: status %d, want 401", resp.Status)
	}
	waitText(t, fresh, 10*time.Second, "#login-error", "#login-error after the used token", func(s string) bool { return strings.TrimSpace(s) != "" && s != "\x00absent" })

	// The login page with the connection-string form.
	form := openFreshTab(t, d.b)
	do(t, form, 15*time.Second, "the login page", chromedp.Navigate(d.h.origin+"/login"), chromedp.WaitVisible(chromedp.CSS("form#login")))
	screenshot(t, form, "login")
	bad := strings.Replace(d.h.ownerCS, "SharedAccessKey=", "SharedAccessKey=AAAA", 1)
	resp = submitLogin(t, form, bad)
	if resp.Status != 401 {
		body, _ := chromedp.Run(form, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Errorf("a wrong connection string: status %d (%q), want 401", resp.Status, tail(body, 200))
	}
	waitText(t, form, 10*time.Second, "#login-error", "#login-error after a wrong connection string", func(s string) bool { return strings.TrimSpace(s) != "" && s != "\x00absent" })
	resp = submitLogin(t, form, d.h.ownerCS)
	if loc := get(t, form, 5*time.Second, "location", chromedp.Location()); resp.Status != 200 || loc != d.h.origin+"/" {
		t.Errorf("the owner connection string: status %d at %s, want 200 at the Devices page", resp.Status, loc)
	}
	do(t, form, 10*time.Second, "the Devices page after the form login", chromedp.WaitVisible(chromedp.CSS("table#devices")))
}

// submitLogin fills the login form with cs, submits it and returns the
// response of the page it leads to.
func submitLogin(t *testing.T, tab context.Context, cs string) *network.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 15*time.Second)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx,
		chromedp.SetValue(chromedp.CSS("input[name=connectionString]"), cs),
		chromedp.Click(chromedp.CSS("button#login-submit")))
	if err != nil {
		t.Fatalf("submitting the login form: %v", err)
	}
	return resp
}

// testNoSession: in a browser context without the cookie, every page
// redirects to /login and every stream and /api path answers 401.
func testNoSession(t *testing.T, d *dash) {
	tab := openFreshTab(t, d.b)
	for _, p := range []string{"/", "/jobs", "/configurations", "/hub", "/devices/fleet-0001", "/?where=tags.site%3D'lab'"} {
		do(t, tab, 15*time.Second, "page "+p+" without a session", chromedp.Navigate(d.h.origin+p))
		loc := get(t, tab, 5*time.Second, "location", chromedp.Location())
		if !strings.HasPrefix(loc, d.h.origin+"/login") {
			t.Errorf("%s without a session: at %s, want a redirect to /login", p, loc)
		}
	}
	// The login page is on the dashboard's origin, so its fetches are
	// same-origin requests that would carry a cookie if there were one.
	for _, p := range []string{"/stream/events", "/stream/events?device=fleet-0001", "/stream/jobs",
		"/api/devices?api-version=" + iothub.APIVersion, "/api/twins/fleet-0001?api-version=" + iothub.APIVersion} {
		status := get(t, tab, 10*time.Second, "fetch "+p, chromedp.Evaluate[int](
			`fetch(`+jsString(p)+`, {credentials: "same-origin"}).then(r => r.status)`, chromedp.EvalAwaitPromise))
		if status != 401 {
			t.Errorf("fetch %s without a session: %d, want 401", p, status)
		}
	}
}

// testConfigurations: a configuration created over the fleet while the
// Configurations page is open shows there and reaches 100% applied,
// without a reload.
func testConfigurations(t *testing.T, d *dash) {
	tab := d.open(t, "/configurations")
	if err := markPage(tab); err != nil {
		t.Fatal(err)
	}
	d.h.service(t, "configuration", "create", "--id", "lab-interval", "--priority", "10",
		"--target-condition", "tags.fleet = 'f1'", "--content", `{"deviceContent":{"properties.desired.telemetryInterval":30}}`,
		"--labels", `{"campaign":"spring"}`)
	row := `tr[data-configuration="lab-interval"]`
	waitText(t, tab, 20*time.Second, row+" td.targeted", "the configuration to target the fleet", func(s string) bool { return strings.TrimSpace(s) == fmt.Sprint(fleetSize) })
	waitText(t, tab, 20*time.Second, row+" .percent", "the configuration to reach 100% applied, live", func(s string) bool { return strings.TrimSpace(s) == "100%" })
	checkNotReloaded(t, tab)
	screenshot(t, tab, "configurations")
}

// testFleetReboot: a fleet reboot through jobs (`dmctl service reboot
// --query`) advances live on the Jobs page to 100%.
func testFleetReboot(t *testing.T, d *dash) {
	tab := d.open(t, "/jobs")
	if err := markPage(tab); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, errOut := &lockedBuffer{}, &lockedBuffer{}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		code := runCLI(ctx, out, errOut, "service", "reboot", "--query", "tags.fleet = 'f1'", "--job-prefix", "lab-reboot",
			"--connection-string", d.h.ownerCS, "--ca-file", d.h.ca, "-o", "json")
		var err error
		if code != 0 {
			err = fmt.Errorf("exit %d: %s", code, errOut.String())
		}
		done <- result{out.String(), err}
	}()
	row := `tr[data-job="lab-reboot-w1"]`
	waitText(t, tab, 30*time.Second, row+" .percent", "the reboot job lab-reboot-w1 to reach 100% on the Jobs page, live", func(s string) bool { return strings.TrimSpace(s) == "100%" })
	waitText(t, tab, 10*time.Second, row+" td.status", "the job's status to say completed", func(s string) bool { return strings.Contains(s, "completed") })
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("dmctl service reboot --query: %v", r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dmctl service reboot --query did not finish within 60 s")
	}
	checkNotReloaded(t, tab)
	screenshot(t, tab, "jobs")
}

// testConnectionLive: a device started after the Devices page opened turns
// connected in its row without a reload, and disconnected when it stops.
func testConnectionLive(t *testing.T, d *dash) {
	cs := d.h.createDevice(t, "sensor-live", `{"site":"lab","role":"gateway"}`)
	tab := d.open(t, "/")
	cell := `tr[data-device="sensor-live"] td.connection`
	waitText(t, tab, 10*time.Second, cell, "sensor-live to be listed disconnected", func(s string) bool { return strings.TrimSpace(s) == "disconnected" })
	if err := markPage(tab); err != nil {
		t.Fatal(err)
	}
	dev := d.h.runDevice(t, "sensor-live", "--connection-string", cs)
	waitText(t, tab, 15*time.Second, cell, "sensor-live to turn connected live", func(s string) bool { return strings.TrimSpace(s) == "connected" })
	waitText(t, tab, 15*time.Second, `tr[data-device="fleet-0001"] td.connection`, "the fleet to be connected", func(s string) bool { return strings.TrimSpace(s) == "connected" })
	screenshot(t, tab, "devices")
	dev.stop()
	waitText(t, tab, 15*time.Second, cell, "sensor-live to turn disconnected live", func(s string) bool { return strings.TrimSpace(s) == "disconnected" })
	checkNotReloaded(t, tab)
}

// markPage sets a property on the page's window that a reload would lose.
func markPage(tab context.Context) error {
	return runFor(tab, 5*time.Second, "marking the page", chromedp.Evaluate[chromedp.Void](`window.__dmctlMark = 1`))
}

// checkNotReloaded fails when the page was reloaded since markPage.
func checkNotReloaded(t *testing.T, tab context.Context) {
	t.Helper()
	if !get(t, tab, 5*time.Second, "the page mark", chromedp.Evaluate[bool](`window.__dmctlMark === 1`)) {
		t.Error("the page was reloaded: the updates did not arrive live")
	}
}

// testDesiredAndReboot: on the Device page, a desired property saved in
// the editor reaches `dmctl device run` (its JSON log says so), and
// rebootDevice invoked from the page answers 200 and the reported
// rebootTime changes on the page without a reload.
func testDesiredAndReboot(t *testing.T, d *dash) {
	cs := d.h.createDevice(t, "thermostat-1", `{"site":"lab","room":"A"}`)
	dev := d.h.runDevice(t, "thermostat-1", "--connection-string", cs)
	tab := d.open(t, "/devices/thermostat-1")
	waitText(t, tab, 10*time.Second, "#twin-etag", "the twin's etag", func(s string) bool { return strings.TrimSpace(s) != "" && s != "\x00absent" })
	if err := markPage(tab); err != nil {
		t.Fatal(err)
	}

	edit := `{"tags":{"site":"lab","room":"A"},"properties":{"desired":{"targetTemperature":21.5}}}`
	do(t, tab, 10*time.Second, "saving a desired property in #twin-edit",
		chromedp.SetValue(chromedp.ID("twin-edit"), edit),
		chromedp.Click(chromedp.ID("twin-save")))
	waitText(t, tab, 10*time.Second, "#twin-result", "#twin-result to say saved", func(s string) bool { return strings.HasPrefix(strings.TrimSpace(s), "saved") })
	err := waitFor(15*time.Second, "dmctl device run to log the desired targetTemperature 21.5", func() (bool, error) {
		lines, err := dev.lines()
		for _, l := range lines {
			var p struct {
				T *float64 `json:"targetTemperature"`
			}
			if l.Event == "desired" && json.Unmarshal(l.Patch, &p) == nil && p.T != nil && *p.T == 21.5 {
				return true, nil
			}
		}
		return false, err
	})
	if err != nil {
		t.Fatalf("%v\ndevice log:\n%s", err, tail(dev.log.String(), 3000))
	}
	waitText(t, tab, 10*time.Second, "#twin-desired", "#twin-desired to show the new value live", func(s string) bool { return strings.Contains(s, "21.5") })

	before := reportedRebootTime(t, tab)
	do(t, tab, 10*time.Second, "invoking rebootDevice from the page",
		chromedp.SetValue(chromedp.ID("method-name"), "rebootDevice"),
		chromedp.SetValue(chromedp.ID("method-payload"), "{}"),
		chromedp.Click(chromedp.ID("method-invoke")))
	waitText(t, tab, 15*time.Second, "#method-status", "#method-status to show 200", func(s string) bool { return strings.TrimSpace(s) == "200" })
	var after string
	err = waitFor(20*time.Second, "#twin-reported to show a new rebootTime live (before: "+before+")", func() (bool, error) {
		after = reportedRebootTime(t, tab)
		return after != "" && after != before, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkNotReloaded(t, tab)
	screenshot(t, tab, "device")
}

// reportedRebootTime reads rebootTime from the JSON in #twin-reported
// ("" when absent).
func reportedRebootTime(t *testing.T, tab context.Context) string {
	t.Helper()
	text := get(t, tab, 5*time.Second, "#twin-reported", chromedp.TextContent(chromedp.ID("twin-reported")))
	var rep struct {
		RebootTime string `json:"rebootTime"`
	}
	if err := json.Unmarshal([]byte(text), &rep); err != nil {
		t.Fatalf("#twin-reported is not JSON: %v: %q", err, tail(text, 300))
	}
	return rep.RebootTime
}

// testEscaped: a tag holding a script element renders as text on the
// Devices and Device pages, and no dialog opens. A dialog the test opens
// itself afterwards shows that the listener works.
func testEscaped(t *testing.T, d *dash) {
	const script = `<script>alert(1)</script>`
	d.h.createDevice(t, "xss-probe", `{"note":"`+script+`","site":"lab"}`)
	tab := openTab(t, d.b)
	var mu sync.Mutex
	var dialogs []string
	if err := chromedp.Listen(tab, func(ev any) {
		if e, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			mu.Lock()
			dialogs = append(dialogs, e.Message)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, css string }{
		{"/", `tr[data-device="xss-probe"] td.tags`},
		{"/devices/xss-probe", "#twin-tags"},
	} {
		do(t, tab, 15*time.Second, "page "+c.path, chromedp.Navigate(d.h.origin+c.path), chromedp.WaitVisible(chromedp.CSS(c.css)))
		text := waitText(t, tab, 10*time.Second, c.css, "the tag on "+c.path, func(s string) bool { return strings.Contains(s, "alert(1)") })
		if !strings.Contains(text, script) {
			t.Errorf("%s: %s shows %q, want the tag as text %q", c.path, c.css, text, script)
		}
		n := get(t, tab, 5*time.Second, "script elements", chromedp.Evaluate[int](`document.querySelectorAll(`+jsString(c.css+" script")+`).length`))
		if n != 0 {
			t.Errorf("%s: %d script elements inside %s: the tag was rendered as HTML", c.path, n, c.css)
		}
	}
	mu.Lock()
	seen := append([]string(nil), dialogs...)
	mu.Unlock()
	if len(seen) != 0 {
		t.Fatalf("dialogs opened: %q", seen)
	}
	// The control: a dialog of the test's own is seen by the listener.
	do(t, tab, 5*time.Second, "opening a control dialog", chromedp.Evaluate[chromedp.Void](`setTimeout(() => alert("control"), 0)`))
	err := waitFor(5*time.Second, "the listener to see the control dialog", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(dialogs) == 1 && dialogs[0] == "control", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(tab, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}); err != nil {
		t.Fatal(err)
	}
}

// testMessage: a device-to-cloud message sent with `dmctl device send`
// shows in the Device page's event feed with its properties.
func testMessage(t *testing.T, d *dash) {
	cs := d.h.createDevice(t, "meter-7", `{"site":"lab"}`)
	tab := d.open(t, "/devices/meter-7")
	d.h.dmctl(t, "device", "send", "--connection-string", cs, "--ca-file", d.h.ca,
		"--property", "unit=kWh", "--property", "source=browser-test", "--content-type", "application/json", "--message", `{"energy":12.5}`)
	li := `ul#events li.event[data-kind="message"]`
	text := waitText(t, tab, 15*time.Second, li, "the message in ul#events", func(s string) bool { return strings.Contains(s, "12.5") })
	for _, want := range []string{`"energy"`, "unit", "kWh", "source", "browser-test"} {
		if !strings.Contains(text, want) {
			t.Errorf("the message's entry %q lacks %q", text, want)
		}
	}
}

// testHubPage: the Hub page masks the owner key until asked, and names
// the CA file.
func testHubPage(t *testing.T, d *dash) {
	tab := d.open(t, "/hub")
	key := d.h.ownerCS[strings.Index(d.h.ownerCS, "SharedAccessKey=")+len("SharedAccessKey="):]
	masked := waitText(t, tab, 10*time.Second, "#hub-cs", "#hub-cs", func(s string) bool { return strings.Contains(s, "HostName=") })
	if strings.Contains(masked, key) {
		t.Errorf("#hub-cs shows the key before it is asked for")
	}
	ca := waitText(t, tab, 10*time.Second, "#hub-ca", "#hub-ca", func(s string) bool { return strings.TrimSpace(s) != "" })
	if abs, _ := filepath.Abs(d.h.ca); !strings.Contains(ca, filepath.Base(d.h.ca)) || (!strings.Contains(ca, d.h.ca) && !strings.Contains(ca, abs)) {
		t.Errorf("#hub-ca %q, want the CA file %s", ca, d.h.ca)
	}
	waitText(t, tab, 10*time.Second, "#hub-counts", "#hub-counts", func(s string) bool { return strings.Contains(s, "device") })
	screenshot(t, tab, "hub")
	do(t, tab, 10*time.Second, "showing the connection string", chromedp.Click(chromedp.ID("hub-cs-show")))
	waitText(t, tab, 10*time.Second, "#hub-cs", "#hub-cs to show the key once asked", func(s string) bool { return strings.Contains(s, key) })
}

// openFreshTab opens a tab in a browser context of its own (no cookies),
// closed when the test ends.
func openFreshTab(t *testing.T, b *Browser) context.Context {
	t.Helper()
	tab, cancel, err := b.FreshTab()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return tab
}
