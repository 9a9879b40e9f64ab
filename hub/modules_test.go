package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/hub/internal/testwait"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// A module logs in with its own key, reads and patches its own twin, and
// answers a method invoked on its key.
func TestModuleTwinAndMethod(t *testing.T) {
	for _, transport := range []string{"tls", "ws"} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			hs := hubtest.NewServer(t)
			hs.CreateDevice(t, "d1")
			m := connectDevice(t, hs, hs.CreateModule(t, "d1", "m1"), transport)
			if err := hs.WaitConnected(ctx, "d1/m1", true); err != nil {
				t.Fatal(err)
			}
			if hs.Connected("d1") {
				t.Fatal("the module's connection shows as its device's")
			}
			if mod, err := hs.Store().Module("d1", "m1"); err != nil || mod.ConnectionState != "Connected" {
				t.Fatalf("module identity: %+v, %v", mod, err)
			}

			m.subscribe(t, iothub.TwinResFilter)
			topic, body := m.twinGet(ctx, t, "g1")
			if topic != "$iothub/twin/res/200/?$rid=g1" || !strings.Contains(string(body), `"desired"`) {
				t.Fatalf("twin GET: %s %s", topic, body)
			}
			m.publish(t, iothub.TwinPatchReportedTopic("p1"), 0, `{"fw":"1.2"}`)
			if res := m.next(ctx, t); !strings.HasPrefix(res.Topic(), "$iothub/twin/res/204/?$rid=p1&$version=") {
				t.Fatalf("reported patch answered %s %s", res.Topic(), res.Payload())
			}
			tw, err := hs.Store().Twin("d1/m1")
			if err != nil {
				t.Fatal(err)
			}
			if tw.ModuleID != "m1" || tw.Properties.Reported["fw"] != "1.2" {
				t.Fatalf("module twin: moduleId %q reported %v", tw.ModuleID, tw.Properties.Reported)
			}
			dt, err := hs.Store().Twin("d1")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := dt.Properties.Reported["fw"]; ok {
				t.Fatal("the module's report landed in its device's twin")
			}

			m.serveMethods(t)
			status, resp, err := hs.Hub().Devices().Invoke(ctx, "d1/m1", "ping", []byte(`{"n":1}`), 5*time.Second, 10*time.Second)
			if err != nil || status != 200 {
				t.Fatalf("invoke on the module: %d %s %v", status, resp, err)
			}
			var answer struct {
				Device  string          `json:"device"`
				Request json.RawMessage `json:"request"`
			}
			if err := json.Unmarshal(resp, &answer); err != nil || answer.Device != "d1/m1" || string(answer.Request) != `{"n":1}` {
				t.Fatalf("answer %s (%v)", resp, err)
			}
			// The device itself is not online: the module's answer is not
			// the device's.
			if _, _, err := hs.Hub().Devices().Invoke(ctx, "d1", "ping", nil, 0, time.Second); !errors.Is(err, hubapi.ErrDeviceNotOnline) {
				t.Fatalf("invoke on the device: %v", err)
			}

			// A desired change of the module's twin reaches the module;
			// one of the device's twin does not.
			m.subscribe(t, iothub.DesiredFilter)
			desired := func(v float64) iothub.Twin {
				return iothub.Twin{Properties: iothub.TwinProperties{Desired: map[string]any{"interval": v}}}
			}
			if _, _, err := hs.Store().PatchTwin("d1", desired(1), "*"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := hs.Store().PatchTwin("d1/m1", desired(5), "*"); err != nil {
				t.Fatal(err)
			}
			msg := m.next(ctx, t)
			var patch map[string]any
			if err := json.Unmarshal(msg.Payload(), &patch); err != nil || msg.Topic() != "$iothub/twin/PATCH/properties/desired/?$version=2" || patch["interval"] != 5.0 {
				t.Fatalf("desired patch %s %s", msg.Topic(), msg.Payload())
			}
		})
	}
}

func TestModuleConnectRefused(t *testing.T) {
	hs := hubtest.NewServer(t)
	devCS := hs.CreateDevice(t, "d1")
	modCS := hs.CreateModule(t, "d1", "m1")
	hs.CreateDevice(t, "off")
	offCS := hs.CreateModule(t, "off", "m1")
	if _, err := hs.Store().UpdateDevice(iothub.Device{DeviceID: "off", Status: "disabled"}, "*"); err != nil {
		t.Fatal(err)
	}
	host := hs.HostName()
	exp := time.Now().Add(time.Hour)
	sign := func(cs, resource string) string {
		tok, err := sas.Sign(deviceKey(t, cs), resource, "", exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	user := iothub.Username(host, "d1", "m1", "")
	cases := []struct {
		name, clientID, username, password string
	}{
		{"device key, module audience", "d1/m1", user, sign(devCS, host+"/devices/d1/modules/m1")},
		{"device token", "d1/m1", user, sign(devCS, host+"/devices/d1")},
		{"module key, another module's audience", "d1/m1", user, sign(modCS, host+"/devices/d1/modules/m2")},
		{"unknown module", "d1/m2", iothub.Username(host, "d1", "m2", ""), sign(modCS, host+"/devices/d1/modules/m2")},
		{"module of a disabled device", "off/m1", iothub.Username(host, "off", "m1", ""), sign(offCS, host+"/devices/off/modules/m1")},
		{"module username, device client id", "d1", user, sign(modCS, host+"/devices/d1/modules/m1")},
		{"module key as the device", "d1", iothub.Username(host, "d1", "", ""), sign(modCS, host+"/devices/d1")},
		{"no password", "d1/m1", user, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, rc, err := dial(t, hs, connOpts{clientID: tc.clientID, username: tc.username, password: tc.password})
			if err == nil || rc != 5 {
				t.Fatalf("CONNACK return code %d, want 5 (not authorized); err=%v", rc, err)
			}
		})
	}
	// The module's own token works, with either username form.
	for _, u := range []string{user, host + "/d1/m1/api-version=2016-11-14", host + "/d1/m1/"} {
		d, rc, err := dial(t, hs, connOpts{clientID: "d1/m1", username: u, password: sign(modCS, host+"/devices/d1/modules/m1")})
		if err != nil || rc != 0 {
			t.Fatalf("username %q: rc=%d err=%v", u, rc, err)
		}
		d.c.Disconnect(0)
	}
}

// A module is confined to IoT Hub's topics and its own space; its device
// does not reach into its modules' spaces.
func TestModuleIsolation(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	devCS := hs.CreateDevice(t, "d1")
	csA := hs.CreateModule(t, "d1", "A")
	csB := hs.CreateModule(t, "d1", "B")
	a := connectDevice(t, hs, csA, "tls")
	dev := connectDevice(t, hs, devCS, "tls")

	for _, f := range []string{"devices/d1/modules/B/#", "devices/d1/messages/devicebound/#", "devices/d1/#", "devices/+/modules/A/#", "#"} {
		if code := a.subscribe(t, f); code != 0x80 {
			t.Errorf("module A: subscribe %q granted %#x", f, code)
		}
	}
	for _, f := range []string{iothub.MethodsFilter, iothub.TwinResFilter, iothub.DesiredFilter, "devices/d1/modules/A/inputs/#"} {
		if code := a.subscribe(t, f); code != 0 {
			t.Errorf("module A: subscribe %q refused with %#x", f, code)
		}
	}
	for _, f := range []string{"devices/d1/modules/A/#", "devices/d1/modules/+/inputs/#"} {
		if code := dev.subscribe(t, f); code != 0x80 {
			t.Errorf("device: subscribe %q granted %#x", f, code)
		}
	}
	if code := dev.subscribe(t, "devices/d1/messages/devicebound/#"); code != 0 {
		t.Errorf("device: subscribe to its own space refused with %#x", code)
	}

	// B cannot answer a call made to A.
	b := connectDevice(t, hs, csB, "tls")
	aReq := make(chan string, 1)
	tok := a.c.Subscribe(iothub.MethodsFilter, 0, func(_ pahoClient, m pahoMessage) { aReq <- m.Topic() })
	if !tok.WaitTimeout(testwait.Timeout) || tok.Error() != nil {
		t.Fatalf("subscribe to method requests: %v (or no SUBACK within %v)", tok.Error(), testwait.Timeout)
	}
	type result struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		s, body, err := hs.Hub().Devices().Invoke(ctx, "d1/A", "m", nil, 0, 20*time.Second)
		done <- result{s, body, err}
	}()
	_, rid, _ := iothub.ParseMethodRequestTopic(testwait.Recv(t, aReq, "A's method request"))
	b.publish(t, iothub.MethodResponseTopic(500, rid), 1, `"forged"`)
	dev.publish(t, iothub.MethodResponseTopic(501, rid), 1, `"forged by the device"`)
	a.publish(t, iothub.MethodResponseTopic(200, rid), 1, `"genuine"`)
	if r := testwait.Recv(t, done, "the answer to A's call"); r.err != nil || r.status != 200 || string(r.body) != `"genuine"` {
		t.Fatalf("A's call: status %d body %s err %v", r.status, r.body, r.err)
	}

	// A's telemetry goes to its own topic.
	a.publish(t, "devices/d1/modules/A/messages/events/", 1, "t")

	// Publishing outside the own space drops the connection, as for
	// devices; the others stay.
	for _, tc := range []struct {
		name, cs, key, topic string
	}{
		{"module A into its device's space", csA, "d1/A", "devices/d1/messages/events/"},
		{"module A into module B's space", csA, "d1/A", "devices/d1/modules/B/messages/events/"},
		{"device into module A's space", devCS, "d1", "devices/d1/modules/A/messages/events/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connectDevice(t, hs, tc.cs, "tls")
			c.c.Publish(tc.topic, 1, false, "x")
			select {
			case <-c.lost:
			case <-ctx.Done():
				t.Fatalf("%s stayed connected after publishing to %s", tc.key, tc.topic)
			}
			if !hs.Connected("d1/B") {
				t.Fatal("module B lost its connection")
			}
		})
	}
}

// Deleting or disabling a device disconnects its modules; deleting a
// module disconnects it.
func TestRegistryChangeDisconnectsModules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		body   string
	}{
		{"delete device", http.MethodDelete, ""},
		{"disable device", http.MethodPut, `{"deviceId":"d1","status":"disabled"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			hs := hubtest.NewServer(t)
			hs.CreateDevice(t, "d1")
			hs.CreateDevice(t, "d2")
			m := connectDevice(t, hs, hs.CreateModule(t, "d1", "m1"), "tls")
			other := connectDevice(t, hs, hs.CreateModule(t, "d2", "m1"), "tls")
			// CONNACK comes before the hub records the connection.
			if err := hs.WaitConnected(ctx, "d2/m1", true); err != nil {
				t.Fatal(err)
			}
			restCall(ctx, t, hs, tc.method, "/devices/d1", tc.body)
			select {
			case <-m.lost:
			case <-ctx.Done():
				t.Fatal("the module stayed connected")
			}
			if err := hs.WaitConnected(ctx, "d1/m1", false); err != nil {
				t.Fatal(err)
			}
			if !hs.Connected("d2/m1") {
				t.Fatal("another device's module was disconnected")
			}
			other.c.Disconnect(0)
		})
	}
	t.Run("delete module", func(t *testing.T) {
		ctx := testCtx(t)
		hs := hubtest.NewServer(t)
		hs.CreateDevice(t, "d1")
		m1 := connectDevice(t, hs, hs.CreateModule(t, "d1", "m1"), "tls")
		connectDevice(t, hs, hs.CreateModule(t, "d1", "m2"), "tls")
		// CONNACK comes before the hub records the connection.
		if err := hs.WaitConnected(ctx, "d1/m2", true); err != nil {
			t.Fatal(err)
		}
		if err := hs.Store().DeleteModule("d1", "m1", "*"); err != nil {
			t.Fatal(err)
		}
		hs.Hub().Devices().Revoke("d1/m1")
		select {
		case <-m1.lost:
		case <-ctx.Done():
			t.Fatal("the deleted module stayed connected")
		}
		if !hs.Connected("d1/m2") {
			t.Fatal("the other module was disconnected")
		}
	})
}

// restCall makes an iothubowner REST call and fails the test on an error
// status.
func restCall(ctx context.Context, t *testing.T, hs *hubtest.Server, method, path, body string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "https://"+hs.Addr()+path+"?api-version="+iothub.APIVersion, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", policyToken(t, hs))
	req.Header.Set("If-Match", `"*"`)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s", method, path, resp.Status)
	}
}

// The model id a client announces in its username shows in its twin.
func TestModelIDInUsername(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	devCS := hs.CreateDevice(t, "d1")
	modCS := hs.CreateModule(t, "d1", "m1")
	host := hs.HostName()
	for _, tc := range []struct {
		key, cs, mod, model string
	}{
		{"d1", devCS, "", "dtmi:com:example:Thermostat;1"},
		{"d1/m1", modCS, "m1", "dtmi:com:example:Sensor;2"},
	} {
		user := iothub.WithModelID(iothub.Username(host, "d1", tc.mod, "dmctl-test/1"), tc.model)
		d, rc, err := dial(t, hs, connOpts{clientID: tc.key, username: user, password: token(t, hs, tc.cs, time.Now().Add(time.Hour))})
		if err != nil || rc != 0 {
			t.Fatalf("%s: rc=%d err=%v", tc.key, rc, err)
		}
		if err := hs.WaitConnected(ctx, tc.key, true); err != nil {
			t.Fatal(err)
		}
		tw, err := hs.Store().Twin(tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if tw.ModelID != tc.model {
			t.Fatalf("%s: twin modelId %q, want %q", tc.key, tw.ModelID, tc.model)
		}
		d.c.Disconnect(0)
		if err := hs.WaitConnected(ctx, tc.key, false); err != nil {
			t.Fatal(err)
		}
	}

	// A model id the registry cannot hold does not cost the connection; the
	// twin keeps the one it had.
	long := "dtmi:com:example:" + strings.Repeat("x", 600) + ";1"
	user := iothub.WithModelID(iothub.Username(host, "d1", "", ""), long)
	d, rc, err := dial(t, hs, connOpts{clientID: "d1", username: user, password: token(t, hs, devCS, time.Now().Add(time.Hour))})
	if err != nil || rc != 0 {
		t.Fatalf("long model id: rc=%d err=%v", rc, err)
	}
	if err := hs.WaitConnected(ctx, "d1", true); err != nil {
		t.Fatal(err)
	}
	if tw, err := hs.Store().Twin("d1"); err != nil || tw.ModelID != "dtmi:com:example:Thermostat;1" {
		t.Fatalf("twin modelId %q after a too long one (%v)", tw.ModelID, err)
	}
	d.c.Disconnect(0)
}
