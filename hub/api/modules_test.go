package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/internal/iothub"
)

func (e *env) createModule(id, mid string) iothub.Module {
	e.t.Helper()
	m, err := e.store.CreateModule(iothub.Module{DeviceID: id, ModuleID: mid})
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func TestModuleIdentities(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	e.create("empty")
	owner := e.token("iothubowner")

	// Create as the Node SDK's addModule does.
	r := e.do("PUT", "/devices/d1/modules/m1?api-version=2021-04-12", owner,
		`{"deviceId":"d1","moduleId":"m1","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`)
	if r.status != 200 {
		t.Fatalf("create = %s", r)
	}
	var m iothub.Module
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatal(err)
	}
	if m.DeviceID != "d1" || m.ModuleID != "m1" || m.ETag != "MA==" || m.ConnectionState != "Disconnected" ||
		m.Authentication == nil || m.Authentication.SymmetricKey == nil || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("created = %s", r.body)
	}
	if r.header.Get("ETag") != `"MA=="` {
		t.Errorf("ETag = %q", r.header.Get("ETag"))
	}
	// Ids left out of the body are taken from the path (Python's
	// create_module_identity_with_sas sends both; others may not).
	if r := e.do("PUT", "/devices/d1/modules/m2", owner, `{}`); r.status != 200 || !strings.Contains(string(r.body), `"moduleId":"m2"`) {
		t.Fatalf("create without ids = %s", r)
	}

	text := wantStyleA(t, e.do("PUT", "/devices/d1/modules/m1", owner, `{"moduleId":"m1"}`), 409, "ModuleAlreadyExistsOnDevice")
	if !strings.Contains(text, "m1") || !strings.Contains(text, "d1") {
		t.Errorf("409 text = %q", text)
	}

	// Update with If-Match.
	wantStyleA(t, e.do("PUT", "/devices/d1/modules/m1", owner, `{"managedBy":"x"}`, "If-Match", `"bm9wZQ=="`), 412, "PreconditionFailed")
	r = e.do("PUT", "/devices/d1/modules/m1", owner, `{"deviceId":"d1","moduleId":"m1","managedBy":"iotedge"}`, "If-Match", `"MA=="`)
	if r.status != 200 || !strings.Contains(string(r.body), `"managedBy":"iotedge"`) || r.header.Get("ETag") != `"MQ=="` {
		t.Fatalf("update = %s (ETag %q)", r, r.header.Get("ETag"))
	}
	if r := e.do("PUT", "/devices/d1/modules/m1", owner, `{}`, "If-Match", `*`); r.status != 200 {
		t.Fatalf("forced update = %s", r)
	}

	// Bad requests.
	for _, tc := range []struct {
		name, path, body string
		hdr              []string
		status           int
		code             string
	}{
		{"unknown device", "/devices/ghost/modules/m1", `{}`, nil, 404, "DeviceNotFound"},
		{"update of an unknown module", "/devices/d1/modules/nope", `{}`, []string{"If-Match", "*"}, 404, "ModuleNotFound"},
		{"moduleId mismatch", "/devices/d1/modules/m3", `{"moduleId":"other"}`, nil, 400, "ArgumentInvalid"},
		{"deviceId mismatch", "/devices/d1/modules/m3", `{"deviceId":"empty"}`, nil, 400, "ArgumentInvalid"},
		{"bad module id", "/devices/d1/modules/" + url.PathEscape("a b"), `{}`, nil, 400, "ArgumentInvalid"},
		{"module id with slash", "/devices/d1/modules/" + url.PathEscape("a/b"), `{}`, nil, 400, "ArgumentInvalid"},
		{"bad key", "/devices/d1/modules/m3", `{"authentication":{"type":"sas","symmetricKey":{"primaryKey":"short"}}}`, nil, 400, "ArgumentInvalid"},
		{"malformed JSON", "/devices/d1/modules/m3", `{"moduleId":`, nil, 400, "IotHubFormatError"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStyleA(t, e.do("PUT", tc.path, owner, tc.body, tc.hdr...), tc.status, tc.code)
		})
	}

	// Get.
	r = e.do("GET", "/devices/d1/modules/m1", owner, "")
	if r.status != 200 || !strings.Contains(string(r.body), `"managedBy":"iotedge"`) || r.header.Get("ETag") == "" {
		t.Fatalf("get = %s", r)
	}
	text = wantStyleA(t, e.do("GET", "/devices/d1/modules/nope", owner, ""), 404, "ModuleNotFound")
	if !strings.Contains(text, "nope") {
		t.Errorf("404 text = %q", text)
	}
	wantStyleA(t, e.do("GET", "/devices/ghost/modules/m1", owner, ""), 404, "DeviceNotFound")

	// List, in module id order.
	r = e.do("GET", "/devices/d1/modules", owner, "")
	var list []iothub.Module
	if r.status != 200 || json.Unmarshal(r.body, &list) != nil || len(list) != 2 || list[0].ModuleID != "m1" || list[1].ModuleID != "m2" {
		t.Fatalf("list = %s", r)
	}
	if r := e.do("GET", "/devices/empty/modules", owner, ""); r.status != 200 || string(r.body) != "[]" {
		t.Errorf("list of a device without modules = %s", r)
	}
	wantStyleA(t, e.do("GET", "/devices/ghost/modules", owner, ""), 404, "DeviceNotFound")

	// The device routes do not see modules.
	if r := e.do("GET", "/devices", owner, ""); strings.Contains(string(r.body), `"m1"`) {
		t.Errorf("device list shows a module: %s", r.body)
	}
	esc := "/" + url.PathEscape("d1/m1")
	wantStyleA(t, e.do("GET", "/devices"+esc, owner, ""), 404, "DeviceNotFound")
	wantStyleA(t, e.do("GET", "/twins"+esc, owner, ""), 404, "DeviceNotFound")
	wantStyleA(t, e.do("DELETE", "/devices"+esc, owner, ""), 404, "DeviceNotFound")
	wantStyleA(t, e.do("POST", "/twins"+esc+"/methods", owner, `{"methodName":"m"}`), 404, "DeviceNotFound")
	if _, err := e.store.Module("d1", "m1"); err != nil {
		t.Fatalf("module gone after a device route named it: %v", err)
	}

	// Delete honours If-Match and revokes the module's connection.
	e.dev.takeRevoked()
	wantStyleA(t, e.do("DELETE", "/devices/d1/modules/m1", owner, "", "If-Match", `"MA=="`), 412, "PreconditionFailed")
	if got := e.dev.takeRevoked(); len(got) != 0 {
		t.Errorf("a refused delete revoked %v", got)
	}
	r = e.do("DELETE", "/devices/d1/modules/m1", owner, "", "If-Match", `"*"`)
	if r.status != 204 || len(r.body) != 0 {
		t.Fatalf("delete = %s", r)
	}
	if got := e.dev.takeRevoked(); !slices.Equal(got, []string{"d1/m1"}) {
		t.Errorf("revoked %v, want [d1/m1]", got)
	}
	wantStyleA(t, e.do("DELETE", "/devices/d1/modules/m1", owner, ""), 404, "ModuleNotFound")
	wantStyleA(t, e.do("DELETE", "/devices/ghost/modules/m1", owner, ""), 404, "DeviceNotFound")
}

func TestDeviceChangesRevokeModules(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")
	e.create("d1")
	e.createModule("d1", "a")
	e.createModule("d1", "b")
	e.create("d10")
	e.createModule("d10", "c")
	e.dev.takeRevoked()

	// An update that keeps the device enabled revokes only the device
	// (which the broker keeps, as it is still allowed).
	if r := e.do("PUT", "/devices/d1", owner, `{"status":"enabled"}`, "If-Match", "*"); r.status != 200 {
		t.Fatalf("update = %s", r)
	}
	if got := e.dev.takeRevoked(); !slices.Equal(got, []string{"d1"}) {
		t.Errorf("enabled update revoked %v", got)
	}
	// Disabling the device revokes it, which covers its connected
	// modules (hubapi.Devices; TestRegistryChangeDisconnectsModules in
	// package hub sees them disconnected).
	if r := e.do("PUT", "/devices/d1", owner, `{"status":"disabled"}`, "If-Match", "*"); r.status != 200 {
		t.Fatalf("disable = %s", r)
	}
	if got := e.dev.takeRevoked(); !slices.Equal(got, []string{"d1"}) {
		t.Errorf("disable revoked %v, want [d1]", got)
	}
	// Deleting it deletes its modules, not d10's, and revokes it.
	if r := e.do("DELETE", "/devices/d1", owner, ""); r.status != 204 {
		t.Fatalf("delete = %s", r)
	}
	if got := e.dev.takeRevoked(); !slices.Equal(got, []string{"d1"}) {
		t.Errorf("delete revoked %v, want [d1]", got)
	}
	if _, err := e.store.Module("d1", "a"); err == nil {
		t.Error("module survived its device")
	}
	if _, err := e.store.Module("d10", "c"); err != nil {
		t.Errorf("d10's module: %v", err)
	}
}

func TestModuleTwins(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	e.createModule("d1", "m1")
	owner := e.token("iothubowner")

	r := e.do("GET", "/twins/d1/modules/m1?api-version=2021-04-12", owner, "")
	var tw map[string]any
	if r.status != 200 || json.Unmarshal(r.body, &tw) != nil {
		t.Fatalf("GET = %s", r)
	}
	if tw["deviceId"] != "d1" || tw["moduleId"] != "m1" || tw["etag"] != "AAAAAAAAAAE=" || r.header.Get("ETag") != `"AAAAAAAAAAE="` {
		t.Errorf("twin = %s", r.body)
	}

	// PATCH merges and tells the module's connection (key d1/m1).
	r = e.do("PATCH", "/twins/d1/modules/m1", owner, `{"tags":{"k":"v"},"properties":{"desired":{"rate":2}}}`, "If-Match", `"AAAAAAAAAAE="`)
	if r.status != 200 || !strings.Contains(string(r.body), `"rate":2`) || !strings.Contains(string(r.body), `"moduleId":"m1"`) {
		t.Fatalf("PATCH = %s", r)
	}
	n := e.dev.notifications()
	if len(n) != 1 || n[0] != (notification{"d1/m1", 2, `{"$version":2,"rate":2}`}) {
		t.Errorf("notifications = %+v", n)
	}
	wantStyleA(t, e.do("PATCH", "/twins/d1/modules/m1", owner, `{"tags":{"a":1}}`, "If-Match", `"AAAAAAAAAAE="`), 412, "PreconditionFailed")

	// PUT replaces.
	r = e.do("PUT", "/twins/d1/modules/m1", owner, `{"tags":{"t":1},"properties":{"desired":{"other":true}}}`, "If-Match", "*")
	if r.status != 200 || strings.Contains(string(r.body), `"rate"`) || !strings.Contains(string(r.body), `"other":true`) {
		t.Fatalf("PUT = %s", r)
	}
	n = e.dev.notifications()
	if len(n) != 2 || n[1] != (notification{"d1/m1", 3, `{"$version":3,"other":true,"rate":null}`}) {
		t.Errorf("notifications = %+v", n)
	}

	// The device twin is untouched.
	r = e.do("GET", "/twins/d1", owner, "")
	if strings.Contains(string(r.body), "other") || strings.Contains(string(r.body), `"moduleId":"m1"`) {
		t.Errorf("device twin = %s", r.body)
	}

	// Errors.
	for _, method := range []string{"GET", "PATCH", "PUT"} {
		body := ""
		if method != "GET" {
			body = `{"tags":{"a":1}}`
		}
		wantStyleA(t, e.do(method, "/twins/d1/modules/nope", owner, body), 404, "ModuleNotFound")
		wantStyleA(t, e.do(method, "/twins/ghost/modules/m1", owner, body), 404, "DeviceNotFound")
	}
	wantStyleA(t, e.do("PATCH", "/twins/d1/modules/m1", owner, `{"tags":{"a.b":1}}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("PATCH", "/twins/d1/modules/m1", owner, `{"tags":`), 400, "IotHubFormatError")
}

func TestModuleMethods(t *testing.T) {
	e := newEnv(t)
	e.create("d1")
	e.createModule("d1", "m1")
	owner := e.token("iothubowner")
	var (
		mu     sync.Mutex
		target string
		fail   error
	)
	e.dev.InvokeFunc = func(ctx context.Context, id, method string, payload []byte, connect, response time.Duration) (int, []byte, error) {
		mu.Lock()
		defer mu.Unlock()
		target = id
		if fail != nil {
			return 0, nil, fail
		}
		if id == "d1/m1" {
			return 201, []byte(`{"module":true}`), nil
		}
		return 0, nil, hubapi.ErrDeviceNotOnline
	}
	setFail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		fail = err
	}
	r := e.do("POST", "/twins/d1/modules/m1/methods?api-version=2021-04-12", owner, `{"methodName":"ping","payload":{"x":1},"responseTimeoutInSeconds":10}`)
	if r.status != 200 || string(r.body) != `{"status":201,"payload":{"module":true}}` {
		t.Fatalf("invoke = %s", r)
	}
	mu.Lock()
	got := target
	mu.Unlock()
	if got != "d1/m1" {
		t.Errorf("Invoke target = %q, want the module key d1/m1", got)
	}
	// The device itself is a different target.
	wantStyleB(t, e.do("POST", "/twins/d1/methods", owner, `{"methodName":"ping"}`), 404, iothub.CodeDeviceNotOnline)

	wantStyleA(t, e.do("POST", "/twins/d1/modules/nope/methods", owner, `{"methodName":"ping"}`), 404, "ModuleNotFound")
	wantStyleA(t, e.do("POST", "/twins/ghost/modules/m1/methods", owner, `{"methodName":"ping"}`), 404, "DeviceNotFound")
	wantStyleA(t, e.do("POST", "/twins/d1/modules/m1/methods", owner, `{"methodName":"a/b"}`), 400, "ArgumentInvalid")
	wantStyleA(t, e.do("POST", "/twins/d1/modules/m1/methods", owner, `{"methodName":"m","responseTimeoutInSeconds":1}`), 400, "ArgumentInvalid")

	setFail(fmt.Errorf("module offline: %w", hubapi.ErrDeviceNotOnline))
	wantStyleB(t, e.do("POST", "/twins/d1/modules/m1/methods", owner, `{"methodName":"ping"}`), 404, iothub.CodeDeviceNotOnline)
	setFail(hubapi.ErrTimeout)
	wantStyleB(t, e.do("POST", "/twins/d1/modules/m1/methods", owner, `{"methodName":"ping"}`), 504, iothub.CodeGatewayTimeout)
}
