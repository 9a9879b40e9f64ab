package hub_test

import (
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
)

// eventWatch reads the hub's events of one identity in order, as the
// dashboard's feed of a device page shows them.
type eventWatch struct {
	ring     *events.Ring
	dev, mod string
	after    uint64
}

func watchEvents(hs *hubtest.Server, dev, mod string) *eventWatch {
	return &eventWatch{ring: hs.Hub().Events(), dev: dev, mod: mod}
}

// next returns the identity's next event, failing unless it is of kind
// want or none comes within 10 s.
func (w *eventWatch) next(t *testing.T, want events.Kind) events.Event {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		changed := w.ring.Changed()
		evs, lost := w.ring.Since(w.after, 0)
		if lost > 0 {
			t.Fatalf("%d events lost", lost)
		}
		for _, e := range evs {
			w.after = e.Seq
			if e.DeviceID != w.dev || e.ModuleID != w.mod {
				continue
			}
			if e.Kind != want {
				t.Fatalf("next event of %s/%s is %s, want %s", w.dev, w.mod, e.JSON(), want)
			}
			return e
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s event of %s/%s within 10s", want, w.dev, w.mod)
		}
	}
}

// none fails if the identity has an event not read yet.
func (w *eventWatch) none(t *testing.T) {
	t.Helper()
	evs, _ := w.ring.Since(w.after, 0)
	for _, e := range evs {
		if e.DeviceID == w.dev && e.ModuleID == w.mod {
			t.Fatalf("unexpected event %s", e.JSON())
		}
	}
}

func TestEventsMethodCall(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	d := connectDevice(t, hs, hs.CreateDevice(t, "d1"), "tls")
	w := watchEvents(hs, "d1", "")
	w.next(t, events.Connected)
	d.serveMethods(t)

	status, body, err := hs.Hub().Devices().Invoke(ctx, "d1", "reboot", []byte(`{"delay":1}`), 0, 10*time.Second)
	if err != nil || status != 200 {
		t.Fatalf("invoke: %d %v", status, err)
	}
	if e := w.next(t, events.MethodCall); e.Method != "reboot" || e.Body != `{"delay":1}` {
		t.Fatalf("method call event %s", e.JSON())
	}
	if e := w.next(t, events.MethodAnswer); e.Method != "reboot" || e.Status != 200 || e.Body != string(body) || e.Error != "" {
		t.Fatalf("method answer event %s, device answered %s", e.JSON(), body)
	}
	w.none(t)
}

func TestEventsMethodWithoutAnswer(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	w := watchEvents(hs, "d1", "")

	// Not online: no request reaches the device, the answer says why.
	if _, _, err := hs.Hub().Devices().Invoke(ctx, "d1", "ping", nil, 0, time.Second); err == nil {
		t.Fatal("offline device answered")
	}
	if e := w.next(t, events.MethodAnswer); e.Method != "ping" || e.Error != "device not online" || e.Status != 0 {
		t.Fatalf("offline answer event %s", e.JSON())
	}

	// Online but silent: the call times out.
	d := connectDevice(t, hs, cs, "tls")
	w.next(t, events.Connected)
	d.subscribe(t, iothub.MethodsFilter)
	if _, _, err := hs.Hub().Devices().Invoke(ctx, "d1", "ping", []byte(`"x"`), 0, 100*time.Millisecond); err == nil {
		t.Fatal("silent device answered")
	}
	if e := w.next(t, events.MethodCall); e.Body != `"x"` {
		t.Fatalf("method call event %s", e.JSON())
	}
	if e := w.next(t, events.MethodAnswer); e.Error != "timeout" {
		t.Fatalf("timed-out answer event %s", e.JSON())
	}
	w.none(t)
}

func TestEventsReportedPatch(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	d := connectDevice(t, hs, hs.CreateDevice(t, "d1"), "tls")
	w := watchEvents(hs, "d1", "")
	w.next(t, events.Connected)
	d.subscribe(t, iothub.TwinResFilter)
	d.publish(t, iothub.TwinPatchReportedTopic("7"), 0, ` {"temp":21.5} `)
	m := d.next(ctx, t)
	status, _, version, ok := iothub.ParseTwinResponseTopic(m.Topic())
	if !ok || status != 204 || version == 0 {
		t.Fatalf("twin response %q", m.Topic())
	}
	if e := w.next(t, events.ReportedPatch); e.Body != `{"temp":21.5}` || e.Version != version {
		t.Fatalf("reported patch event %s, want version %d", e.JSON(), version)
	}
	// A refused patch is no event.
	d.publish(t, iothub.TwinPatchReportedTopic("8"), 0, `[1]`)
	if m := d.next(ctx, t); !strings.Contains(m.Topic(), "/400/") {
		t.Fatalf("bad patch answered %q", m.Topic())
	}
	w.none(t)
}

func TestEventsDesiredPatchOfDisconnectedDevice(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	hs.CreateDevice(t, "d1")
	w := watchEvents(hs, "d1", "")
	restCall(ctx, t, hs, http.MethodPatch, "/twins/d1", `{"properties":{"desired":{"interval":30}}}`)
	e := w.next(t, events.DesiredPatch)
	twin, err := hs.Store().Twin("d1")
	if err != nil {
		t.Fatal(err)
	}
	version := fmt.Sprint(twin.Properties.Desired["$version"])
	if !strings.Contains(e.Body, `"interval":30`) || e.Version == 0 || strconv.FormatInt(e.Version, 10) != version {
		t.Fatalf("desired patch event %s, twin desired $version %v", e.JSON(), twin.Properties.Desired["$version"])
	}
}

func TestEventsMessage(t *testing.T) {
	hs := hubtest.NewServer(t)
	d := connectDevice(t, hs, hs.CreateDevice(t, "d1"), "tls")
	w := watchEvents(hs, "d1", "")
	w.next(t, events.Connected)

	d.publish(t, "devices/d1/messages/events/$.ct=application%2Fjson&$.ce=utf-8&note=hello%20world%26more", 1, `{"t":21}`)
	e := w.next(t, events.Message)
	want := map[string]string{"$.ct": "application/json", "$.ce": "utf-8", "note": "hello world&more"}
	if e.Body != `{"t":21}` || e.Bytes != 8 || !maps.Equal(e.Properties, want) {
		t.Fatalf("message event %s, want properties %v", e.JSON(), want)
	}
	// A malformed pair costs only itself.
	d.publish(t, "devices/d1/messages/events/ok=1&bad=%zz", 0, "plain text")
	e = w.next(t, events.Message)
	if e.Body != "plain text" || !maps.Equal(e.Properties, map[string]string{"ok": "1"}) {
		t.Fatalf("message with a malformed property: %s", e.JSON())
	}
	// No properties at all.
	d.publish(t, "devices/d1/messages/events/", 1, "x")
	if e := w.next(t, events.Message); e.Body != "x" || e.Properties != nil {
		t.Fatalf("message without properties: %s", e.JSON())
	}
}

func TestEventsOfModule(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	hs.CreateDevice(t, "d1")
	m := connectDevice(t, hs, hs.CreateModule(t, "d1", "m1"), "tls")
	w := watchEvents(hs, "d1", "m1")
	w.next(t, events.Connected)
	m.publish(t, "devices/d1/modules/m1/messages/events/k=v", 1, "hi")
	if e := w.next(t, events.Message); e.Body != "hi" || e.Properties["k"] != "v" {
		t.Fatalf("module message event %s", e.JSON())
	}
	m.serveMethods(t)
	if _, _, err := hs.Hub().Devices().Invoke(ctx, "d1/m1", "ping", nil, 0, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	w.next(t, events.MethodCall)
	w.next(t, events.MethodAnswer)
	restCall(ctx, t, hs, http.MethodPatch, "/twins/d1/modules/m1", `{"properties":{"desired":{"rate":5}}}`)
	if e := w.next(t, events.DesiredPatch); !strings.Contains(e.Body, `"rate":5`) || e.Version == 0 {
		t.Fatalf("module desired patch event %s", e.JSON())
	}
	m.c.Disconnect(250)
	if e := w.next(t, events.Disconnected); e.Reason != "client disconnected" {
		t.Fatalf("module disconnect event %s", e.JSON())
	}
	// None of it is the device's own.
	watchEvents(hs, "d1", "").none(t)
}

func TestEventsDisconnectReasons(t *testing.T) {
	t.Run("client disconnect", func(t *testing.T) {
		hs := hubtest.NewServer(t)
		d := connectDevice(t, hs, hs.CreateDevice(t, "d1"), "tls")
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		d.c.Disconnect(250)
		if e := w.next(t, events.Disconnected); e.Reason != "client disconnected" {
			t.Fatalf("disconnect event %s", e.JSON())
		}
	})
	t.Run("dropped connection", func(t *testing.T) {
		hs := hubtest.NewServer(t)
		c := rawConnect(t, hs, sasIdentity(t, hs.CreateDevice(t, "d1")))
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		_ = c.c.Close()
		if e := w.next(t, events.Disconnected); !strings.HasPrefix(e.Reason, "connection lost") {
			t.Fatalf("disconnect event %s", e.JSON())
		}
	})
	t.Run("takeover", func(t *testing.T) {
		ctx := testCtx(t)
		hs := hubtest.NewServer(t)
		cs := hs.CreateDevice(t, "d1")
		first := connectDevice(t, hs, cs, "tls")
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		second := connectDevice(t, hs, cs, "tls")
		select {
		case <-first.lost:
		case <-ctx.Done():
			t.Fatal("the old connection was not dropped")
		}
		// The old connection's end, then the new one: the device ends
		// up shown connected.
		if e := w.next(t, events.Disconnected); e.Reason != "replaced by a new connection" {
			t.Fatalf("disconnect event of the replaced connection %s", e.JSON())
		}
		w.next(t, events.Connected)
		if !hs.Connected("d1") {
			t.Fatal("device not connected after the takeover")
		}
		second.c.Disconnect(250)
		if e := w.next(t, events.Disconnected); e.Reason != "client disconnected" {
			t.Fatalf("disconnect event %s", e.JSON())
		}
		w.none(t)
	})
	t.Run("revoked", func(t *testing.T) {
		ctx := testCtx(t)
		hs := hubtest.NewServer(t)
		connectDevice(t, hs, hs.CreateDevice(t, "d1"), "tls")
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		restCall(ctx, t, hs, http.MethodDelete, "/devices/d1", "")
		if e := w.next(t, events.Disconnected); e.Reason != "revoked (device deleted)" {
			t.Fatalf("disconnect event %s", e.JSON())
		}
	})
	t.Run("forbidden publish", func(t *testing.T) {
		hs := hubtest.NewServer(t)
		c := rawConnect(t, hs, sasIdentity(t, hs.CreateDevice(t, "d1")))
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		c.send(t, publishPacket(1, 1, "devices/d2/messages/events/", []byte("x")))
		if e := w.next(t, events.Disconnected); e.Reason != "protocol violation: publish to a forbidden topic" {
			t.Fatalf("disconnect event %s", e.JSON())
		}
	})
	t.Run("credential expired", func(t *testing.T) {
		hs := hubtest.NewServer(t)
		cs := hs.CreateDevice(t, "d1")
		id := sasIdentity(t, cs)
		id.password = token(t, hs, cs, time.Now().Add(2*time.Second))
		rawConnect(t, hs, id)
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		if e := w.next(t, events.Disconnected); e.Reason != "credential expired" {
			t.Fatalf("disconnect event %s", e.JSON())
		}
	})
	t.Run("hub stopping", func(t *testing.T) {
		hs := hubtest.NewServer(t)
		rawConnect(t, hs, sasIdentity(t, hs.CreateDevice(t, "d1")))
		w := watchEvents(hs, "d1", "")
		w.next(t, events.Connected)
		if err := hs.Hub().Close(); err != nil {
			t.Fatal(err)
		}
		// The ring is closed by now; what it holds is final.
		if e := w.next(t, events.Disconnected); e.Reason != "hub stopping" {
			t.Fatalf("disconnect event %s", e.JSON())
		}
	})
}

// Events carry no credential: neither the SAS token a device logged in
// with nor its key.
func TestEventsCarryNoSecrets(t *testing.T) {
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	w := watchEvents(hs, "d1", "")
	w.next(t, events.Connected)
	d.c.Disconnect(250)
	w.next(t, events.Disconnected)
	key := deviceKey(t, cs)
	evs, _ := hs.Hub().Events().Since(0, 0)
	for _, e := range evs {
		if j := string(e.JSON()); strings.Contains(j, key) || strings.Contains(j, "SharedAccessSignature") {
			t.Fatalf("event %s holds a credential", j)
		}
	}
}
