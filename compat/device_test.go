package compat

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubtest"
)

// TestOfficialDeviceMQTT runs the official device SDK over MQTT/TLS on 8883.
func TestOfficialDeviceMQTT(t *testing.T) {
	t.Parallel()
	testOfficialDevice(t, "mqtt")
}

// TestOfficialDeviceWebSocket runs the official device SDK over MQTT over
// WebSockets (wss://localhost:443/$iothub/websocket).
func TestOfficialDeviceWebSocket(t *testing.T) {
	t.Parallel()
	testOfficialDevice(t, "mqttws")
}

func testOfficialDevice(t *testing.T, transport string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdk-"+transport)

	// A desired property set before the device connects must reach it in
	// the twin read.
	patchDesired(t, ctx, dev.id, map[string]any{"preset": "before-connect"})

	const report = 41
	p := startProc(t, ctx, "device_sdk.js "+transport, []string{"DEVICE_CONNECTION_STRING=" + dev.nodeCS()},
		nodeArgv("device_sdk.js", "--transport", transport, "--report", fmt.Sprint(report))...)
	ready, err := p.waitEvent(ctx, "ready", nil)
	if err != nil {
		t.Fatalf("the official device never got ready (connect, subscribe, twin GET, reported PATCH): %v", err)
	}

	t.Run("twin read returns desired set before connect", func(t *testing.T) {
		desired, _ := ready["desired"].(map[string]any)
		if desired["preset"] != "before-connect" {
			t.Errorf("twin.properties.desired = %v, want preset=before-connect", ready["desired"])
		}
		if _, ok := desired["$version"]; !ok {
			t.Errorf("twin.properties.desired has no $version: %v", ready["desired"])
		}
	})

	t.Run("hub shows the device connected", func(t *testing.T) {
		if err := waitConnected(ctx, dev.id, true); err != nil {
			t.Fatal(err)
		}
		if err := waitTwinState(t, ctx, dev.id, "Connected"); err != nil {
			t.Error(err)
		}
	})

	t.Run("reported patch reaches the service twin", func(t *testing.T) {
		tw := getTwin(t, ctx, dev.id)
		if got, _ := tw.Properties.Reported["sdkCheck"].(float64); got != report {
			t.Errorf("service twin properties.reported = %v, want sdkCheck=%d", tw.Properties.Reported, report)
		}
	})

	t.Run("telemetry is acknowledged", func(t *testing.T) {
		ev, err := p.waitEvent(ctx, "telemetry", nil)
		if err != nil {
			t.Fatalf("sendEvent never completed: %v", err)
		}
		if ev["ok"] != true {
			t.Errorf("sendEvent failed: %v", ev["error"])
		}
	})

	t.Run("desired patch reaches the device", func(t *testing.T) {
		patchDesired(t, ctx, dev.id, map[string]any{"sdkDesired": map[string]any{"interval": 7, "mode": "fast"}})
		ev, err := p.waitEvent(ctx, "desired", func(m map[string]any) bool {
			patch, _ := m["patch"].(map[string]any)
			_, ok := patch["sdkDesired"]
			return ok
		})
		if err != nil {
			t.Fatalf("no desired notification on the device: %v", err)
		}
		patch := ev["patch"].(map[string]any)
		want := map[string]any{"interval": 7.0, "mode": "fast"}
		if got := patch["sdkDesired"]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("desired notification sdkDesired = %v, want %v", got, want)
		}
		if _, ok := patch["$version"]; !ok {
			t.Errorf("desired notification has no $version: %v", patch)
		}
	})

	t.Run("method with payload", func(t *testing.T) {
		payload := map[string]any{"hello": "world", "n": 3.0, "nested": map[string]any{"ok": true}}
		status, res, body := invokeREST(t, ctx, dev.id, "echo", payload)
		if status != http.StatusOK {
			t.Fatalf("HTTP %d %s", status, body)
		}
		want, _ := json.Marshal(map[string]any{"echo": payload})
		if res.Status != 200 || !jsonEqual(res.Payload, want) {
			t.Errorf("result = status %d payload %s, want 200 %s", res.Status, res.Payload, want)
		}
	})

	t.Run("method without payload reaches the handler as null", func(t *testing.T) {
		status, res, body := invokeREST(t, ctx, dev.id, "echo", nil)
		if status != http.StatusOK {
			t.Fatalf("HTTP %d %s", status, body)
		}
		// An empty MQTT body makes the SDK answer 400 "Invalid request
		// format" without calling the handler (protocol.md §3.5).
		if res.Status != 200 || !jsonEqual(res.Payload, []byte(`{"echo":null}`)) {
			t.Errorf("result = status %d payload %s, want 200 {\"echo\":null}", res.Status, res.Payload)
		}
	})

	t.Run("device error status is passed through with HTTP 200", func(t *testing.T) {
		status, res, body := invokeREST(t, ctx, dev.id, "fail", map[string]any{})
		if status != http.StatusOK {
			t.Fatalf("HTTP %d %s", status, body)
		}
		if res.Status != 500 || !jsonEqual(res.Payload, []byte(`{"reason":"the method asked for a failure"}`)) {
			t.Errorf("result = status %d payload %s, want 500 {\"reason\":...}", res.Status, res.Payload)
		}
	})

	t.Run("official service SDK invokes the official device", func(t *testing.T) {
		r := runProc(t, ctx, "service_sdk.js invoke", []string{"IOTHUB_CONNECTION_STRING=" + env.nodeServiceCS},
			nodeArgv("service_sdk.js", "invoke", "--device", dev.id, "--method", "echo", "--payload", `{"via":"azure-iothub"}`)...)
		var out struct {
			OK      bool            `json:"ok"`
			Status  int             `json:"status"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := r.lastJSON(&out); err != nil || r.code != 0 || !out.OK {
			t.Fatalf("invoke failed (%v):\n%s", err, r)
		}
		if out.Status != 200 || !jsonEqual(out.Payload, []byte(`{"echo":{"via":"azure-iothub"}}`)) {
			t.Errorf("result = status %d payload %s", out.Status, out.Payload)
		}
	})

	t.Run("quit method, clean close, hub shows disconnected", func(t *testing.T) {
		status, res, body := invokeREST(t, ctx, dev.id, "quit", map[string]any{})
		if status != http.StatusOK || res.Status != 200 {
			t.Fatalf("quit: HTTP %d %s", status, body)
		}
		code, err := p.wait(ctx)
		if err != nil || code != 0 {
			t.Fatalf("device script exit code %d (%v), want 0", code, err)
		}
		if _, err := p.waitLine(ctx, "closed", func(l string) bool { return l == `{"ok":true,"event":"closed"}` }); err != nil {
			t.Error(err)
		}
		if err := waitConnected(ctx, dev.id, false); err != nil {
			t.Fatal(err)
		}
		if err := waitTwinState(t, ctx, dev.id, "Disconnected"); err != nil {
			t.Error(err)
		}
		// The device is gone: a method now fails as offline (404103).
		status, _, body = invokeREST(t, ctx, dev.id, "echo", map[string]any{})
		if status != http.StatusNotFound || !containsCode(body, 404103) {
			t.Errorf("method on the closed device: HTTP %d %s, want 404 with 404103", status, body)
		}
	})
}

// containsCode reports whether an IoT Hub error body names code.
func containsCode(body []byte, code int) bool {
	return strings.Contains(string(body), fmt.Sprint(code))
}

// TestOfficialDeviceConnect: which connection strings the hub accepts from
// the official device SDK, and how the SDK reports a refusal.
func TestOfficialDeviceConnect(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev := registerDevice(t, "sdk-connect")
	d, err := env.hub.Store().Device(dev.id)
	if err != nil {
		t.Fatal(err)
	}
	secondary := registeredDevice{id: dev.id, key: d.Authentication.SymmetricKey.SecondaryKey}
	wrongKey := registeredDevice{id: dev.id, key: base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))}
	unknown := registeredDevice{id: newID("sdk-nosuch"), key: dev.key}
	disabled := registerDevice(t, "sdk-disabled")
	setStatus(t, ctx, disabled.id, "disabled")
	cases := []struct {
		name      string
		transport string
		cs        string
		wantErr   bool
	}{
		{"GatewayHostName=localhost:8883", "mqtt", dev.nodeCS() + ";GatewayHostName=localhost:8883", false},
		// A token for another hub's name is refused; a hub serves the names
		// it was started with (see TestOfficialDeviceCloudHostName).
		{"cloud HostName the hub does not serve", "mqtt", "HostName=myhub.azure-devices.net;DeviceId=" + dev.id + ";SharedAccessKey=" + dev.key + ";GatewayHostName=localhost:8883", true},
		{"secondary key", "mqtt", secondary.nodeCS(), false},
		{"wrong key over mqtt", "mqtt", wrongKey.nodeCS(), true},
		{"wrong key over mqttws", "mqttws", wrongKey.nodeCS(), true},
		{"unknown device", "mqtt", unknown.nodeCS(), true},
		{"disabled device", "mqtt", disabled.nodeCS(), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runProc(t, ctx, "device_sdk.js open "+tc.transport, []string{"DEVICE_CONNECTION_STRING=" + tc.cs},
				nodeArgv("device_sdk.js", "--transport", tc.transport, "--mode", "open", "--timeout", "30")...)
			var out struct {
				OK    bool `json:"ok"`
				Error struct {
					Name    string `json:"name"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := r.lastJSON(&out); err != nil {
				t.Fatalf("%v\n%s", err, r)
			}
			if !tc.wantErr {
				if r.code != 0 || !out.OK {
					t.Fatalf("open failed:\n%s", r)
				}
				return
			}
			if r.code == 0 || out.OK {
				t.Fatalf("the SDK connected:\n%s", r)
			}
			t.Logf("open refused: %s %q", out.Error.Name, out.Error.Message)
			if out.Error.Name != "UnauthorizedError" || !strings.Contains(out.Error.Message, "Not authorized") {
				t.Errorf("open failed with %s %q, want UnauthorizedError mentioning \"Not authorized\" (CONNACK 5)", out.Error.Name, out.Error.Message)
			}
		})
	}
	if err := waitConnected(ctx, dev.id, false); err != nil {
		t.Errorf("after the clients closed: %v", err)
	}
}

// TestOfficialDeviceTokenRenewal: the official SDK renews its SAS by
// reconnecting with the new token and does not subscribe again (it counts on
// the clean-session-0 session). Methods and desired notifications must still
// reach it afterwards, as they do on IoT Hub after the SDK's 45-minute renewal.
func TestOfficialDeviceTokenRenewal(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel) // the subtests run in parallel, after this function returns
	for _, transport := range []string{"mqtt", "mqttws"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			dev := registerDevice(t, "sdk-renew-"+transport)
			p := startProc(t, ctx, "device_sdk.js renew "+transport, []string{"DEVICE_CONNECTION_STRING=" + dev.nodeCS()},
				nodeArgv("device_sdk.js", "--transport", transport, "--token-ttl", "6", "--token-margin", "3")...)
			if _, err := p.waitEvent(ctx, "ready", nil); err != nil {
				t.Fatalf("the official device never got ready: %v", err)
			}
			// Renewed and reconnected: the twin read queued behind the
			// reconnect has come back.
			if _, err := p.waitEvent(ctx, "renewed", nil); err != nil {
				t.Fatalf("no twin read after the SAS renewal: %v", err)
			}
			status, res, body := invokeREST(t, ctx, dev.id, "echo", map[string]any{"after": "renewal"})
			if status != http.StatusOK || res.Status != 200 || !jsonEqual(res.Payload, []byte(`{"echo":{"after":"renewal"}}`)) {
				t.Errorf("method after renewal: HTTP %d %s", status, body)
			}
			patchDesired(t, ctx, dev.id, map[string]any{"afterRenewal": true})
			if _, err := p.waitEvent(ctx, "desired", func(m map[string]any) bool {
				patch, _ := m["patch"].(map[string]any)
				return patch["afterRenewal"] == true
			}); err != nil {
				t.Errorf("desired patch after renewal never reached the device: %v", err)
			}
			p.closeStdin()
			if code, err := p.wait(ctx); err != nil || code != 0 {
				t.Errorf("device script exit code %d (%v), want 0", code, err)
			}
		})
	}
}

// TestOfficialDeviceCloudHostName: a hub started with a cloud-style hostname
// accepts the official device SDK keeping that HostName (SAS audience and
// MQTT username) while it connects through GatewayHostName.
func TestOfficialDeviceCloudHostName(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const name = "myhub.azure-devices.net"
	h := hubtest.NewServer(t, hubtest.WithHostname(name))
	id := newID("sdk-cloudname")
	h.CreateDevice(t, id)
	d, err := h.Store().Device(id)
	if err != nil {
		t.Fatal(err)
	}
	cs := fmt.Sprintf("HostName=%s;DeviceId=%s;SharedAccessKey=%s;GatewayHostName=localhost:%d", name, id, d.Authentication.SymmetricKey.PrimaryKey, h.Port())
	p := startProc(t, ctx, "device_sdk.js cloud HostName", []string{"DEVICE_CONNECTION_STRING=" + cs, "NODE_EXTRA_CA_CERTS=" + h.CAFile()},
		nodeArgv("device_sdk.js", "--transport", "mqtt")...)
	if _, err := p.waitEvent(ctx, "ready", nil); err != nil {
		t.Fatalf("the official device never got ready (connect, subscribe, twin GET, reported PATCH): %v", err)
	}
	if !h.Connected(id) {
		t.Errorf("hub does not report %s connected", id)
	}
	p.closeStdin()
	if code, err := p.wait(ctx); err != nil || code != 0 {
		t.Errorf("device script exit code %d (%v), want 0", code, err)
	}
}
