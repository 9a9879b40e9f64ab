package hub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConnectUsernameForms(t *testing.T) {
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	host := hs.HostName()
	key := deviceKey(t, cs)
	exp := time.Now().Add(time.Hour)
	sign := func(resource, keyName string) string {
		tok, err := sas.Sign(key, resource, keyName, exp)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	cases := []struct {
		name, username, password string
	}{
		{"docs current", host + "/d1/?api-version=2021-04-12", sign(host+"/devices/d1", "")},
		{"docs 2017 without ?", host + "/d1/api-version=2016-11-14", sign(host+"/devices/d1", "")},
		{"node sdk", host + "/d1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4%20(node%20v20.20.2%3B%20Debian%2012%3B%20x64)", sign(host+"/devices/d1", "")},
		{"python pnp", host + "/d1/?api-version=2020-09-30&DeviceClientType=py&model-id=dtmi:x;1", sign(host+"/devices/d1", "")},
		{"amenzhinsky, hub-level audience", host + "/d1/api-version=2020-09-30", sign(host, "")},
		{"bare", host + "/d1/", sign(host+"/devices/d1", "")},
		{"hostname without port", "localhost/d1/?api-version=2021-04-12", sign("localhost/devices/d1", "")},
		{"loopback address", "127.0.0.1/d1/?api-version=2021-04-12", sign("127.0.0.1/devices/d1", "")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, rc, err := dial(t, hs, connOpts{clientID: "d1", username: tc.username, password: tc.password})
			if err != nil || rc != 0 {
				t.Fatalf("rc=%d err=%v", rc, err)
			}
			d.c.Disconnect(0)
		})
	}
}

func TestConnectRefused(t *testing.T) {
	hs := hubtest.NewServer(t)
	cs1 := hs.CreateDevice(t, "d1")
	cs2 := hs.CreateDevice(t, "d2")
	csOff := hs.CreateDevice(t, "off")
	if _, err := hs.Store().UpdateDevice(iothub.Device{DeviceID: "off", Status: "disabled"}, "*"); err != nil {
		t.Fatal(err)
	}
	host := hs.HostName()
	user := func(id string) string { return iothub.Username(host, id, "", "") }
	wrongKey, err := sas.Sign("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", host+"/devices/d1", "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	otherHub, err := sas.Sign(deviceKey(t, cs1), "elsewhere.example/devices/d1", "", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, clientID, username, password string
	}{
		{"wrong key", "d1", user("d1"), wrongKey},
		{"expired token", "d1", user("d1"), token(t, hs, cs1, time.Now().Add(-time.Minute))},
		{"unknown device", "ghost", user("ghost"), token(t, hs, cs1, time.Now().Add(time.Hour))},
		{"client id differs from username", "d1", user("d2"), token(t, hs, cs2, time.Now().Add(time.Hour))},
		{"A logs in as B with A's token", "d2", user("d2"), token(t, hs, cs1, time.Now().Add(time.Hour))},
		{"disabled device", "off", user("off"), token(t, hs, csOff, time.Now().Add(time.Hour))},
		{"audience of another hub", "d1", user("d1"), otherHub},
		{"no password", "d1", user("d1"), ""},
		{"malformed username", "d1", "d1", token(t, hs, cs1, time.Now().Add(time.Hour))},
		{"module identity", "d1/m1", iothub.Username(host, "d1", "m1", ""), token(t, hs, cs1, time.Now().Add(time.Hour))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, rc, err := dial(t, hs, connOpts{clientID: tc.clientID, username: tc.username, password: tc.password})
			if err == nil {
				t.Fatal("connection accepted")
			}
			if rc != 5 {
				t.Fatalf("CONNACK return code %d, want 5 (not authorized); err=%v", rc, err)
			}
		})
	}
	if hs.Connected("d1") || hs.Connected("d2") || hs.Connected("off") {
		t.Fatal("a refused device is marked connected")
	}
}

func TestMethodRoundTrip(t *testing.T) {
	for _, transport := range []string{"tls", "ws", "wsMQTT"} {
		t.Run(transport, func(t *testing.T) {
			ctx := testCtx(t)
			hs := hubtest.NewServer(t)
			cs := hs.CreateDevice(t, "d1")
			d := connectDevice(t, hs, cs, transport)
			d.serveMethods(t)

			status, body, err := hs.Hub().Devices().Invoke(ctx, "d1", "reboot", []byte(`{"delay":1}`), 0, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if status != 200 {
				t.Fatalf("status %d", status)
			}
			var got struct {
				Device, Method string
				Request        map[string]any
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if got.Device != "d1" || got.Method != "reboot" || got.Request["delay"] != 1.0 {
				t.Fatalf("device saw %+v", got)
			}
		})
	}
}

func TestMethodThroughREST(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.serveMethods(t)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}}
	t.Cleanup(client.CloseIdleConnections)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"https://"+hs.HostName()+"/twins/d1/methods?api-version=2021-04-12",
		strings.NewReader(`{"methodName":"ping","responseTimeoutInSeconds":10}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", policyToken(t, hs))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, raw)
	}
	var res struct {
		Status  int `json:"status"`
		Payload struct {
			Device  string          `json:"device"`
			Method  string          `json:"method"`
			Request json.RawMessage `json:"request"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	if res.Status != 200 || res.Payload.Device != "d1" || res.Payload.Method != "ping" || string(res.Payload.Request) != "null" {
		t.Fatalf("result %s", raw)
	}
}

func TestMethodOfflineAndTimeout(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	devs := hs.Hub().Devices()

	if _, _, err := devs.Invoke(ctx, "d1", "ping", []byte("null"), 0, time.Second); !errors.Is(err, hubapi.ErrDeviceNotOnline) {
		t.Fatalf("offline device: %v", err)
	}

	d := connectDevice(t, hs, cs, "tls")
	// Connected but not subscribed to methods is offline too.
	if _, _, err := devs.Invoke(ctx, "d1", "ping", []byte("null"), 0, time.Second); !errors.Is(err, hubapi.ErrDeviceNotOnline) {
		t.Fatalf("unsubscribed device: %v", err)
	}
	// Subscribed but silent: the call times out.
	d.subscribe(t, iothub.MethodsFilter)
	if _, _, err := devs.Invoke(ctx, "d1", "ping", []byte("null"), 0, 100*time.Millisecond); !errors.Is(err, hubapi.ErrTimeout) {
		t.Fatalf("silent device: %v", err)
	}
	m := d.next(ctx, t)
	if _, _, ok := iothub.ParseMethodRequestTopic(m.Topic()); !ok || !strings.Contains(m.Topic(), "/ping/?$rid=") {
		t.Fatalf("request topic %q", m.Topic())
	}
}

func TestMethodWaitsForConnect(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		status, _, err := hs.Hub().Devices().Invoke(ctx, "d1", "ping", []byte("null"), 20*time.Second, 20*time.Second)
		done <- result{status, err}
	}()
	d := connectDevice(t, hs, cs, "tls")
	d.serveMethods(t)
	r := testwait.Recv(t, done, "the answer to the direct method")
	if r.err != nil || r.status != 200 {
		t.Fatalf("status %d err %v", r.status, r.err)
	}
}

func TestIsolation(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	csA := hs.CreateDevice(t, "A")
	csB := hs.CreateDevice(t, "B")
	a := connectDevice(t, hs, csA, "tls")
	b := connectDevice(t, hs, csB, "tls")

	// A may not subscribe to everything or to B's space.
	for _, f := range []string{"#", "devices/B/messages/devicebound/#", "devices/+/messages/devicebound/#", "$iothub/#", "$SYS/#"} {
		if code := a.subscribe(t, f); code != 0x80 {
			t.Errorf("subscribe %q granted %#x", f, code)
		}
	}
	// It may subscribe to IoT Hub's topics and its own space.
	for _, f := range []string{iothub.MethodsFilter, iothub.TwinResFilter, iothub.DesiredFilter, "devices/A/messages/devicebound/#"} {
		if code := a.subscribe(t, f); code != 0 {
			t.Errorf("subscribe %q refused with %#x", f, code)
		}
	}

	// B's method call and twin traffic reach B only.
	b.subscribe(t, iothub.TwinResFilter)
	bReq := make(chan string, 1)
	tok := b.c.Subscribe(iothub.MethodsFilter, 0, func(_ pahoClient, m pahoMessage) { bReq <- m.Topic() })
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
		s, body, err := hs.Hub().Devices().Invoke(ctx, "B", "secret", []byte(`{"x":1}`), 0, 20*time.Second)
		done <- result{s, body, err}
	}()
	topic := testwait.Recv(t, bReq, "B's method request")
	_, rid, _ := iothub.ParseMethodRequestTopic(topic)
	// A tries to answer B's call.
	a.publish(t, iothub.MethodResponseTopic(500, rid), 1, `"forged"`)
	b.publish(t, iothub.MethodResponseTopic(200, rid), 1, `"genuine"`)
	r := testwait.Recv(t, done, "the answer to B's call")
	if r.err != nil || r.status != 200 || string(r.body) != `"genuine"` {
		t.Fatalf("B's call: status %d body %s err %v", r.status, r.body, r.err)
	}
	if _, body := b.twinGet(ctx, t, "b1"); !bytes.Contains(body, []byte(`"desired"`)) {
		t.Fatalf("B's twin: %s", body)
	}

	// A's own twin GET answer is the next thing A receives: nothing of B's
	// arrived before it.
	topicA, _ := a.twinGet(ctx, t, "a1")
	if topicA != "$iothub/twin/res/200/?$rid=a1" {
		t.Fatalf("A received %q first", topicA)
	}

	// Publishing into B's space is refused: the hub drops A's connection.
	// The token never completes: the connection is gone.
	a.c.Publish("devices/B/messages/events/", 1, false, "x")
	if err := hs.WaitConnected(ctx, "A", false); err != nil {
		t.Fatal(err)
	}
	if !hs.Connected("B") {
		t.Fatal("B lost its connection")
	}
}

func TestTwin(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.subscribe(t, iothub.TwinResFilter)

	topic, body := d.twinGet(ctx, t, "g1")
	if topic != "$iothub/twin/res/200/?$rid=g1" {
		t.Fatalf("GET topic %q", topic)
	}
	var twin map[string]map[string]any
	if err := json.Unmarshal(body, &twin); err != nil {
		t.Fatalf("GET body %s: %v", body, err)
	}
	if len(twin) != 2 || twin["desired"]["$version"] != 1.0 || twin["reported"]["$version"] != 1.0 {
		t.Fatalf("GET body %s", body)
	}

	d.publish(t, iothub.TwinPatchReportedTopic("p1"), 0, `{"rebootTime":"2026-01-01T00:00:00Z","nested":{"a":1}}`)
	m := d.next(ctx, t)
	if m.Topic() != "$iothub/twin/res/204/?$rid=p1&$version=2" || len(m.Payload()) != 0 {
		t.Fatalf("PATCH answer %q %q", m.Topic(), m.Payload())
	}

	d.publish(t, iothub.TwinPatchReportedTopic("p2"), 0, `{"broken":`)
	m = d.next(ctx, t)
	if m.Topic() != "$iothub/twin/res/400/?$rid=p2" {
		t.Fatalf("invalid PATCH answer topic %q", m.Topic())
	}
	var e struct {
		ErrorCode int    `json:"errorCode"`
		Message   string `json:"message"`
	}
	if err := json.Unmarshal(m.Payload(), &e); err != nil || e.ErrorCode != 400004 || e.Message == "" {
		t.Fatalf("invalid PATCH body %s", m.Payload())
	}

	// Store validation errors carry their code as well.
	d.publish(t, iothub.TwinPatchReportedTopic("p3"), 0, `{"$bad":1}`)
	m = d.next(ctx, t)
	if !strings.HasPrefix(m.Topic(), "$iothub/twin/res/400/?$rid=p3") || !bytes.Contains(m.Payload(), []byte(`"errorCode":400`)) {
		t.Fatalf("rejected PATCH answer %q %s", m.Topic(), m.Payload())
	}

	// The reported patch survives a restart.
	d.c.Disconnect(0)
	hs.Restart(t)
	d = connectDevice(t, hs, cs, "tls")
	d.subscribe(t, iothub.TwinResFilter)
	_, body = d.twinGet(ctx, t, "g2")
	if err := json.Unmarshal(body, &twin); err != nil {
		t.Fatal(err)
	}
	if twin["reported"]["rebootTime"] != "2026-01-01T00:00:00Z" || twin["reported"]["$version"] != 2.0 {
		t.Fatalf("after restart: %s", body)
	}
}

func TestTwinNotSubscribedGetsNoAnswer(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.subscribe(t, "devices/d1/messages/devicebound/#")
	d.publish(t, iothub.TwinGetTopic("lost"), 0, " ")
	d.subscribe(t, iothub.TwinResFilter)
	topic, _ := d.twinGet(ctx, t, "seen")
	if topic != "$iothub/twin/res/200/?$rid=seen" {
		t.Fatalf("got %q", topic)
	}
}

func TestDesiredNotification(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.subscribe(t, iothub.DesiredFilter)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}}
	t.Cleanup(client.CloseIdleConnections)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch,
		"https://"+hs.HostName()+"/twins/d1?api-version=2021-04-12",
		strings.NewReader(`{"properties":{"desired":{"interval":5}}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", policyToken(t, hs))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, raw)
	}
	m := d.next(ctx, t)
	if m.Topic() != "$iothub/twin/PATCH/properties/desired/?$version=2" {
		t.Fatalf("topic %q", m.Topic())
	}
	var patch map[string]any
	if err := json.Unmarshal(m.Payload(), &patch); err != nil || patch["interval"] != 5.0 || patch["$version"] != 2.0 {
		t.Fatalf("body %s", m.Payload())
	}
}

func TestNewConnectionReplacesOld(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	first := connectDevice(t, hs, cs, "tls")
	if err := hs.WaitConnected(ctx, "d1", true); err != nil {
		t.Fatal(err)
	}
	second := connectDevice(t, hs, cs, "ws")
	select {
	case <-first.lost:
	case <-ctx.Done():
		t.Fatal("the old connection was not dropped")
	}
	if err := hs.WaitConnected(ctx, "d1", true); err != nil {
		t.Fatal(err)
	}
	// The new connection works.
	second.serveMethods(t)
	if status, _, err := hs.Hub().Devices().Invoke(ctx, "d1", "ping", []byte("null"), 0, 10*time.Second); err != nil || status != 200 {
		t.Fatalf("status %d err %v", status, err)
	}
	// The old connection's end did not mark the device disconnected.
	dev, err := hs.Store().Device("d1")
	if err != nil {
		t.Fatal(err)
	}
	if dev.ConnectionState != "Connected" || !hs.Connected("d1") {
		t.Fatalf("connectionState %q after takeover", dev.ConnectionState)
	}
	second.c.Disconnect(0)
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
	dev, err = hs.Store().Device("d1")
	if err != nil {
		t.Fatal(err)
	}
	if dev.ConnectionState != "Disconnected" {
		t.Fatalf("connectionState %q after disconnect", dev.ConnectionState)
	}
}

func TestTelemetryAndQoS2(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	// Telemetry at QoS 1 is acknowledged.
	d.publish(t, "devices/d1/messages/events/a=b", 1, `{"t":1}`)
	// QoS 2 is not supported: the hub disconnects.
	d.c.Publish("devices/d1/messages/events/", 2, false, "x")
	select {
	case <-d.lost:
	case <-ctx.Done():
		t.Fatal("QoS 2 publish did not disconnect")
	}
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
}

func TestRESTAndMQTTShareThePort(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	if len(hs.Hub().Addrs()) != 1 {
		t.Fatalf("addrs %v", hs.Hub().Addrs())
	}
	cs := hs.CreateDevice(t, "d1")
	connectDevice(t, hs, cs, "tls")
	if err := hs.WaitConnected(ctx, "d1", true); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}}
	t.Cleanup(client.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hs.Addr()+"/twins/d1?api-version=2021-04-12", nil)
	req.Header.Set("Authorization", policyToken(t, hs))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var twin iothub.Twin
	if err := json.NewDecoder(resp.Body).Decode(&twin); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || twin.DeviceID != "d1" || twin.ConnectionState != "Connected" {
		t.Fatalf("HTTP %d twin %+v", resp.StatusCode, twin)
	}
	// Without credentials the API refuses.
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hs.Addr()+"/twins/d1?api-version=2021-04-12", nil)
	resp2, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous request: HTTP %d", resp2.StatusCode)
	}
}

func TestTokenExpiryDisconnects(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	d, rc, err := dial(t, hs, connOpts{
		clientID: "d1",
		username: iothub.Username(c.HostName, "d1", "", ""),
		password: token(t, hs, cs, time.Now().Add(2*time.Second)),
	})
	if err != nil {
		t.Fatalf("rc=%d: %v", rc, err)
	}
	select {
	case <-d.lost:
	case <-ctx.Done():
		t.Fatal("the hub kept a connection whose token expired")
	}
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
}

func TestServeReturnsNilOnCancel(t *testing.T) {
	h, err := hub.New(hub.Config{DataDir: t.TempDir(), Listen: []string{"127.0.0.1:0", "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	bound := testCtx(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx) }()
	for h.Addrs() == nil { // poll until Serve has bound
		select {
		case err := <-done:
			t.Fatalf("Serve ended early: %v", err)
		case <-bound.Done():
			t.Fatal("Serve did not bind")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if n := len(h.Addrs()); n != 2 {
		t.Fatalf("%d listeners", n)
	}
	cancel()
	if err := testwait.Recv(t, done, "Serve to return after cancel"); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Both ports are closed.
	for _, a := range h.Addrs() {
		if c, err := net.Dial("tcp", a); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections", a)
		}
	}
}

func TestCloseEndsPendingCalls(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.subscribe(t, iothub.MethodsFilter)
	devs := hs.Hub().Devices()
	done := make(chan error, 1)
	go func() {
		_, _, err := devs.Invoke(ctx, "d1", "slow", []byte("null"), 0, 300*time.Second)
		done <- err
	}()
	d.next(ctx, t) // the request reached the device
	if err := hs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := testwait.Recv(t, done, "the call to end at shutdown"); !errors.Is(err, hub.ErrShuttingDown) {
		t.Fatalf("pending call ended with %v", err)
	}
}

func TestDisabledDeviceIsDisconnected(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.subscribe(t, iothub.MethodsFilter)
	if _, err := hs.Store().UpdateDevice(iothub.Device{DeviceID: "d1", Status: "disabled"}, "*"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := hs.Hub().Devices().Invoke(ctx, "d1", "ping", []byte("null"), 0, 10*time.Second); !errors.Is(err, hubapi.ErrDeviceNotOnline) {
		t.Fatalf("method to a disabled device: %v", err)
	}
	select {
	case <-d.lost:
	case <-ctx.Done():
		t.Fatal("the disabled device stayed connected")
	}
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}
	// And it cannot come back.
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	if _, rc, err := dial(t, hs, connOpts{clientID: "d1", username: iothub.Username(c.HostName, "d1", "", ""), password: token(t, hs, cs, time.Now().Add(time.Hour))}); err == nil || rc != 5 {
		t.Fatalf("disabled device reconnected: rc=%d err=%v", rc, err)
	}
}

func TestJobThroughREST(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	cs := hs.CreateDevice(t, "d1")
	d := connectDevice(t, hs, cs, "tls")
	d.serveMethods(t)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}}
	t.Cleanup(client.CloseIdleConnections)
	do := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "https://"+hs.HostName()+path+"?api-version=2021-04-12", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", policyToken(t, hs))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		raw, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s %s: HTTP %d %s", method, path, resp.StatusCode, raw)
		}
		return resp.StatusCode, v
	}
	status, job := do(http.MethodPut, "/jobs/v2/j1", `{"jobId":"j1","type":"scheduleDeviceMethod","queryCondition":"deviceId = 'd1'",
		"cloudToDeviceMethod":{"methodName":"reboot","responseTimeoutInSeconds":10},"maxExecutionTimeInSeconds":60}`)
	if status != 200 {
		t.Fatalf("create job: HTTP %d %v", status, job)
	}
	for job["status"] != "completed" { // poll the job until it finishes
		if job["status"] == "failed" || job["status"] == "cancelled" {
			t.Fatalf("job %v", job)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job did not complete: %v", job)
		case <-time.After(20 * time.Millisecond):
		}
		_, job = do(http.MethodGet, "/jobs/v2/j1", "")
	}
	stats, _ := job["deviceJobStatistics"].(map[string]any)
	if stats["succeededCount"] != 1.0 {
		t.Fatalf("statistics %v", stats)
	}
}

// A device disabled or deleted through the REST API is disconnected at
// once, with no activity of its own, as on IoT Hub.
func TestRegistryChangeDisconnectsDevice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		body   string
	}{
		{"disable", http.MethodPut, `{"deviceId":"d1","status":"disabled"}`},
		{"delete", http.MethodDelete, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			hs := hubtest.NewServer(t)
			d := connectDevice(t, hs, hs.CreateDevice(t, "d1"), "tls")
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig(hs)}}
			defer client.CloseIdleConnections()
			req, err := http.NewRequestWithContext(ctx, tc.method,
				"https://"+hs.Addr()+"/devices/d1?api-version="+iothub.APIVersion, strings.NewReader(tc.body))
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
				t.Fatalf("%s /devices/d1: %s", tc.method, resp.Status)
			}
			select {
			case <-d.lost:
			case <-ctx.Done():
				t.Fatal("the device stayed connected")
			}
		})
	}
}

func TestNewOnBusyPortWritesNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := hub.New(hub.Config{DataDir: dir, Listen: []string{ln.Addr().String()}}); err == nil {
		t.Fatal("New bound a busy port")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the data folder exists after a failed bind: %v", err)
	}
	if hub.Running(dir) {
		t.Error("Running on a folder with no hub")
	}
	if _, err := hub.OwnerConnectionString(dir, "", 8883); !errors.Is(err, hub.ErrNoHub) {
		t.Errorf("OwnerConnectionString on a folder with no hub: %v, want ErrNoHub", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OwnerConnectionString created the data folder: %v", err)
	}
}
