package faults_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/devicetest"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/faults"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

// toxiproxy leaves a toxic's goroutine blocked on its output when the
// connection it served has closed while the toxic still held data (its
// writer stops reading); that goroutine belongs to the library, every other
// one is checked.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"))
}

// rig is a hub with two proxies in front of it: one for the devices' MQTT
// connections, one for the service's HTTPS calls. The hub serves MQTT and
// HTTPS on one port, so both proxies forward to it.
type rig struct {
	hub *hubtest.Server
	dev *faults.Proxy
	svc *faults.Proxy
}

func newRig(t *testing.T, opts ...hubtest.Option) *rig {
	t.Helper()
	h := hubtest.NewServer(t, opts...)
	r := &rig{hub: h}
	var err error
	if r.dev, err = faults.Start("devices", h.Addr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.dev.Close)
	if r.svc, err = faults.Start("service", h.Addr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.svc.Close)
	return r
}

// deviceCS registers id and returns its connection string through the
// device proxy.
func (r *rig) deviceCS(t *testing.T, id string) *sas.ConnectionString {
	t.Helper()
	cs, err := sas.ParseDevice(r.hub.CreateDevice(t, id))
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = r.dev.HostName()
	return cs
}

// serviceCS is the iothubowner connection string through the service proxy.
func (r *rig) serviceCS(t *testing.T) *sas.ConnectionString {
	t.Helper()
	cs, err := sas.ParseService(r.hub.ServiceConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	cs.HostName = r.svc.HostName()
	return cs
}

// service is a client whose calls go through the service proxy.
func (r *rig) service(t *testing.T) *service.Client {
	t.Helper()
	c, err := service.New(r.serviceCS(t), service.WithRootCAs(r.hub.CAPool()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// runningDevice is a device.Device on its MQTT connection, run by the test
// until it ends.
type runningDevice struct {
	id   string
	conn *mqtt.Conn
	dev  *device.Device
	rec  *devicetest.Recorder
}

// startDevice runs a device through the device proxy with the MQTT
// settings of cfg (ConnectionString, RootCAs and OnEvent are filled in), and
// a "probe" method that answers 200 with its payload.
func (r *rig) startDevice(t *testing.T, id string, cfg mqtt.Config) *runningDevice {
	t.Helper()
	rec := devicetest.NewRecorder()
	cfg.ConnectionString = r.deviceCS(t, id)
	cfg.RootCAs = r.hub.CAPool()
	cfg.OnEvent = rec.Record
	conn, err := mqtt.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := device.New(conn, device.Config{RebootDelay: device.NoRebootDelay, OnEvent: rec.Record})
	d.Handle("probe", func(_ context.Context, payload json.RawMessage) (int, any) {
		return 200, payload
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("device %s: Run: %v", id, err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("device %s: Run did not return within 15 s of its cancel", id)
		}
	})
	rd := &runningDevice{id: id, conn: conn, dev: d, rec: rec}
	rec.Wait(t, device.EventSubscribed, 1, 20*time.Second)
	return rd
}

// probe invokes the probe method with payload {"n":n} and checks the
// device's answer.
func probe(ctx context.Context, t *testing.T, svc *service.Client, id string, n int) {
	t.Helper()
	payload, _ := json.Marshal(map[string]int{"n": n})
	wait := 20
	res, err := svc.InvokeMethod(ctx, id, iothub.MethodRequest{MethodName: "probe", Payload: payload, ResponseTimeoutInSeconds: &wait})
	if err != nil {
		t.Fatalf("invoke probe %d on %s: %v", n, id, err)
	}
	var got struct{ N int }
	if res.Status != 200 || json.Unmarshal(res.Payload, &got) != nil || got.N != n {
		t.Fatalf("probe %d on %s: status %d, payload %s; want 200 and {\"n\":%d}", n, id, res.Status, res.Payload, n)
	}
}

// timeout returns a context that ends after d, cancelled when the test ends.
func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
