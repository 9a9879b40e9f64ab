package api

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func bulkResult(t *testing.T, r response) iothub.BulkRegistryOperationResult {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != contentTypeJSON {
		t.Errorf("Content-Type = %q", ct)
	}
	var res iothub.BulkRegistryOperationResult
	d := json.NewDecoder(strings.NewReader(string(r.body)))
	d.DisallowUnknownFields()
	if err := d.Decode(&res); err != nil {
		t.Fatalf("result body %s: %v", r.body, err)
	}
	return res
}

func TestBulkRegistry(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")

	// addDevices as the Node SDK sends it: deviceId renamed to id,
	// authentication normalised, importMode create.
	var entries []string
	for i := range 3 {
		entries = append(entries, fmt.Sprintf(`{"id":"node-%d","status":"disabled","importMode":"create","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`, i))
	}
	r := e.do("POST", "/devices?api-version=2021-04-12", owner, "["+strings.Join(entries, ",")+"]")
	if r.status != 200 || string(r.body) != `{"isSuccessful":true,"errors":[],"warnings":[]}` {
		t.Fatalf("addDevices = %s", r)
	}
	d, err := e.store.Device("node-1")
	if err != nil || d.Status != "disabled" || d.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("node-1 = %+v, %v", d, err)
	}

	// updateDevices(devices, false): importMode UpdateIfMatchETag with the
	// device's own "etag" member (lowercase, as Node's Device has it).
	r = e.do("POST", "/devices", owner, fmt.Sprintf(`[{"id":"node-1","etag":%q,"status":"enabled","importMode":"UpdateIfMatchETag","connectionState":"Disconnected"}]`, d.ETag))
	if r.status != 200 || !bulkResult(t, r).IsSuccessful {
		t.Fatalf("updateDevices = %s", r)
	}
	if d, _ := e.store.Device("node-1"); d.Status != "enabled" {
		t.Errorf("node-1 status = %s after the update", d.Status)
	}

	// A request with failing entries: 400 with the result body; the
	// other entries are applied.
	e.dev.takeRevoked()
	r = e.do("POST", "/devices", owner, `[
		{"id":"node-0","importMode":"create"},
		{"id":"py-1","importMode":"create","status":"enabled","authentication":{"type":"sas","symmetricKey":{"primaryKey":"MTIzNDU2NzgtMTIzNC0xMjM0LTEyMzQtMTIzNDU2Nzg5MDEy","secondaryKey":"MTIzNDU2NzgtMTIzNC0xMjM0LTEyMzQtMTIzNDU2Nzg5MDEz"}}},
		{"id":"node-2","importMode":"update","status":"disabled"},
		{"id":"node-1","eTag":"bm9wZQ==","importMode":"updateIfMatchETag","status":"disabled"},
		{"id":"ghost","importMode":"Delete"},
		{"id":"py-1","importMode":"delete"}
	]`)
	if r.status != 400 {
		t.Fatalf("mixed request = %s, want 400", r)
	}
	res := bulkResult(t, r)
	if res.IsSuccessful || res.Warnings == nil {
		t.Errorf("result = %s", r.body)
	}
	var got []string
	for _, e := range res.Errors {
		if e.ErrorStatus == "" {
			t.Errorf("no errorStatus in %+v", e)
		}
		got = append(got, e.DeviceID+":"+e.ErrorCode+":"+e.Operation)
	}
	want := []string{
		"node-0:DeviceAlreadyExists:create",
		"node-1:PreconditionFailed:updateIfMatchETag",
		"ghost:DeviceNotFound:delete",
		"py-1:DeviceDefinedMultipleTimes:delete",
	}
	if !slices.Equal(got, want) {
		t.Errorf("errors = %v\nwant %v", got, want)
	}
	if _, err := e.store.Device("py-1"); err != nil {
		t.Errorf("py-1 was not created: %v", err)
	}
	if d, _ := e.store.Device("node-2"); d.Status != "disabled" {
		t.Errorf("node-2 was not disabled")
	}
	if d, _ := e.store.Device("node-1"); d.Status != "enabled" {
		t.Errorf("node-1 was updated despite the eTag mismatch")
	}
	if got := e.dev.takeRevoked(); !slices.Contains(got, "node-2") {
		t.Errorf("revoked %v, want node-2 among them", got)
	}

	// Modules in bulk, and removeDevices(devices, true) of a device with a
	// module: both go, and both connections are revoked.
	r = e.do("POST", "/devices", owner, `[{"id":"node-0","moduleId":"filter","importMode":"create"}]`)
	if r.status != 200 {
		t.Fatalf("module create = %s", r)
	}
	if _, err := e.store.Module("node-0", "filter"); err != nil {
		t.Fatal(err)
	}
	e.dev.takeRevoked()
	r = e.do("POST", "/devices", owner, `[{"id":"node-0","importMode":"Delete","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}]`)
	if r.status != 200 {
		t.Fatalf("removeDevices = %s", r)
	}
	if _, err := e.store.Module("node-0", "filter"); err == nil {
		t.Error("module survived its device's bulk delete")
	}
	// Revoking the device id covers its connected modules (hubapi.Devices).
	if got := e.dev.takeRevoked(); !slices.Equal(got, []string{"node-0"}) {
		t.Errorf("revoked %v, want [node-0]", got)
	}
}

func TestBulkRegistryRefusals(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")
	many := make([]string, iothub.MaxBulkDevices+1)
	for i := range many {
		many[i] = fmt.Sprintf(`{"id":"d%d","importMode":"create"}`, i)
	}
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"empty array", `[]`, 400, "ArgumentInvalid"},
		{"null", `null`, 400, "ArgumentInvalid"},
		{"101 devices", "[" + strings.Join(many, ",") + "]", 400, "ArgumentInvalid"},
		{"object instead of array", `{"id":"a","importMode":"create"}`, 400, "IotHubFormatError"},
		{"malformed JSON", `[{"id":`, 400, "IotHubFormatError"},
		{"unknown import mode", `[{"id":"a","importMode":"create"},{"id":"b","importMode":"upsert"}]`, 400, "ArgumentInvalid"},
		{"no import mode", `[{"id":"a"}]`, 400, "ArgumentInvalid"},
		{"twin import mode", `[{"id":"a","importMode":"updateTwin"}]`, 400, "ArgumentInvalid"},
		{"tags on create", `[{"id":"a","importMode":"create","tags":{"x":1}}]`, 400, "ArgumentInvalid"},
		{"desired on create", `[{"id":"a","importMode":"create","properties":{"desired":{"x":1}}}]`, 400, "ArgumentInvalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStyleA(t, e.do("POST", "/devices", owner, tc.body), tc.status, tc.code)
		})
	}
	if n := e.store.Count(); n != 0 {
		t.Errorf("refused requests created %d devices", n)
	}
	// Twin members set to null (as some serialisers send them) are fine.
	if r := e.do("POST", "/devices", owner, `[{"id":"nulls","importMode":"create","tags":null,"properties":null,"twinETag":null}]`); r.status != 200 {
		t.Fatalf("null twin members: %s", r)
	}
	if err := e.store.DeleteDevice("nulls", ""); err != nil {
		t.Fatal(err)
	}
	// Exactly 100 is accepted.
	if r := e.do("POST", "/devices", owner, "["+strings.Join(many[:iothub.MaxBulkDevices], ",")+"]"); r.status != 200 {
		t.Fatalf("100 devices: %s", r)
	}
	if n := e.store.Count(); n != iothub.MaxBulkDevices {
		t.Errorf("Count = %d", n)
	}
	// Per-entry input errors are reported, not fatal.
	r := e.do("POST", "/devices", owner, `[{"id":"bad id","importMode":"create"},{"id":"ok","importMode":"create","status":"sleepy"},{"id":"fine","importMode":"create"}]`)
	res := bulkResult(t, r)
	if r.status != 400 || len(res.Errors) != 2 || res.Errors[0].ErrorCode != "ArgumentInvalid" || res.Errors[1].ErrorCode != "ArgumentInvalid" {
		t.Fatalf("bad entries = %s", r)
	}
	if _, err := e.store.Device("fine"); err != nil {
		t.Errorf("the valid entry was not applied: %v", err)
	}
}
