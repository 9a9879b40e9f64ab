package dashboard_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/dashboard"
	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// Every page, stream, secret and /api route needs a session: pages
// redirect to /login, the rest answer 401.
func TestNoSessionNoAccess(t *testing.T) {
	e := newEnv(t)
	if _, err := e.h.Store().CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	bogus := &http.Cookie{Name: dashboard.CookieName, Value: "not-a-session"}
	routes := []struct {
		method, path string
		want         int
	}{
		{"GET", "/", http.StatusSeeOther},
		{"GET", "/?where=tags.env%3D'x'", http.StatusSeeOther},
		{"GET", "/devices/d1", http.StatusSeeOther},
		{"GET", "/devices/d1/modules/m1", http.StatusSeeOther},
		{"GET", "/jobs", http.StatusSeeOther},
		{"GET", "/configurations", http.StatusSeeOther},
		{"GET", "/hub", http.StatusSeeOther},
		{"GET", "/stream/events", http.StatusUnauthorized},
		{"GET", "/stream/events?device=d1", http.StatusUnauthorized},
		{"GET", "/stream/jobs", http.StatusUnauthorized},
		{"GET", "/api/twins/d1?api-version=2021-04-12", http.StatusUnauthorized},
		{"GET", "/api/devices", http.StatusUnauthorized},
		{"PATCH", "/api/twins/d1", http.StatusUnauthorized},
		{"POST", "/api/twins/d1/methods", http.StatusUnauthorized},
		{"POST", "/secrets/hub", http.StatusUnauthorized},
		{"POST", "/secrets/devices/d1", http.StatusUnauthorized},
		{"POST", "/logout", http.StatusUnauthorized},
	}
	for _, c := range []*http.Cookie{nil, bogus} {
		for _, r := range routes {
			resp, body := e.do(t, req{method: r.method, path: r.path, cookie: c})
			if resp.StatusCode != r.want {
				t.Errorf("%s %s (cookie %v): %d, want %d", r.method, r.path, c != nil, resp.StatusCode, r.want)
			}
			if r.want == http.StatusSeeOther && resp.Header.Get("Location") != "/login" {
				t.Errorf("%s %s redirects to %q, want /login", r.method, r.path, resp.Header.Get("Location"))
			}
			if strings.Contains(body, "SharedAccessKey") || strings.Contains(body, "d1") && r.want == http.StatusUnauthorized {
				t.Errorf("%s %s without a session leaks: %s", r.method, r.path, body)
			}
		}
	}
}

func TestTokenLogin(t *testing.T) {
	e := newEnv(t)
	link, err := url.Parse(e.h.DashboardURL())
	if err != nil {
		t.Fatal(err)
	}
	if link.Scheme != "https" || link.Path != "/login" || link.Hostname() != "localhost" || link.Port() == "" {
		t.Fatalf("DashboardURL = %s", link.Redacted())
	}
	if _, port, _ := strings.Cut(e.h.DashboardAddr(), ":"); port != link.Port() {
		t.Fatalf("DashboardAddr %s does not match the link's port %s", e.h.DashboardAddr(), link.Port())
	}
	resp, _ := e.do(t, req{path: link.RequestURI()})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("login link: %d to %q, want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
	}
	c := sessionCookie(t, resp)
	if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" || len(c.Value) < 40 {
		t.Fatalf("session cookie attributes: %q", resp.Header.Get("Set-Cookie"))
	}
	if r, body := e.do(t, req{path: "/", cookie: c}); r.StatusCode != http.StatusOK || !strings.Contains(body, `id="devices"`) {
		t.Fatalf("GET / with the session: %d", r.StatusCode)
	}
	// The token works once.
	r2, body := e.do(t, req{path: link.RequestURI()})
	if r2.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `id="login-error"`) || !strings.Contains(body, "not valid") {
		t.Fatalf("second use of the token: %d %s", r2.StatusCode, body)
	}
	if len(r2.Cookies()) != 0 {
		t.Fatalf("a used token set a cookie: %v", r2.Header["Set-Cookie"])
	}
	r3, _ := e.do(t, req{path: "/login?token=" + strings.Repeat("A", 43)})
	if r3.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unknown token: %d", r3.StatusCode)
	}
	// Logging out ends the session (the form carries the CSRF token).
	csrf := e.csrf(t, c)
	r4, _ := e.do(t, req{method: "POST", path: "/logout", body: "csrf=" + url.QueryEscape(csrf), contentType: "application/x-www-form-urlencoded", cookie: c})
	if r4.StatusCode != http.StatusSeeOther || r4.Header.Get("Location") != "/login" {
		t.Fatalf("logout: %d to %q", r4.StatusCode, r4.Header.Get("Location"))
	}
	if r5, _ := e.do(t, req{path: "/", cookie: c}); r5.StatusCode != http.StatusSeeOther {
		t.Fatalf("GET / after logout: %d, want 303", r5.StatusCode)
	}
}

func postLogin(t *testing.T, e *env, cs string) (*http.Response, string) {
	t.Helper()
	return e.do(t, req{method: "POST", path: "/login", body: url.Values{"connectionString": {cs}}.Encode(),
		contentType: "application/x-www-form-urlencoded"})
}

func TestConnectionStringLogin(t *testing.T) {
	e := newEnv(t)
	owner := e.h.ServiceConnectionString()
	resp, _ := postLogin(t, e, owner)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("owner connection string: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	c := sessionCookie(t, resp)
	if r, _ := e.do(t, req{path: "/jobs", cookie: c}); r.StatusCode != http.StatusOK {
		t.Fatalf("GET /jobs after a connection-string login: %d", r.StatusCode)
	}

	cs, err := sas.ParseService(owner)
	if err != nil {
		t.Fatal(err)
	}
	ownerPolicy, err := e.h.Store().Policy("iothubowner")
	if err != nil {
		t.Fatal(err)
	}
	secondary := "HostName=127.0.0.1;SharedAccessKeyName=iothubowner;SharedAccessKey=" + ownerPolicy.SecondaryKey
	if r, _ := postLogin(t, e, secondary); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("owner secondary key, host 127.0.0.1: %d, want 303", r.StatusCode)
	}
	svc, err := e.h.Store().Policy("service")
	if err != nil {
		t.Fatal(err)
	}
	otherKey := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	bad := map[string]string{
		"wrong key":    "HostName=" + cs.HostName + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + otherKey,
		"other policy": "HostName=" + cs.HostName + ";SharedAccessKeyName=service;SharedAccessKey=" + svc.PrimaryKey,
		"other host":   "HostName=hub.example.com;SharedAccessKeyName=iothubowner;SharedAccessKey=" + cs.SharedAccessKey,
		"malformed":    "not a connection string",
	}
	for name, s := range bad {
		r, body := postLogin(t, e, s)
		if r.StatusCode != http.StatusUnauthorized || len(r.Cookies()) != 0 {
			t.Errorf("%s: %d, cookies %v; want 401 and none", name, r.StatusCode, r.Header["Set-Cookie"])
		}
		if !strings.Contains(body, `id="login-error"`) || strings.Contains(body, cs.SharedAccessKey) || strings.Contains(body, otherKey) {
			t.Errorf("%s: the login page does not say why, or echoes a key: %s", name, body)
		}
	}
}

func TestFailedLoginsAreBounded(t *testing.T) {
	e := newEnv(t)
	var last int
	for i := 0; i < 20 && last != http.StatusTooManyRequests; i++ {
		r, _ := postLogin(t, e, "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA")
		last = r.StatusCode
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("20 failed logins in a row never answered 429 (last %d)", last)
	}
	// Even the right connection string waits now.
	if r, _ := postLogin(t, e, e.h.ServiceConnectionString()); r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("login while over the budget: %d, want 429", r.StatusCode)
	}
}

func TestCSRFAndOrigin(t *testing.T) {
	e := newEnv(t)
	c, csrf := e.login(t)
	cases := []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"no token", nil, http.StatusForbidden},
		{"wrong token", map[string]string{"X-CSRF-Token": csrf + "x"}, http.StatusForbidden},
		{"cross-site", map[string]string{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"same-site", map[string]string{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"other origin", map[string]string{"X-CSRF-Token": csrf, "Origin": "https://evil.example"}, http.StatusForbidden},
		{"right", map[string]string{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-origin", "Origin": e.base}, http.StatusOK},
		// What browsers send under Referrer-Policy: no-referrer.
		{"right, origin null", map[string]string{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-origin", "Origin": "null"}, http.StatusOK},
		{"cross-site, origin null", map[string]string{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site", "Origin": "null"}, http.StatusForbidden},
	}
	for _, tc := range cases {
		r, body := e.do(t, req{method: "POST", path: "/secrets/hub", header: tc.header, cookie: c})
		if r.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, r.StatusCode, tc.want)
		}
		if tc.want == http.StatusOK {
			var got struct{ ConnectionString string }
			if err := json.Unmarshal([]byte(body), &got); err != nil || got.ConnectionString != e.h.ServiceConnectionString() {
				t.Errorf("hub secret: %v %s", err, body)
			}
		} else if strings.Contains(body, "SharedAccessKey") {
			t.Errorf("%s: refused, but the body holds the key", tc.name)
		}
	}
	// A PATCH through /api without the token is refused before the REST API.
	if r, _ := e.do(t, req{method: "PATCH", path: "/api/twins/x", body: "{}", cookie: c}); r.StatusCode != http.StatusForbidden {
		t.Errorf("PATCH /api without CSRF: %d, want 403", r.StatusCode)
	}
	// /api bodies belong to the REST API: a csrf form field there does not count.
	if r, _ := e.do(t, req{method: "POST", path: "/api/devices/query", body: "csrf=" + url.QueryEscape(csrf),
		contentType: "application/x-www-form-urlencoded", cookie: c}); r.StatusCode != http.StatusForbidden {
		t.Errorf("POST /api with the token only in a form field: %d, want 403", r.StatusCode)
	}
	// The login form from another site is refused too.
	r, _ := e.do(t, req{method: "POST", path: "/login", body: "connectionString=" + url.QueryEscape(e.h.ServiceConnectionString()),
		contentType: "application/x-www-form-urlencoded", header: map[string]string{"Sec-Fetch-Site": "cross-site"}})
	if r.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site login: %d, want 403", r.StatusCode)
	}
}

func TestSecurityHeadersEverywhere(t *testing.T) {
	e := newEnv(t)
	c, csrf := e.login(t)
	for _, r := range []req{
		{path: "/login"},
		{path: "/login?token=nope"},
		{path: "/"},
		{path: "/stream/jobs"},
		{path: "/no/such/page", cookie: c},
		{path: "/static/app.js"},
		{path: "/static/app.css"},
		{path: "/", cookie: c},
		{path: "/devices/nope", cookie: c},
		{path: "/hub", cookie: c},
		{path: "/api/twins/nope?api-version=2021-04-12", cookie: c},
		{method: "POST", path: "/secrets/hub", cookie: c},
		{method: "POST", path: "/secrets/hub", cookie: c, header: map[string]string{"X-CSRF-Token": csrf}},
	} {
		resp, _ := e.do(t, r)
		h := resp.Header
		if h.Get("Content-Security-Policy") != dashboard.ContentSecurityPolicy ||
			h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" || h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s (%d): headers %v", r.method, r.path, resp.StatusCode, h)
		}
	}
}

func TestValuesRenderEscaped(t *testing.T) {
	e := newEnv(t)
	st := e.h.Store()
	id := "x'#?%=1" // every character an id may hold that means something in HTML or a URL
	if _, err := st.CreateDevice(iothub.Device{DeviceID: id}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.PatchTwin(id, iothub.Twin{Tags: map[string]any{"note": "<script>alert(1)</script>", "q": `"&'`}}, "*"); err != nil {
		t.Fatal(err)
	}
	c, _ := e.login(t)
	for _, path := range []string{"/", "/devices/" + url.PathEscape(id)} {
		resp, body := e.do(t, req{path: path, cookie: c})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		if strings.Contains(body, "<script>alert") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("GET %s: the tag is not escaped:\n%s", path, body)
		}
		if strings.Contains(body, id) || !strings.Contains(body, "x&#39;#?%=1") {
			t.Errorf("GET %s: the device id is not escaped", path)
		}
		if strings.Count(body, "<script") != 1 || strings.Contains(body, "style=") || strings.Contains(body, " on") && strings.Contains(body, "onclick") {
			t.Errorf("GET %s: inline script or style in the page", path)
		}
	}
	_, body := e.do(t, req{path: "/", cookie: c})
	if !strings.Contains(body, `href="/devices/x%27%23%3F%25=1"`) {
		t.Errorf("the device link is not path-escaped:\n%s", body)
	}
}

func TestDevicesFilter(t *testing.T) {
	e := newEnv(t)
	st := e.h.Store()
	for _, id := range []string{"p1", "p2", "s1"} {
		if _, err := st.CreateDevice(iothub.Device{DeviceID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"p1", "p2"} {
		if _, _, err := st.PatchTwin(id, iothub.Twin{Tags: map[string]any{"env": "prod"}}, "*"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.CreateModule(iothub.Module{DeviceID: "p1", ModuleID: "agent"}); err != nil {
		t.Fatal(err)
	}
	c, _ := e.login(t)
	_, body := e.do(t, req{path: "/?where=" + url.QueryEscape("tags.env = 'prod'"), cookie: c})
	for _, id := range []string{"p1", "p2"} {
		if !strings.Contains(body, `data-device="`+id+`"`) {
			t.Errorf("filtered list lacks %s", id)
		}
	}
	if strings.Contains(body, `data-device="s1"`) {
		t.Errorf("filtered list shows s1")
	}
	if !strings.Contains(body, `href="/devices/p1/modules/agent"`) {
		t.Errorf("p1's module is not listed")
	}
	resp, body := e.do(t, req{path: "/?where=" + url.QueryEscape("tags.env = = 'prod'"), cookie: c})
	if resp.StatusCode != http.StatusBadRequest || strings.Contains(body, `<p id="filter-error" class="error"></p>`) {
		t.Errorf("bad condition: %d; the page shows no error", resp.StatusCode)
	}
}

// /api is the hub's REST API with the owner's rights: its rules apply as
// they are (a stale etag is 412).
func TestAPIForwarding(t *testing.T) {
	e := newEnv(t)
	if _, err := e.h.Store().CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	c, csrf := e.login(t)
	resp, body := e.do(t, req{path: "/api/twins/d1?api-version=2021-04-12", cookie: c})
	var twin iothub.Twin
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &twin) != nil || twin.ETag == "" {
		t.Fatalf("GET /api/twins/d1: %d %s", resp.StatusCode, body)
	}
	patch := `{"properties":{"desired":{"interval":5}}}`
	hdr := map[string]string{"X-CSRF-Token": csrf, "If-Match": twin.ETag}
	resp, body = e.do(t, req{method: "PATCH", path: "/api/twins/d1?api-version=2021-04-12", body: patch, contentType: "application/json", header: hdr, cookie: c})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH with the current etag: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do(t, req{method: "PATCH", path: "/api/twins/d1?api-version=2021-04-12", body: patch, contentType: "application/json", header: hdr, cookie: c})
	if resp.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("PATCH with a stale etag: %d %s, want 412", resp.StatusCode, body)
	}
	resp, _ = e.do(t, req{method: "PATCH", path: "/api/twins/d1", body: "{\"tags\":", contentType: "application/json", header: map[string]string{"X-CSRF-Token": csrf}, cookie: c})
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PATCH with broken JSON: %d, want 400", resp.StatusCode)
	}
	resp, _ = e.do(t, req{path: "/api/twins/nope", cookie: c})
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET an unknown twin: %d, want 404", resp.StatusCode)
	}
	// A method to a device that is not connected gets the REST API's answer.
	resp, body = e.do(t, req{method: "POST", path: "/api/twins/d1/methods?api-version=2021-04-12", contentType: "application/json",
		body: `{"methodName":"reboot","payload":{},"responseTimeoutInSeconds":5,"connectTimeoutInSeconds":0}`, header: map[string]string{"X-CSRF-Token": csrf}, cookie: c})
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "404103") {
		t.Fatalf("method to an offline device: %d %s", resp.StatusCode, body)
	}
}

func TestDeviceSecret(t *testing.T) {
	e := newEnv(t)
	st := e.h.Store()
	if _, err := st.CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateModule(iothub.Module{DeviceID: "d1", ModuleID: "m1"}); err != nil {
		t.Fatal(err)
	}
	x := iothub.Device{DeviceID: "x1", Authentication: &iothub.Authentication{Type: iothub.AuthCertificateAuthority}}
	if _, err := st.CreateDevice(x); err != nil {
		t.Fatal(err)
	}
	c, csrf := e.login(t)
	hdr := map[string]string{"X-CSRF-Token": csrf}
	get := func(path string) (int, string, string) {
		resp, body := e.do(t, req{method: "POST", path: path, header: hdr, cookie: c})
		var a struct{ ConnectionString, Error string }
		_ = json.Unmarshal([]byte(body), &a)
		return resp.StatusCode, a.ConnectionString, a.Error
	}
	hostName := "localhost:" + strconv.Itoa(e.h.Port())
	code, cs, _ := get("/secrets/devices/d1")
	d, err := sas.ParseDevice(cs)
	if code != http.StatusOK || err != nil || d.HostName != hostName || d.DeviceID != "d1" || d.ModuleID != "" {
		t.Fatalf("device connection string: %d %v %v", code, err, d)
	}
	code, cs, _ = get("/secrets/devices/d1/modules/m1")
	m, err := sas.ParseDevice(cs)
	if code != http.StatusOK || err != nil || m.ModuleID != "m1" || m.HostName != hostName {
		t.Fatalf("module connection string: %d %v %v", code, err, m)
	}
	if code, cs, msg := get("/secrets/devices/x1"); code != http.StatusOK || cs != "" || !strings.Contains(msg, "certificate") {
		t.Fatalf("X.509 device: %d %q %q", code, cs, msg)
	}
	if code, _, _ := get("/secrets/devices/nope"); code != http.StatusNotFound {
		t.Fatalf("unknown device: %d", code)
	}
}

func TestEventStreamOrderAndResume(t *testing.T) {
	e := newEnv(t)
	c, _ := e.login(t)
	ring := e.h.Events()
	s := e.openStream(t, "/stream/events", c, nil)
	first := ring.Last()
	ring.Add(events.Event{Kind: events.Connected, DeviceID: "d1"})
	ring.Add(events.Event{Kind: events.MethodCall, DeviceID: "d1", Method: "reboot"})
	ring.Add(events.Event{Kind: events.Disconnected, DeviceID: "d2", Reason: "gone"})
	want := []events.Kind{events.Connected, events.MethodCall, events.Disconnected}
	for i, k := range want {
		ev := s.next(t, "event "+string(k))
		var got events.Event
		if err := json.Unmarshal([]byte(ev.data), &got); err != nil {
			t.Fatalf("event data %q: %v", ev.data, err)
		}
		seq := first + uint64(i) + 1
		if ev.kind != string(k) || ev.id != strconv.FormatUint(seq, 10) || got.Seq != seq || got.Kind != k {
			t.Fatalf("event %d: %+v, want kind %s id %d", i, ev, k, seq)
		}
	}
	// A reconnect resumes after Last-Event-ID.
	r := e.openStream(t, "/stream/events", c, map[string]string{"Last-Event-ID": strconv.FormatUint(first+1, 10)})
	for _, k := range want[1:] {
		if ev := r.next(t, "resumed "+string(k)); ev.kind != string(k) {
			t.Fatalf("resumed stream: %+v, want %s", ev, k)
		}
	}
	// A device page's stream holds only that device's events, its
	// modules' included, and starts with the ones the ring holds.
	ring.Add(events.Event{Kind: events.Message, DeviceID: "d1", ModuleID: "m1", Body: "hi"})
	d := e.openStream(t, "/stream/events?device=d1", c, nil)
	for _, k := range []events.Kind{events.Connected, events.MethodCall, events.Message} {
		if ev := d.next(t, "d1's "+string(k)); ev.kind != string(k) || !strings.Contains(ev.data, `"deviceId":"d1"`) {
			t.Fatalf("device stream: %+v, want d1's %s", ev, k)
		}
	}
	m := e.openStream(t, "/stream/events?device=d1&module=m1", c, nil)
	if ev := m.next(t, "m1's message"); ev.kind != string(events.Message) {
		t.Fatalf("module stream: %+v", ev)
	}
	if resp, _ := e.do(t, req{path: "/stream/events", cookie: c, header: map[string]string{"Last-Event-ID": "x"}}); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("Last-Event-ID x: %d, want 400", resp.StatusCode)
	}
}

func TestEventStreamReportsLost(t *testing.T) {
	e := newEnv(t, func(c *hub.Config) { c.EventRingSize = 4 })
	c, _ := e.login(t)
	ring := e.h.Events()
	base := ring.Last()
	for range 10 {
		ring.Add(events.Event{Kind: events.Message, DeviceID: "d1"})
	}
	// After base+1 the ring holds only the last 4 of the 10.
	s := e.openStream(t, "/stream/events", c, map[string]string{"Last-Event-ID": strconv.FormatUint(base+1, 10)})
	ev := s.next(t, "the lost event")
	if ev.kind != "lost" || ev.data != `{"lost":5}` {
		t.Fatalf("first event %+v, want lost 5", ev)
	}
	for i := range 4 {
		if ev := s.next(t, "a kept event"); ev.id != strconv.FormatUint(base+7+uint64(i), 10) {
			t.Fatalf("kept event %d: %+v", i, ev)
		}
	}
}

func TestStreamsEndWhenTheHubCloses(t *testing.T) {
	e := newEnv(t)
	c, _ := e.login(t)
	ev := e.openStream(t, "/stream/events", c, nil)
	jobs := e.openStream(t, "/stream/jobs", c, nil)
	if first := jobs.next(t, "the first jobs snapshot"); first.kind != "jobs" || !strings.Contains(first.data, `"jobs":[]`) {
		t.Fatalf("first jobs event: %+v", first)
	}
	done := make(chan error, 1)
	go func() { done <- e.h.Close() }()
	for _, s := range []*sseReader{ev, jobs} {
		deadline := time.After(10 * time.Second)
	drain:
		for {
			select {
			case _, ok := <-s.ch:
				if !ok {
					break drain
				}
			case <-deadline:
				t.Fatal("gave up after 10s waiting for a stream to end after Close")
			}
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gave up after 10s waiting for Close with open streams")
	}
}

func TestJobsStreamFollowsConfigurations(t *testing.T) {
	e := newEnv(t)
	c, _ := e.login(t)
	s := e.openStream(t, "/stream/jobs", c, nil)
	if ev := s.next(t, "the first snapshot"); ev.kind != "jobs" {
		t.Fatalf("first event %+v", ev)
	}
	cfg := iothub.Configuration{ID: "fw", Priority: 3, TargetCondition: "*",
		Content: iothub.ConfigurationContent{DeviceContent: map[string]any{"properties.desired.fw": "1.1"}}}
	if _, err := e.h.Store().CreateConfiguration(cfg); err != nil {
		t.Fatal(err)
	}
	ev := s.next(t, "a snapshot with the configuration")
	var snap dashboard.Snapshot
	if err := json.Unmarshal([]byte(ev.data), &snap); err != nil || len(snap.Configurations) != 1 || snap.Configurations[0].ID != "fw" || snap.Configurations[0].Priority != 3 {
		t.Fatalf("snapshot %s: %v", ev.data, err)
	}
}
