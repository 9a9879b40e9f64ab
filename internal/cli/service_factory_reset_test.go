package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

// fakeResetDevice is a device that answers factoryReset: with refuse set
// it answers 409; otherwise 200, and then, unless silent is set, it reports
// a new factoryResetTime after a short delay.
type fakeResetDevice struct {
	conn           *mqtt.Conn
	refuse, silent atomic.Bool
	calls          atomic.Int32
	ctx            context.Context
	wg             sync.WaitGroup // the reporting goroutines
}

func (d *fakeResetDevice) HandleMethod(_ context.Context, req device.MethodRequest) (int, []byte) {
	if req.Name != service.FactoryResetMethod {
		return 501, []byte(`{"error":"no such method"}`)
	}
	d.calls.Add(1)
	if d.refuse.Load() {
		return 409, []byte(`{"error":"busy"}`)
	}
	if !d.silent.Load() {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			select {
			case <-time.After(200 * time.Millisecond):
			case <-d.ctx.Done():
				return
			}
			patch := fmt.Sprintf(`{%q:%q}`, service.FactoryResetTimeProperty, time.Now().UTC().Format(time.RFC3339Nano))
			_ = d.conn.Report(d.ctx, []byte(patch))
		}()
	}
	return 200, []byte(`{"message":"resetting"}`)
}

func (d *fakeResetDevice) HandleTwin([]byte)           {}
func (d *fakeResetDevice) HandleDesired(int64, []byte) {}

// runResetDevice connects a fake device for id until the test ends.
func runResetDevice(t *testing.T, h *hubtest.Server, id string) *fakeResetDevice {
	t.Helper()
	cs, err := sas.ParseDevice(h.CreateDevice(t, id))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := mqtt.New(mqtt.Config{ConnectionString: cs, RootCAs: h.CAPool(),
		Backoff: func(int) time.Duration { return 10 * time.Millisecond }, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &fakeResetDevice{conn: conn, ctx: ctx}
	done := make(chan error, 1)
	go func() { done <- conn.Run(ctx, d) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device %s: %v", id, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("device %s did not stop within 10s of its context ending", id)
		}
		d.wg.Wait()
	})
	wctx, wcancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer wcancel()
	if err := h.WaitSubscribed(wctx, id, iothub.MethodRequestTopic(service.FactoryResetMethod, "1")); err != nil {
		t.Fatalf("device %s did not subscribe to methods within 20s: %v", id, err)
	}
	return d
}

// runDmctl runs dmctl in-process against h and returns its exit code and
// output; the connection flags go at the end, or before the query of
// service query.
func runDmctl(t *testing.T, h *hubtest.Server, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	argv := append([]string{"dmctl"}, args...)
	conn := []string{"--connection-string", h.ServiceConnectionString(), "--ca-file", h.CAFile()}
	if len(args) > 1 && args[1] == "query" { // the query comes last
		argv = append(append(argv[:3:3], conn...), args[2:]...)
	} else {
		argv = append(argv, conn...)
	}
	code := Main(ctx, argv, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestFactoryResetDevice(t *testing.T) {
	h := hubtest.NewServer(t)
	d := runResetDevice(t, h, "fr-1")

	code, out, errOut := runDmctl(t, h, "service", "factory-reset", "--device", "fr-1", "--poll-interval", "50ms", "--wait-timeout", "20s")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"Successfully invoked the device to factory-reset.", "Device status: 200", `{"message":"resetting"}`, "Last factory reset time: 20"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}

	// A second reset has the first one's time as its baseline; -o json shows both.
	code, out, errOut = runDmctl(t, h, "service", "factory-reset", "--device", "fr-1", "--poll-interval", "50ms", "-o", "json")
	var res struct {
		Status            int    `json:"status"`
		Confirmed         bool   `json:"confirmed"`
		FactoryResetTime  string `json:"factoryResetTime"`
		PreviousResetTime string `json:"previousFactoryResetTime"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 {
		t.Fatalf("exit %d, %v\nstdout:\n%s\nstderr:\n%s", code, err, out, errOut)
	}
	if !res.Confirmed || res.Status != 200 || res.PreviousResetTime == "" || res.FactoryResetTime <= res.PreviousResetTime {
		t.Errorf("second reset: %+v", res)
	}

	// --no-wait returns after the answer, before any report.
	d.silent.Store(true)
	code, out, _ = runDmctl(t, h, "service", "factory-reset", "--device", "fr-1", "--no-wait")
	if code != 0 || strings.Contains(out, "Last factory reset time") {
		t.Errorf("--no-wait: exit %d, stdout:\n%s", code, out)
	}

	// No new factoryResetTime: exit 8, with what was seen.
	code, out, errOut = runDmctl(t, h, "service", "factory-reset", "--device", "fr-1", "--poll-interval", "50ms", "--wait-timeout", "500ms")
	if code != exitNotConfirmed || !strings.Contains(errOut, "factory reset not confirmed") || !strings.Contains(errOut, "dmctl: hint: ") ||
		!strings.Contains(out, "unchanged since before the reset") {
		t.Errorf("unconfirmed: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// The device refuses: exit 7, nothing waited for.
	d.refuse.Store(true)
	code, out, errOut = runDmctl(t, h, "service", "factory-reset", "--device", "fr-1")
	if code != exitDeviceStatus || !strings.Contains(out, "The device refused to factory-reset.") || !strings.Contains(errOut, "status 409") {
		t.Errorf("refused: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if n := d.calls.Load(); n != 5 {
		t.Errorf("the device was called %d times, want 5 (once per command)", n)
	}

	// Unknown and offline devices: exits 4 and 5.
	if code, _, errOut := runDmctl(t, h, "service", "factory-reset", "--device", "nope"); code != exitDeviceNotFound {
		t.Errorf("unknown device: exit %d, stderr:\n%s", code, errOut)
	}
	h.CreateDevice(t, "offline")
	if code, _, errOut := runDmctl(t, h, "service", "factory-reset", "--device", "offline"); code != exitDeviceOffline {
		t.Errorf("offline device: exit %d, stderr:\n%s", code, errOut)
	}
}

func TestFactoryResetQuery(t *testing.T) {
	h := hubtest.NewServer(t)
	a := runResetDevice(t, h, "fq-1")
	b := runResetDevice(t, h, "fq-2")
	b.refuse.Store(true)

	code, out, errOut := runDmctl(t, h, "service", "factory-reset", "--query", "deviceId IN ['fq-1', 'fq-2']", "--job-id", "reset-1", "--poll-interval", "50ms")
	if code != exitDeviceStatus {
		t.Fatalf("one device refused: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitDeviceStatus, out, errOut)
	}
	for _, want := range []string{"Job reset-1: completed", "fq-1", "fq-2", "409"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "1 of 2 devices not reset") || !strings.Contains(errOut, "job show --job reset-1") {
		t.Errorf("stderr:\n%s", errOut)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Errorf("calls: fq-1 %d, fq-2 %d, want 1 each", a.calls.Load(), b.calls.Load())
	}

	b.refuse.Store(false)
	code, out, errOut = runDmctl(t, h, "service", "factory-reset", "--query", "deviceId IN ['fq-1', 'fq-2']", "--job-id", "reset-2", "--poll-interval", "50ms", "-o", "json")
	var res struct {
		Status  string     `json:"status"`
		Devices []resetRow `json:"devices"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 {
		t.Fatalf("exit %d, %v\nstdout:\n%s\nstderr:\n%s", code, err, out, errOut)
	}
	if res.Status != "completed" || len(res.Devices) != 2 || res.Devices[0].Answer != 200 || res.Devices[1].Answer != 200 {
		t.Errorf("result %+v", res)
	}
}
