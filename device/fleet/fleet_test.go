package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/syncbuf"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/devicetest"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// patience bounds every wait in these tests.
const patience = 15 * time.Second

// within returns a context that ends after d (and with the test).
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

var fastBackoff = retry.Constant(5 * time.Millisecond)

// devices registers n devices on srv and returns their connection strings.
func devices(t *testing.T, srv *hubtest.Server, prefix string, n int) []*sas.ConnectionString {
	t.Helper()
	out := make([]*sas.ConnectionString, n)
	for i := range out {
		cs, err := sas.ParseDevice(srv.CreateDevice(t, fmt.Sprintf("%s%03d", prefix, i)))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = cs
	}
	return out
}

type running struct {
	f    *fleet.Fleet
	logs *syncbuf.Buffer
	ev   *devicetest.Recorder // every device's events
	stop func() error         // cancels Run and returns its result
}

// start runs a fleet until the test ends (or stop is called) and waits
// until every device has connected.
func start(t *testing.T, srv *hubtest.Server, css []*sas.ConnectionString, level zerolog.Level) *running {
	t.Helper()
	logs := &syncbuf.Buffer{}
	rec := devicetest.NewRecorder()
	log := zerolog.New(io.MultiWriter(logs, zerolog.NewTestWriter(t))).Level(level)
	f, err := fleet.New(fleet.Config{
		Devices:     css,
		Conn:        mqtt.Config{RootCAs: srv.CAPool(), ClientType: "dmctl/test", Backoff: fastBackoff},
		Device:      device.Config{RebootDelay: device.NoRebootDelay},
		ConnectRate: 2000,
		Log:         log,
		OnEvent:     rec.Record,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(patience):
				runErr = fmt.Errorf("fleet Run did not return within %v of its cancel", patience)
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("fleet Run: %v", err)
		}
	})
	select {
	case <-f.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("fleet stopped before every device connected: %v", err)
	case <-time.After(patience):
		t.Fatalf("not every device connected within %v: %+v", patience, f.Stats())
	}
	return &running{f: f, logs: logs, ev: rec, stop: stop}
}

func invoke(t *testing.T, srv *hubtest.Server, id, method, payload string) (int, []byte) {
	t.Helper()
	status, body, err := srv.Hub().Devices().Invoke(within(t, patience), id, method, []byte(payload), 10*time.Second, 10*time.Second)
	if err != nil {
		t.Fatalf("invoke %s on %s: %v", method, id, err)
	}
	return status, body
}

// waitAllSubscribed waits until every device has its method subscription on
// the running hub.
func waitAllSubscribed(t *testing.T, srv *hubtest.Server, css []*sas.ConnectionString) {
	t.Helper()
	for _, cs := range css {
		if err := srv.WaitSubscribed(within(t, patience), cs.DeviceID, iothub.MethodRequestTopic(device.RebootMethod, "1")); err != nil {
			t.Fatalf("device %s never subscribed: %v", cs.DeviceID, err)
		}
	}
}

func rebootTime(t *testing.T, srv *hubtest.Server, id string) (string, bool) {
	t.Helper()
	tw, err := srv.Store().Twin(id)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := tw.Properties.Reported[device.RebootTimeProperty].(string)
	return v, ok
}

func TestFleetMethodsRebootsAndHubRestart(t *testing.T) {
	srv := hubtest.NewServer(t)
	css := devices(t, srv, "f", 50)
	r := start(t, srv, css, zerolog.InfoLevel)

	st := r.f.Stats()
	if st.Devices != 50 || st.EverConnected != 50 {
		t.Fatalf("stats after Ready = %+v, want 50 devices all connected once", st)
	}
	if got := r.f.DeviceIDs(); len(got) != 50 || got[0] != "f000" || got[49] != "f049" {
		t.Fatalf("DeviceIDs = %v", got)
	}

	// Every device answers, each as itself: an unknown method names the
	// method, a reboot payload it cannot use gets 400.
	for _, cs := range css {
		status, body := invoke(t, srv, cs.DeviceID, "nope", `{}`)
		if status != 404 || !bytes.Contains(body, []byte(`"method":"nope"`)) {
			t.Fatalf("%s: nope answered %d %s, want 404 naming the method", cs.DeviceID, status, body)
		}
	}

	// Reboot several devices at once: each answers 200, goes offline,
	// comes back and reports its own rebootTime.
	rebooted := []string{"f003", "f010", "f027", "f048"}
	var wg sync.WaitGroup
	results := make([]string, len(rebooted))
	for i, id := range rebooted {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body, err := srv.Hub().Devices().Invoke(within(t, patience), id, device.RebootMethod, []byte(`{"delaySeconds":0}`), 0, 10*time.Second)
			if err != nil {
				results[i] = err.Error()
				return
			}
			results[i] = fmt.Sprintf("%d %s", status, body)
		}()
	}
	wg.Wait()
	for i, res := range results {
		if !strings.HasPrefix(res, "200 ") {
			t.Fatalf("reboot %s answered %q, want 200", rebooted[i], res)
		}
	}
	seen := map[string]bool{}
	for _, id := range rebooted {
		e := r.ev.WaitFor(t, "rebooted event from "+id, 1, patience, func(e device.Event) bool {
			return e.Kind == device.EventRebooted && e.DeviceID == id
		})
		v, ok := rebootTime(t, srv, id)
		if !ok || v != e.RebootTime {
			t.Fatalf("%s: twin rebootTime %q, the rebooted event says %q", id, v, e.RebootTime)
		}
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			t.Fatalf("%s reported rebootTime %q: %v", id, v, err)
		}
		if seen[v] {
			t.Fatalf("two devices reported the same rebootTime %q", v)
		}
		seen[v] = true
	}
	if n := r.ev.Count(device.EventRebooted); n != len(rebooted) {
		t.Fatalf("%d rebooted events, want %d", n, len(rebooted))
	}
	for _, cs := range css {
		if _, ok := rebootTime(t, srv, cs.DeviceID); ok != contains(rebooted, cs.DeviceID) {
			t.Fatalf("%s: rebootTime reported = %v, want it only for rebooted devices", cs.DeviceID, ok)
		}
	}

	// The hub restarts: every device comes back and answers again.
	srv.Restart(t)
	waitAllSubscribed(t, srv, css)
	for _, cs := range css {
		if status, _ := invoke(t, srv, cs.DeviceID, "nope", `{}`); status != 404 {
			t.Fatalf("%s after hub restart: status %d, want 404", cs.DeviceID, status)
		}
	}

	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if st := r.f.Stats(); st.Stopped != 50 {
		t.Fatalf("stats after stop = %+v, want all 50 stopped", st)
	}
	for _, cs := range css {
		if srv.Connected(cs.DeviceID) {
			if err := srv.WaitConnected(within(t, patience), cs.DeviceID, false); err != nil {
				t.Fatalf("%s still connected after stop: %v", cs.DeviceID, err)
			}
		}
	}

	// Every device disconnected for the shutdown, and said so.
	for _, cs := range css {
		r.ev.WaitFor(t, "shutdown disconnect of "+cs.DeviceID, 1, patience, func(e device.Event) bool {
			return e.Kind == device.EventDisconnected && e.Reason == "shutdown" && e.DeviceID == cs.DeviceID
		})
	}

	// At info level the fleet speaks for its devices in the log: state
	// lines, no per-device connection events, never a key.
	logs := r.logs.String()
	for _, want := range []string{`"event":"fleet"`, `"event":"fleet_ready"`, `"connected":50`, `"event":"fleet_stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	for _, unwanted := range []string{`"event":"connected"`, `"event":"rebooted"`, `"event":"method"`, "SharedAccessKey", css[0].SharedAccessKey} {
		if strings.Contains(logs, unwanted) {
			t.Errorf("info-level logs contain %s", unwanted)
		}
	}
}

func TestFleetEventsPerDevice(t *testing.T) {
	srv := hubtest.NewServer(t)
	css := devices(t, srv, "g", 3)
	r := start(t, srv, css, zerolog.DebugLevel)
	if status, _ := invoke(t, srv, "g001", "nope", `{}`); status != 404 {
		t.Fatalf("status %d, want 404", status)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		what string
		ok   func(device.Event) bool
	}{
		{"connected event from g000", func(e device.Event) bool {
			return e.Kind == device.EventConnected && e.DeviceID == "g000" && e.Target == r.f.Target()
		}},
		{"method event from g001 answering nope with 404", func(e device.Event) bool {
			return e.Kind == device.EventMethodAnswered && e.DeviceID == "g001" && e.Method == "nope" && e.Status == 404
		}},
		{"shutdown disconnect of g002", func(e device.Event) bool {
			return e.Kind == device.EventDisconnected && e.DeviceID == "g002" && e.Reason == "shutdown"
		}},
	} {
		if len(r.ev.Matching(want.ok)) != 1 {
			t.Errorf("want one %s; events: %+v", want.what, r.ev.Events())
		}
	}
	// For people, debug lines name their device.
	if !regexp.MustCompile(`"level":"debug","event":"method",.*"device":"g001"`).MatchString(r.logs.String()) {
		t.Errorf("debug logs do not name the device that answered")
	}
}

func TestFleetStopsOnRefusedCredentials(t *testing.T) {
	srv := hubtest.NewServer(t)
	css := devices(t, srv, "h", 3)
	bad := *css[1]
	bad.SharedAccessKey = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMDE="
	css[1] = &bad
	f, err := fleet.New(fleet.Config{
		Devices: css,
		Conn:    mqtt.Config{RootCAs: srv.CAPool(), Backoff: fastBackoff},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := within(t, patience)
	err = f.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run did not stop on its own within %v", patience)
	}
	var de *fleet.DeviceError
	if !errors.As(err, &de) || de.DeviceID != "h001" || !errors.Is(err, device.ErrUnauthorized) {
		t.Fatalf("Run = %v, want a DeviceError for h001 wrapping ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), bad.SharedAccessKey) {
		t.Fatalf("error shows the key: %v", err)
	}
	select {
	case <-f.Ready():
		t.Fatal("Ready closed although a device never connected")
	default:
	}
}

func TestNewRejects(t *testing.T) {
	cs := func(id string) *sas.ConnectionString {
		c, err := sas.ParseDevice("HostName=localhost:1;DeviceId=" + id + ";SharedAccessKey=c2VjcmV0LWtleQ==")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name string
		cfg  fleet.Config
		want string
	}{
		{"no devices", fleet.Config{}, "no devices"},
		{"duplicate id", fleet.Config{Devices: []*sas.ConnectionString{cs("a"), cs("b"), cs("a")}}, `device 3: identity "a" already used by device 1`},
		{"negative rate", fleet.Config{Devices: []*sas.ConnectionString{cs("a")}, ConnectRate: -1}, "negative"},
		{"nil entry", fleet.Config{Devices: []*sas.ConnectionString{cs("a"), nil}}, "device 2: no connection string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := fleet.New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "c2VjcmV0LWtleQ") {
				t.Fatalf("error shows the key: %v", err)
			}
		})
	}
}

func TestStatsBeforeRun(t *testing.T) {
	c, err := sas.ParseDevice("HostName=localhost:1;DeviceId=a;SharedAccessKey=c2VjcmV0LWtleQ==")
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Config{Devices: []*sas.ConnectionString{c}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(f.Stats())
	want := `{"devices":1,"connected":0,"connecting":1,"retrying":0,"rebooting":0,"stopped":0,"everConnected":0}`
	if string(got) != want {
		t.Fatalf("Stats = %s, want %s", got, want)
	}
	if f.Target() != "localhost:1" || f.Len() != 1 || f.Device("a") == nil || f.Device("b") != nil {
		t.Fatalf("Target %q Len %d", f.Target(), f.Len())
	}
}

// A fleet holds a device and its modules side by side, each named by its
// identity; an x509 identity needs a certificate a fleet does not have.
func TestModulesInAFleet(t *testing.T) {
	var css []*sas.ConnectionString
	for _, s := range []string{
		"HostName=localhost:1;DeviceId=a;SharedAccessKey=c2VjcmV0LWtleQ==",
		"HostName=localhost:1;DeviceId=a;ModuleId=m1;SharedAccessKey=c2VjcmV0LWtleQ==",
		"HostName=localhost:1;DeviceId=a;ModuleId=m2;SharedAccessKey=c2VjcmV0LWtleQ==",
	} {
		c, err := sas.ParseDevice(s)
		if err != nil {
			t.Fatal(err)
		}
		css = append(css, c)
	}
	f, err := fleet.New(fleet.Config{Devices: css})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.DeviceIDs(); len(got) != 3 || got[0] != "a" || got[1] != "a/m1" || got[2] != "a/m2" {
		t.Fatalf("DeviceIDs = %q, want [a a/m1 a/m2]", got)
	}
	if f.Device("a/m2") == nil || f.Device("a/m2") == f.Device("a/m1") {
		t.Fatal("Device does not find each module by its identity")
	}
	if _, err := fleet.New(fleet.Config{Devices: append(css, css[1])}); err == nil || !strings.Contains(err.Error(), `"a/m1" already used by device 2`) {
		t.Fatalf("a module given twice: %v", err)
	}
	x, err := sas.ParseDevice("HostName=localhost:1;DeviceId=a;ModuleId=x;x509=true")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fleet.New(fleet.Config{Devices: []*sas.ConnectionString{x}}); err == nil || !strings.Contains(err.Error(), "a/x is an x509 identity") {
		t.Fatalf("an x509 module without certificate: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestFleetFirmwareCampaignBoundsDownloads(t *testing.T) {
	srv := hubtest.NewServer(t)
	pkg := []byte("firmware 2.0.0")
	var now, peak, served atomic.Int32
	pkgSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		served.Add(1)
		select { // long enough for every slot to fill
		case <-time.After(200 * time.Millisecond):
		case <-r.Context().Done():
		}
		w.Write(pkg)
	}))
	defer pkgSrv.Close()
	pool := srv.CAPool().Clone()
	pool.AddCert(pkgSrv.Certificate())

	const n = 12
	css := devices(t, srv, "fw", n)
	good := sha256.Sum256(pkg)
	for i, cs := range css {
		check := hex.EncodeToString(good[:])
		if i == 0 {
			check = strings.Repeat("0", 64) // this one's package does not match
		}
		desired := map[string]any{iothub.FirmwareProperty: map[string]any{
			iothub.FwVersion: "2.0.0", iothub.FwPackageURI: pkgSrv.URL + "/fw.bin", iothub.FwPackageCheckValue: check}}
		if _, _, err := srv.Store().PatchTwin(cs.DeviceID, iothub.Twin{Properties: iothub.TwinProperties{Desired: desired}}, ""); err != nil {
			t.Fatal(err)
		}
	}
	logs := &syncbuf.Buffer{}
	f, err := fleet.New(fleet.Config{
		Devices:             css,
		Conn:                mqtt.Config{RootCAs: pool, ClientType: "dmctl/test", Backoff: fastBackoff},
		Device:              device.Config{RebootDelay: device.NoRebootDelay, FirmwareApplyDelay: -1 /* none */},
		DownloadConcurrency: 3,
		ConnectRate:         2000,
		Log:                 zerolog.New(io.MultiWriter(logs, zerolog.NewTestWriter(t))).Level(zerolog.InfoLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fleet Run: %v", err)
			}
		case <-time.After(patience):
			t.Errorf("fleet Run did not return within %v of its cancel", patience)
		}
	}()
	deadline := time.Now().Add(patience)
	for st := f.Stats(); st.FwCurrent != n-1 || st.FwFailed != 1; st = f.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("fleet firmware after %v: %+v, want %d current and 1 failed", patience, st, n-1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p, s := peak.Load(), served.Load(); p != 3 || s != n {
		t.Errorf("%d downloads at most at once out of %d, want 3 at once (DownloadConcurrency) out of %d", p, s, n)
	}
	for i, cs := range css {
		want := "2.0.0"
		if i == 0 {
			want = device.DefaultFirmwareVersion
		}
		if v := f.Device(identityOf(cs)).FirmwareVersion(); v != want {
			t.Errorf("%s runs %s, want %s", cs.DeviceID, v, want)
		}
	}
	line := fmt.Sprintf("firmware: %d current, 0 updating, 1 failed", n-1)
	for !strings.Contains(logs.String(), line) {
		if time.Now().After(deadline) {
			t.Fatalf("no state line with %q within %v:\n%s", line, patience, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func identityOf(cs *sas.ConnectionString) string {
	if cs.ModuleID != "" {
		return cs.DeviceID + "/" + cs.ModuleID
	}
	return cs.DeviceID
}

// deviceGoroutines returns the goroutines that run device or device/mqtt
// code, and how many of them are links' readers.
func deviceGoroutines() (all, readers int, sample string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	ours := regexp.MustCompile(`(?m)^github\.com/dmctl/dmctl/device(/mqtt)?\.`)
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !ours.MatchString(g) {
			continue
		}
		all++
		if strings.Contains(g, "device/mqtt.(*link).read(") {
			readers++
		} else if sample == "" {
			sample = g
		}
	}
	return all, readers, sample
}

// waitDeviceGoroutines waits until exactly want goroutines run device code,
// every one of them a link's reader.
func waitDeviceGoroutines(t *testing.T, what string, want int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		all, readers, sample := deviceGoroutines()
		if all == want && readers == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d goroutines run device code (%d of them link readers) %v later, want %d, all readers; one that is not:\n%s",
				what, all, readers, patience, want, sample)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An idle device holds one goroutine, its link's reader: the loop that
// connects it gives its goroutine up while the session is up and takes one
// again when the session ends, here for a reboot (a Suspend and a Resume)
// and for the hub's restart (the link lost).
func TestIdleDeviceHoldsOneGoroutine(t *testing.T) {
	srv := hubtest.NewServer(t)
	const n = 20
	css := devices(t, srv, "idle", n)
	r := start(t, srv, css, zerolog.InfoLevel)
	waitAllSubscribed(t, srv, css)
	waitDeviceGoroutines(t, "connected and idle", n)

	status, body, err := srv.Hub().Devices().Invoke(within(t, patience), "idle007", device.RebootMethod, []byte(`{"delaySeconds":0}`), 0, 10*time.Second)
	if err != nil || status != 200 {
		t.Fatalf("reboot idle007: %d %s %v", status, body, err)
	}
	r.ev.WaitFor(t, "rebooted event from idle007", 1, patience, func(e device.Event) bool {
		return e.Kind == device.EventRebooted && e.DeviceID == "idle007"
	})
	waitDeviceGoroutines(t, "after a reboot", n)

	srv.Restart(t)
	waitAllSubscribed(t, srv, css)
	waitDeviceGoroutines(t, "after the hub restarted", n)
	if status, _ := invoke(t, srv, "idle013", "nope", `{}`); status != 404 {
		t.Fatalf("idle013 after the hub restart: status %d, want 404", status)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	waitDeviceGoroutines(t, "after the fleet stopped", 0)
}
