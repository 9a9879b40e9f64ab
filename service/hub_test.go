package service_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/internal/servicetest"
)

// runDevice runs dmctl's simulated device until the test ends.
func runDevice(t *testing.T, h *hubtest.Server, devCS string, delay time.Duration) {
	t.Helper()
	cs, err := sas.ParseDevice(devCS)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := mqtt.New(mqtt.Config{
		ConnectionString: cs,
		RootCAs:          h.CAPool(),
		Backoff:          func(int) time.Duration { return 10 * time.Millisecond },
		Log:              zerolog.New(zerolog.NewTestWriter(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	dev := device.New(conn, device.Config{RebootDelay: delay})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("device: %v", err)
			}
		case <-time.After(servicetest.WaitTimeout):
			t.Errorf("device %s did not stop within %v of its context ending", cs.DeviceID, servicetest.WaitTimeout)
		}
	})
	servicetest.WaitMethods(t, h, cs.DeviceID)
}

func TestHubRebootWithDevice(t *testing.T) {
	h, c := servicetest.HubClient(t)
	runDevice(t, h, h.CreateDevice(t, "dev-1"), 300*time.Millisecond)
	ctx := servicetest.Context(t)

	var stages []service.RebootStage
	res, err := c.Reboot(ctx, "dev-1", service.RebootOptions{
		PollInterval: 50 * time.Millisecond, WaitTimeout: 30 * time.Second,
		Progress: func(p service.RebootProgress) {
			if p.Stage != service.StagePolled {
				stages = append(stages, p.Stage)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Confirmed || res.Status != 200 || !res.HasRebootTime || res.RebootTime == res.PreviousRebootTime {
		t.Fatalf("result %+v", res)
	}
	if _, err := time.Parse(time.RFC3339Nano, res.RebootTime); err != nil {
		t.Errorf("rebootTime %q: %v", res.RebootTime, err)
	}
	if fmt.Sprint(stages) != "[baseline invoked confirmed]" {
		t.Errorf("stages %v", stages)
	}

	// A second reboot has the first one's time as its baseline.
	servicetest.WaitMethods(t, h, "dev-1")
	res2, err := c.Reboot(ctx, "dev-1", service.RebootOptions{PollInterval: 50 * time.Millisecond, WaitTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !res2.HasPreviousTime || res2.PreviousRebootTime != res.RebootTime || !res2.Confirmed || res2.RebootTime == res.RebootTime {
		t.Errorf("second reboot %+v (first %q)", res2, res.RebootTime)
	}

	// The device answers an unknown method with an error status.
	servicetest.WaitMethods(t, h, "dev-1")
	mr, err := c.InvokeMethod(ctx, "dev-1", iothub.MethodRequest{MethodName: "noSuchMethod", Payload: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if mr.Status < 400 {
		t.Errorf("unknown method answered %d %s", mr.Status, mr.Payload)
	}

	// A bad reboot payload is refused by the device: DeviceStatusError, no wait.
	rr, err := c.Reboot(ctx, "dev-1", service.RebootOptions{Payload: json.RawMessage(`{"delaySeconds":-1}`)})
	var dse *service.DeviceStatusError
	if !errors.As(err, &dse) || dse.Status != 400 || rr == nil || rr.Polls != 0 {
		t.Errorf("bad payload: %+v %v", rr, err)
	}
}

func TestHubRebootNotConfirmed(t *testing.T) {
	h, c := servicetest.HubClient(t)
	runDevice(t, h, h.CreateDevice(t, "slow"), 0)
	// The device stays offline for an hour; the wait gives up first.
	res, err := c.Reboot(servicetest.Context(t), "slow", service.RebootOptions{
		Payload: json.RawMessage(`{"delaySeconds":3600}`), PollInterval: 20 * time.Millisecond, WaitTimeout: 300 * time.Millisecond,
	})
	if !errors.Is(err, service.ErrRebootNotConfirmed) {
		t.Fatalf("err = %v", err)
	}
	if res == nil || res.Confirmed || res.Status != 200 || res.Polls < 1 {
		t.Errorf("result %+v", res)
	}
}

// rawDevice connects a plain paho client as device id.
func rawDevice(t *testing.T, h *hubtest.Server, id, devCS string) paho.Client {
	t.Helper()
	cs, err := sas.ParseDevice(devCS)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cs.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	opts := paho.NewClientOptions().
		AddBroker("tls://" + h.Addr()).
		SetClientID(id).
		SetUsername(iothub.Username(cs.HostName, id, "", "test")).
		SetPassword(tok).
		SetTLSConfig(&tls.Config{RootCAs: h.CAPool(), ServerName: "localhost"}).
		SetAutoReconnect(false).
		SetOrderMatters(false)
	cl := paho.NewClient(opts)
	if tk := cl.Connect(); !tk.WaitTimeout(30*time.Second) || tk.Error() != nil {
		t.Fatalf("raw device connect: %v", tk.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl
}

func subscribe(t *testing.T, cl paho.Client, filter string, cb paho.MessageHandler) {
	t.Helper()
	if tk := cl.Subscribe(filter, 0, cb); !tk.WaitTimeout(30*time.Second) || tk.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tk.Error())
	}
}

// TestHubRebootSeedStyleDevice: a device that reboots before answering (as
// the seed's Python app does) has reported the new rebootTime by the time
// the method returns; the first poll confirms it.
func TestHubRebootSeedStyleDevice(t *testing.T) {
	h, c := servicetest.HubClient(t)
	cl := rawDevice(t, h, "seed", h.CreateDevice(t, "seed"))
	twinRes := make(chan int, 4)
	subscribe(t, cl, iothub.TwinResFilter, func(_ paho.Client, m paho.Message) {
		if status, _, _, ok := iothub.ParseTwinResponseTopic(m.Topic()); ok {
			twinRes <- status
		}
	})
	var mu sync.Mutex
	var reported string
	var answering sync.WaitGroup // the method answers; each wait in one is bounded
	t.Cleanup(answering.Wait)
	publish := func(topic string, payload []byte) {
		if tk := cl.Publish(topic, 0, false, payload); !tk.WaitTimeout(servicetest.WaitTimeout) || tk.Error() != nil {
			t.Errorf("publish %s: not sent within %v: %v", topic, servicetest.WaitTimeout, tk.Error())
		}
	}
	subscribe(t, cl, iothub.MethodsFilter, func(cl paho.Client, m paho.Message) {
		name, rid, ok := iothub.ParseMethodRequestTopic(m.Topic())
		if !ok || name != service.RebootMethod {
			return
		}
		answering.Add(1)
		go func() {
			defer answering.Done()
			now := time.Now().UTC().Format(time.RFC3339Nano)
			patch, _ := json.Marshal(map[string]string{"rebootTime": now})
			publish(iothub.TwinPatchReportedTopic("r1"), patch)
			select {
			case st := <-twinRes:
				if st >= 300 {
					t.Errorf("reported patch answered %d", st)
				}
			case <-time.After(servicetest.WaitTimeout):
				t.Errorf("no answer to the reported patch within %v", servicetest.WaitTimeout)
			}
			mu.Lock()
			reported = now
			mu.Unlock()
			publish(iothub.MethodResponseTopic(200, rid), []byte(`{"result":"rebooted"}`))
		}()
	})
	servicetest.WaitMethods(t, h, "seed")

	res, err := c.Reboot(servicetest.Context(t), "seed", service.RebootOptions{PollInterval: time.Hour, WaitTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !res.Confirmed || res.Polls != 1 || res.RebootTime != reported || res.HasPreviousTime {
		t.Errorf("result %+v, device reported %q", res, reported)
	}
	if string(res.Payload) != `{"result":"rebooted"}` {
		t.Errorf("payload %s", res.Payload)
	}
}

func TestHubMethodErrors(t *testing.T) {
	h, c := servicetest.HubClient(t)
	ctx := servicetest.Context(t)
	h.CreateDevice(t, "offline")
	cl := rawDevice(t, h, "mute", h.CreateDevice(t, "mute"))
	subscribe(t, cl, iothub.MethodsFilter, func(paho.Client, paho.Message) {}) // never answers
	servicetest.WaitMethods(t, h, "mute")

	five := 5 // the shortest response timeout IoT Hub accepts
	_, err := c.InvokeMethod(ctx, "mute", iothub.MethodRequest{MethodName: "m", ResponseTimeoutInSeconds: &five})
	if !errors.Is(err, service.ErrMethodTimeout) {
		t.Errorf("silent device: %v, want ErrMethodTimeout", err)
	}
	_, err = c.InvokeMethod(ctx, "offline", iothub.MethodRequest{MethodName: "m"})
	if !errors.Is(err, service.ErrDeviceNotOnline) || errors.Is(err, service.ErrDeviceNotFound) {
		t.Errorf("offline device: %v, want ErrDeviceNotOnline", err)
	}
	_, err = c.InvokeMethod(ctx, "nobody", iothub.MethodRequest{MethodName: "m"})
	if !errors.Is(err, service.ErrDeviceNotFound) {
		t.Errorf("unknown device: %v, want ErrDeviceNotFound", err)
	}
	_, err = c.Reboot(ctx, "nobody", service.RebootOptions{})
	if !errors.Is(err, service.ErrDeviceNotFound) {
		t.Errorf("reboot unknown device: %v, want ErrDeviceNotFound", err)
	}

	// A wrong key is refused with 401.
	good, _ := sas.ParseService(h.ServiceConnectionString())
	bad := *good
	bad.SharedAccessKey = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkhIQ=="
	bc, err := service.New(&bad, service.WithRootCAs(h.CAPool()))
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	_, err = bc.Twin(ctx, "offline")
	if !errors.Is(err, service.ErrUnauthorized) {
		t.Errorf("wrong key: %v, want ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), bad.SharedAccessKey) {
		t.Error("error leaks the key")
	}
}

func TestHubRegistryTwinQuery(t *testing.T) {
	h, c := servicetest.HubClient(t)
	ctx := servicetest.Context(t)
	for _, id := range []string{"q1", "q2", "q3"} {
		d, err := c.CreateDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Authentication == nil || d.Authentication.SymmetricKey == nil || d.Authentication.SymmetricKey.PrimaryKey == "" {
			t.Fatalf("created device without keys: %+v", d)
		}
		cs, err := c.DeviceConnectionString(d, service.PrimaryKey)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sas.ParseDevice(cs); err != nil || !strings.HasPrefix(cs, "HostName="+h.HostName()+";DeviceId="+id+";") {
			t.Errorf("connection string %v: %v", strings.Split(cs, ";")[:2], err)
		}
	}
	if _, err := c.CreateDevice(ctx, "q1"); !errors.Is(err, service.ErrDeviceAlreadyExists) {
		t.Errorf("duplicate create: %v, want ErrDeviceAlreadyExists", err)
	}
	d, err := c.Device(ctx, "q2")
	if err != nil || d.DeviceID != "q2" {
		t.Fatalf("get: %+v %v", d, err)
	}
	ds, err := c.Devices(ctx, 0)
	if err != nil || len(ds) != 3 {
		t.Fatalf("list: %d %v", len(ds), err)
	}

	// Twin update with etags.
	tw, err := c.Twin(ctx, "q1")
	if err != nil {
		t.Fatal(err)
	}
	up, err := c.UpdateTwin(ctx, "q1", service.TwinPatch{Tags: json.RawMessage(`{"site":"lab"}`), Desired: json.RawMessage(`{"interval":5}`)}, tw.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if up.Tags["site"] != "lab" || fmt.Sprint(up.Properties.Desired["interval"]) != "5" {
		t.Errorf("updated twin tags %v desired %v", up.Tags, up.Properties.Desired)
	}
	_, err = c.UpdateTwin(ctx, "q1", service.TwinPatch{Tags: json.RawMessage(`{"site":"x"}`)}, tw.ETag)
	if !errors.Is(err, service.ErrPreconditionFailed) {
		t.Errorf("stale etag: %v, want ErrPreconditionFailed", err)
	}

	// Query with one item per page walks every page.
	var ids []string
	err = c.Query(ctx, "SELECT * FROM devices", 1, func(raw json.RawMessage) error {
		var tw iothub.Twin
		if err := json.Unmarshal(raw, &tw); err != nil {
			return err
		}
		ids = append(ids, tw.DeviceID)
		return nil
	})
	if err != nil || strings.Join(ids, ",") != "q1,q2,q3" {
		t.Errorf("query: %v %v", ids, err)
	}
	var rows []string
	err = c.Query(ctx, "SELECT deviceId FROM devices WHERE tags.site = 'lab'", 0, func(raw json.RawMessage) error {
		rows = append(rows, string(raw))
		return nil
	})
	if err != nil || len(rows) != 1 || !strings.Contains(rows[0], `"q1"`) {
		t.Errorf("projection: %v %v", rows, err)
	}

	if err := c.DeleteDevice(ctx, "q3", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Device(ctx, "q3"); !errors.Is(err, service.ErrDeviceNotFound) {
		t.Errorf("deleted device: %v", err)
	}
}

// TestHubRestartDuringWait: the hub restarts right after the device has
// answered, so the client's connections to the old hub are gone and the
// device reconnects to the new one; its report still confirms the reboot.
func TestHubRestartDuringWait(t *testing.T) {
	h, c := servicetest.HubClient(t)
	runDevice(t, h, h.CreateDevice(t, "rs"), 500*time.Millisecond)
	var pollErrs int
	res, err := c.Reboot(servicetest.Context(t), "rs", service.RebootOptions{
		PollInterval: 50 * time.Millisecond, WaitTimeout: 60 * time.Second,
		Progress: func(p service.RebootProgress) {
			switch {
			case p.Stage == service.StageInvoked:
				h.Restart(t)
			case p.Stage == service.StagePolled && p.Err != nil:
				pollErrs++
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Confirmed {
		t.Errorf("result %+v", res)
	}
	t.Logf("confirmed after %d polls, %d failed", res.Polls, pollErrs)
}
