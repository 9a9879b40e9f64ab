package cli

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/events"
	"github.com/dmctl/dmctl/hub/hubtest"
)

// sendEvents returns the hub's events of the identity once its Disconnected
// is recorded, waiting at most 10 s.
func sendEvents(t *testing.T, h *hubtest.Server, dev, mod string) []events.Event {
	t.Helper()
	ring := h.Hub().Events()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		changed := ring.Changed()
		all, _ := ring.Since(0, 0)
		var mine []events.Event
		for _, e := range all {
			if e.DeviceID == dev && e.ModuleID == mod {
				mine = append(mine, e)
			}
		}
		if n := len(mine); n > 0 && mine[n-1].Kind == events.Disconnected {
			return mine
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no disconnect of %s/%s recorded within 10s; events so far: %v", dev, mod, mine)
		}
	}
}

func runSend(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Main(ctx, append([]string{"dmctl", "device", "send"}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// The hub records what 'dmctl device send' sent: each message with its
// properties, between the device's connect and its clean disconnect.
func TestDeviceSend(t *testing.T) {
	h := hubtest.NewServer(t)
	cs := h.CreateDevice(t, "sensor-1")
	code, out, errOut := runSend(t, "--connection-string", cs, "--ca-file", h.CAFile(),
		"--message", `{"temperature":21.5}`, "--content-type", "application/json",
		"--property", "level=warning", "--property", "note=a b&c=d", "--count", "2", "--interval", "10ms")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"device sensor-1: message 1 of 2 sent (20 bytes, 3 properties)", "device sensor-1: message 2 of 2 sent"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	var kinds []events.Kind
	wantProps := map[string]string{"$.ct": "application/json", "level": "warning", "note": "a b&c=d"}
	evs := sendEvents(t, h, "sensor-1", "")
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
		if e.Kind == events.Message && (e.Body != `{"temperature":21.5}` || !maps.Equal(e.Properties, wantProps)) {
			t.Errorf("message event %s, want properties %v", e.JSON(), wantProps)
		}
	}
	want := []events.Kind{events.Connected, events.Message, events.Message, events.Disconnected}
	if !slicesEqual(kinds, want) {
		t.Fatalf("hub events %v, want %v", kinds, want)
	}
	if r := evs[len(evs)-1].Reason; r != "client disconnected" {
		t.Errorf("disconnect reason %q, want a clean disconnect", r)
	}
	if strings.Contains(out+errOut, "SharedAccessKey=") {
		t.Error("output holds the connection string")
	}
}

func TestDeviceSendAsModule(t *testing.T) {
	h := hubtest.NewServer(t)
	h.CreateDevice(t, "gw")
	cs := h.CreateModule(t, "gw", "filter")
	code, out, errOut := runSend(t, "--connection-string", cs, "--ca-file", h.CAFile(), "--message", "hi", "--transport", "mqtt-ws")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "module gw/filter: message 1 of 1 sent (2 bytes, 0 properties)") {
		t.Errorf("stdout:\n%s", out)
	}
	evs := sendEvents(t, h, "gw", "filter")
	if len(evs) != 3 || evs[1].Kind != events.Message || evs[1].Body != "hi" {
		t.Fatalf("module events %v", evs)
	}
}

func TestDeviceSendRefused(t *testing.T) {
	h := hubtest.NewServer(t)
	cs := h.CreateDevice(t, "d1")
	wrong := cs[:strings.Index(cs, "SharedAccessKey=")] + "SharedAccessKey=c2VjcmV0LWtleS10aGF0LWlzLXdyb25n"
	code, out, errOut := runSend(t, "--connection-string", wrong, "--ca-file", h.CAFile(), "--message", "x")
	if code != exitAuth {
		t.Fatalf("wrong key: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitAuth, out, errOut)
	}
	if strings.Contains(errOut, "c2VjcmV0LWtleS10aGF0LWlzLXdyb25n") {
		t.Error("the key is in the error output")
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
