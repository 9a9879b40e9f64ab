package mqtt_test

import (
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/sas"
)

// hubMessage waits for the hub's next Message event of the identity after
// seq and returns it.
func hubMessage(t *testing.T, srv *hubtest.Server, dev, mod string, after uint64) events.Event {
	t.Helper()
	ring := srv.Hub().Events()
	deadline := time.NewTimer(patience)
	defer deadline.Stop()
	for {
		changed := ring.Changed()
		evs, _ := ring.Since(after, 0)
		for _, e := range evs {
			after = e.Seq
			if e.Kind == events.Message && e.DeviceID == dev && e.ModuleID == mod {
				return e
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("the hub recorded no message of %s/%s within %v", dev, mod, patience)
		}
	}
}

func TestSendMessage(t *testing.T) {
	srv := hubtest.NewServer(t)
	r := startDevice(t, srv, "d1", mqtt.Config{}, device.Config{})
	ctx := within(t, patience)

	props := map[string]string{"$.ct": "application/json", "$.ce": "utf-8", "room": "kitchen & hall"}
	if err := r.conn.SendMessage(ctx, []byte(`{"temp":21}`), props); err != nil {
		t.Fatal(err)
	}
	// The PUBACK came after the hub recorded it: it is there already.
	evs, _ := srv.Hub().Events().Since(0, 0)
	var got *events.Event
	for i := range evs {
		if evs[i].Kind == events.Message {
			got = &evs[i]
		}
	}
	if got == nil || got.DeviceID != "d1" || got.ModuleID != "" || got.Body != `{"temp":21}` || !maps.Equal(got.Properties, props) {
		t.Fatalf("hub recorded %+v, want body {\"temp\":21} with %v", got, props)
	}

	// Without properties, and several in a row.
	last := srv.Hub().Events().Last()
	for _, body := range []string{"one", "two"} {
		if err := r.conn.SendMessage(ctx, []byte(body), nil); err != nil {
			t.Fatal(err)
		}
	}
	e := hubMessage(t, srv, "d1", "", last)
	if e.Body != "one" || e.Properties != nil {
		t.Fatalf("first plain message %s", e.JSON())
	}
	if e := hubMessage(t, srv, "d1", "", e.Seq); e.Body != "two" {
		t.Fatalf("second plain message %s", e.JSON())
	}
}

func TestSendMessageAsModule(t *testing.T) {
	srv := hubtest.NewServer(t)
	srv.CreateDevice(t, "d1")
	cs, err := sas.ParseDevice(srv.CreateModule(t, "d1", "m1"))
	if err != nil {
		t.Fatal(err)
	}
	r := startDevice(t, srv, "d1/m1", mqtt.Config{ConnectionString: cs}, device.Config{})
	if err := r.conn.SendMessage(within(t, patience), []byte("from the module"), map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	if e := hubMessage(t, srv, "d1", "m1", 0); e.Body != "from the module" || e.Properties["k"] != "v" {
		t.Fatalf("module message %s", e.JSON())
	}
}

func TestSendMessageRefused(t *testing.T) {
	srv := hubtest.NewServer(t)
	cs, err := sas.ParseDevice(srv.CreateDevice(t, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	idle, err := mqtt.New(mqtt.Config{ConnectionString: cs, RootCAs: srv.CAPool()})
	if err != nil {
		t.Fatal(err)
	}
	if err := idle.SendMessage(t.Context(), []byte("x"), nil); !errors.Is(err, mqtt.ErrClosed) {
		t.Fatalf("before Run: %v, want ErrClosed", err)
	}

	r := startDevice(t, srv, "d2", mqtt.Config{}, device.Config{})
	ctx := within(t, patience)
	big := []byte(strings.Repeat("x", mqtt.MaxMessageSize))
	if err := r.conn.SendMessage(ctx, big, map[string]string{"a": "b"}); err == nil || !strings.Contains(err.Error(), "over IoT Hub's limit") {
		t.Fatalf("oversized message: %v", err)
	}
	if err := r.conn.SendMessage(ctx, []byte("x"), map[string]string{"": "v"}); err == nil {
		t.Fatal("a property without a name was sent")
	}
	if err := r.conn.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.conn.SendMessage(ctx, []byte("x"), nil); !errors.Is(err, mqtt.ErrNotConnected) {
		t.Fatalf("suspended: %v, want ErrNotConnected", err)
	}
	if err := r.conn.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// Still connected after the refusals: nothing reached the hub.
	if err := r.conn.SendMessage(ctx, []byte("after"), nil); err != nil {
		t.Fatal(err)
	}
	if e := hubMessage(t, srv, "d2", "", 0); e.Body != "after" {
		t.Fatalf("first message the hub saw from d2: %s", e.JSON())
	}
}
