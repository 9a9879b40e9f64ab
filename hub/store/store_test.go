package store

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/internal/iothub"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a deterministic clock that moves one millisecond per reading.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

func openAt(t *testing.T, path string, c *clock) *Store {
	t.Helper()
	s, err := Open(path, c.now)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "hub.db")
	s := openAt(t, path, newClock())
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

func mustCreate(t *testing.T, s *Store, id string) iothub.Device {
	t.Helper()
	d, err := s.CreateDevice(iothub.Device{DeviceID: id})
	if err != nil {
		t.Fatalf("CreateDevice(%q): %v", id, err)
	}
	return d
}

func obj(t *testing.T, s string) map[string]any {
	t.Helper()
	m, err := DecodeObject([]byte(s))
	if err != nil {
		t.Fatalf("DecodeObject(%s): %v", s, err)
	}
	return m
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// values drops $metadata and $version from a rendered properties section.
func values(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if k != "$metadata" && k != "$version" {
			out[k] = v
		}
	}
	return out
}

func TestDefaultPolicies(t *testing.T) {
	s, path := newStore(t)
	ps, err := s.Policies()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Rights{
		"iothubowner":       RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect,
		"service":           ServiceConnect,
		"device":            DeviceConnect,
		"registryRead":      RegistryRead,
		"registryReadWrite": RegistryRead | RegistryWrite,
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d policies, want %d", len(ps), len(want))
	}
	for _, p := range ps {
		if want[p.Name] != p.Rights {
			t.Errorf("policy %s rights = %v, want %v", p.Name, p.Rights, want[p.Name])
		}
		for _, k := range []string{p.PrimaryKey, p.SecondaryKey} {
			b, err := base64.StdEncoding.DecodeString(k)
			if err != nil || len(b) != 32 {
				t.Errorf("policy %s: key is not 32 bytes of base64", p.Name)
			}
		}
		if p.PrimaryKey == p.SecondaryKey {
			t.Errorf("policy %s: primary and secondary keys are equal", p.Name)
		}
	}
	if _, err := s.Policy("nope"); !errors.Is(err, ErrPolicyNotFound) {
		t.Errorf("Policy(nope) error = %v, want ErrPolicyNotFound", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path, newClock())
	defer s2.Close()
	ps2, _ := s2.Policies()
	if !reflect.DeepEqual(ps, ps2) {
		t.Error("policies changed across a restart")
	}
}

func TestOpenLockedFile(t *testing.T) {
	_, path := newStore(t)
	if _, err := Open(path, nil); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second Open of the same file: error = %v, want a lock error", err)
	}
}

func TestCreateDevice(t *testing.T) {
	s, _ := newStore(t)
	d := mustCreate(t, s, "dev-1")
	if d.ETag != "MA==" || d.GenerationID == "" || d.Status != "enabled" || d.ConnectionState != "Disconnected" {
		t.Errorf("new device = %+v", d)
	}
	if d.LastActivityTime != iothub.NeverTime || d.ConnectionStateUpdatedTime != iothub.NeverTime {
		t.Errorf("new device times = %q %q, want never", d.LastActivityTime, d.ConnectionStateUpdatedTime)
	}
	a := d.Authentication
	if a == nil || a.Type != "sas" || a.SymmetricKey == nil {
		t.Fatalf("authentication = %+v", a)
	}
	for _, k := range []string{a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey} {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			t.Errorf("generated key is not 32 bytes of base64")
		}
	}
	pk, sk, err := s.DeviceKeys("dev-1")
	if err != nil || pk != a.SymmetricKey.PrimaryKey || sk != a.SymmetricKey.SecondaryKey {
		t.Errorf("DeviceKeys disagree with the created device (err %v)", err)
	}
	if _, err := s.CreateDevice(iothub.Device{DeviceID: "dev-1"}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate create error = %v, want ErrExists", err)
	}
	// Given keys are kept.
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	d2, err := s.CreateDevice(iothub.Device{DeviceID: "dev-2", Authentication: &iothub.Authentication{
		Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: key, SecondaryKey: ""}}})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Authentication.SymmetricKey.PrimaryKey != key || d2.Authentication.SymmetricKey.SecondaryKey == "" {
		t.Error("given primary key not kept or secondary not generated")
	}
	if d2.GenerationID == d.GenerationID {
		t.Error("two devices share a generationId")
	}
	if _, err := s.Device("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Device(nope) = %v, want ErrNotFound", err)
	}
}

func TestDeviceIDValidation(t *testing.T) {
	s, _ := newStore(t)
	// ':' as the Azure CLI and the SDKs allow it (urn-style ids).
	good := []string{"a", "A-b.c+d%e_f#g*h?i!j(k)l,m=n@o$p'q", "urn:dev:1", strings.Repeat("x", 128)}
	bad := []string{"", strings.Repeat("x", 129), "a b", "a/b", "ä", "a\x00", "a\\b", "a;b", "a&b"}
	for _, id := range good {
		if _, err := s.CreateDevice(iothub.Device{DeviceID: id}); err != nil {
			t.Errorf("CreateDevice(%q) = %v, want ok", id, err)
		}
	}
	for _, id := range bad {
		_, err := s.CreateDevice(iothub.Device{DeviceID: id})
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Code != iothub.CodeArgumentInvalid {
			t.Errorf("CreateDevice(%q) = %v, want ValidationError 400004", id, err)
		}
	}
}

func TestCreateDeviceBadInput(t *testing.T) {
	s, _ := newStore(t)
	short := base64.StdEncoding.EncodeToString([]byte("short"))
	cases := []iothub.Device{
		{DeviceID: "d", Status: "paused"},
		{DeviceID: "d", Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: "not base64!"}}},
		{DeviceID: "d", Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: short}}},
		{DeviceID: "d", Authentication: &iothub.Authentication{Type: "magic"}},
		{DeviceID: "d", Authentication: &iothub.Authentication{Type: "selfSigned"}},
		{DeviceID: "d", Authentication: selfSigned("ABCD", "")},                         // too short
		{DeviceID: "d", Authentication: selfSigned(strings.Repeat("G", 40), "")},        // not hex
		{DeviceID: "d", Authentication: selfSigned(strings.Repeat("A", 40), "0123456")}, // bad secondary
	}
	for i, d := range cases {
		_, err := s.CreateDevice(d)
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("case %d: error = %v, want ValidationError", i, err)
		} else if strings.Contains(ve.Msg, "not base64!") {
			t.Errorf("case %d: error message contains the key", i)
		}
	}
	if _, err := s.Device("d"); !errors.Is(err, ErrNotFound) {
		t.Error("a refused device was stored")
	}
}

func selfSigned(primary, secondary string) *iothub.Authentication {
	return &iothub.Authentication{Type: "selfSigned", X509Thumbprint: &iothub.X509Thumbprint{PrimaryThumbprint: &primary, SecondaryThumbprint: &secondary}}
}

func TestThumbprintForms(t *testing.T) {
	s, _ := newStore(t)
	sha1 := strings.Repeat("ab", 20)
	sha256 := strings.Repeat("CD:", 31) + "CD"
	d, err := s.CreateDevice(iothub.Device{DeviceID: "x", Authentication: selfSigned(sha1, sha256)})
	if err != nil {
		t.Fatalf("SHA-1 primary and colon-separated SHA-256 secondary: %v", err)
	}
	if got := *d.Authentication.X509Thumbprint.SecondaryThumbprint; got != sha256 {
		t.Fatalf("secondary = %q, stored as given expected", got)
	}
}

func TestUpdateDevice(t *testing.T) {
	s, _ := newStore(t)
	d := mustCreate(t, s, "d")
	keys := *d.Authentication.SymmetricKey
	if _, err := s.UpdateDevice(iothub.Device{DeviceID: "d", Status: "disabled"}, `"MQ=="`); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("stale etag: %v, want ErrPrecondition", err)
	}
	reason := "maintenance"
	u, err := s.UpdateDevice(iothub.Device{DeviceID: "d", Status: "disabled", StatusReason: &reason,
		Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{}}}, `"MA=="`)
	if err != nil {
		t.Fatal(err)
	}
	if u.ETag != "MQ==" || u.Status != "disabled" || u.StatusReason == nil || *u.StatusReason != reason {
		t.Errorf("updated device = %+v", u)
	}
	if u.StatusUpdatedTime == iothub.NeverTime {
		t.Error("statusUpdatedTime not set on a status change")
	}
	if *u.Authentication.SymmetricKey != keys {
		t.Error("empty keys in an update replaced the current keys")
	}
	if u.GenerationID != d.GenerationID {
		t.Error("update changed generationId")
	}
	for _, im := range []string{"", "*", `"*"`, "NA==", `W/"NQ=="`, `"Ng=="`} {
		u, err = s.UpdateDevice(iothub.Device{DeviceID: "d"}, im)
		if err != nil {
			t.Fatalf("If-Match %q: %v", im, err)
		}
	}
	if u.ETag != "Nw==" {
		t.Errorf("etag after 7 updates = %q, want Nw==", u.ETag)
	}
	if _, err := s.UpdateDevice(iothub.Device{DeviceID: "nope"}, "*"); !errors.Is(err, ErrNotFound) {
		t.Errorf("update of unknown device: %v", err)
	}
	// Twin reflects identity state.
	tw, _ := s.Twin("d")
	if tw.Status != "disabled" || tw.DeviceETag != u.ETag {
		t.Errorf("twin status/deviceEtag = %q/%q", tw.Status, tw.DeviceETag)
	}
}

func TestDeleteDevice(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	if _, _, err := s.PatchTwin("d", iothub.Twin{Tags: map[string]any{"a": "b"}}, "*"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice("d", `"Mg=="`); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("delete with wrong etag: %v", err)
	}
	if err := s.DeleteDevice("d", `"MA=="`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Twin("d"); !errors.Is(err, ErrNotFound) {
		t.Errorf("twin after delete: %v", err)
	}
	if err := s.DeleteDevice("d", "*"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	mustCreate(t, s, "d")
	tw, _ := s.Twin("d")
	if len(tw.Tags) != 0 || tw.Version != 1 {
		t.Errorf("recreated device has the old twin: %+v", tw)
	}
}

func TestDevicesList(t *testing.T) {
	s, _ := newStore(t)
	for _, id := range []string{"c", "a", "b", "d"} {
		mustCreate(t, s, id)
	}
	ds, _ := s.Devices(0)
	var got []string
	for _, d := range ds {
		got = append(got, d.DeviceID)
	}
	if strings.Join(got, ",") != "a,b,c,d" {
		t.Errorf("Devices(0) = %v", got)
	}
	ds, _ = s.Devices(2)
	if len(ds) != 2 || ds[1].DeviceID != "b" {
		t.Errorf("Devices(2) = %v", ds)
	}
	var seen []string
	_ = s.ForEachTwin(func(tw iothub.Twin) bool {
		seen = append(seen, tw.DeviceID)
		return len(seen) < 3
	})
	if strings.Join(seen, ",") != "a,b,c" {
		t.Errorf("ForEachTwin stopped wrong: %v", seen)
	}
	if s.Count() != 4 {
		t.Errorf("Count = %d", s.Count())
	}
}

func TestNewTwin(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	tw, err := s.Twin("d")
	if err != nil {
		t.Fatal(err)
	}
	if tw.Version != 1 || tw.ETag != "AAAAAAAAAAE=" || tw.DeviceETag != "MA==" || tw.AuthenticationType != "sas" {
		t.Errorf("new twin = %+v", tw)
	}
	if tw.Properties.Desired["$version"] != int64(1) || tw.Properties.Reported["$version"] != int64(1) {
		t.Errorf("new twin versions: %v %v", tw.Properties.Desired["$version"], tw.Properties.Reported["$version"])
	}
	md := tw.Properties.Desired["$metadata"].(map[string]any)
	if md["$lastUpdated"] == nil || md["$lastUpdatedVersion"] != int64(1) {
		t.Errorf("desired $metadata = %v", md)
	}
	if _, ok := tw.Properties.Reported["$metadata"].(map[string]any)["$lastUpdatedVersion"]; ok {
		t.Error("reported $metadata has $lastUpdatedVersion")
	}
	b, _ := s.DeviceTwin("d")
	if string(b) != `{"desired":{"$version":1},"reported":{"$version":1}}` {
		t.Errorf("DeviceTwin = %s", b)
	}
	if _, err := s.DeviceTwin("x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeviceTwin(x) = %v", err)
	}
}

func TestPatchTwin(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	tw, ch, err := s.PatchTwin("d", iothub.Twin{
		Tags:       obj(t, `{"site":{"room":"lab","rack":3}}`),
		Properties: iothub.TwinProperties{Desired: obj(t, `{"interval":5,"cfg":{"a":1,"b":2},"gone":null,"$version":99,"$metadata":{}}`)},
	}, `"AAAAAAAAAAE="`)
	if err != nil {
		t.Fatal(err)
	}
	if tw.Version != 2 || tw.ETag != "AAAAAAAAAAI=" {
		t.Errorf("version/etag = %d/%s", tw.Version, tw.ETag)
	}
	if ch == nil || ch.Version != 2 {
		t.Fatalf("change = %+v", ch)
	}
	if string(ch.Patch) != `{"$version":2,"cfg":{"a":1,"b":2},"gone":null,"interval":5}` {
		t.Errorf("change patch = %s", ch.Patch)
	}
	if got := jsonOf(t, values(tw.Properties.Desired)); got != `{"cfg":{"a":1,"b":2},"interval":5}` {
		t.Errorf("desired = %s", got)
	}
	if got := jsonOf(t, tw.Tags); got != `{"site":{"rack":3,"room":"lab"}}` {
		t.Errorf("tags = %s", got)
	}
	md := tw.Properties.Desired["$metadata"].(map[string]any)
	cfg := md["cfg"].(map[string]any)
	if cfg["$lastUpdatedVersion"] != int64(2) || cfg["a"].(map[string]any)["$lastUpdated"] == nil || md["$lastUpdatedVersion"] != int64(2) {
		t.Errorf("desired $metadata = %v", md)
	}
	aTime := cfg["a"].(map[string]any)["$lastUpdated"]

	// Merge: delete cfg.b, change interval; cfg.a keeps its metadata.
	tw, ch, err = s.PatchTwin("d", iothub.Twin{Properties: iothub.TwinProperties{Desired: obj(t, `{"cfg":{"b":null},"interval":10}`)}}, "*")
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonOf(t, values(tw.Properties.Desired)); got != `{"cfg":{"a":1},"interval":10}` {
		t.Errorf("desired after merge = %s", got)
	}
	md = tw.Properties.Desired["$metadata"].(map[string]any)
	cfg = md["cfg"].(map[string]any)
	if cfg["a"].(map[string]any)["$lastUpdated"] != aTime || cfg["a"].(map[string]any)["$lastUpdatedVersion"] != int64(2) {
		t.Errorf("untouched cfg.a metadata changed: %v", cfg["a"])
	}
	if cfg["$lastUpdatedVersion"] != int64(3) || md["interval"].(map[string]any)["$lastUpdatedVersion"] != int64(3) {
		t.Errorf("changed metadata not bumped: %v", md)
	}
	if ch.Version != 3 || string(ch.Patch) != `{"$version":3,"cfg":{"b":null},"interval":10}` {
		t.Errorf("change = %d %s", ch.Version, ch.Patch)
	}

	// Tags only: no desired change, twin version bumps.
	tw, ch, err = s.PatchTwin("d", iothub.Twin{Tags: obj(t, `{"site":{"rack":null},"owner":"me"}`)}, tw.ETag)
	if err != nil || ch != nil {
		t.Fatalf("tags patch: change %v err %v", ch, err)
	}
	if got := jsonOf(t, tw.Tags); got != `{"owner":"me","site":{"room":"lab"}}` {
		t.Errorf("tags = %s", got)
	}
	if tw.Version != 4 || tw.Properties.Desired["$version"] != int64(3) {
		t.Errorf("versions = %d / %v", tw.Version, tw.Properties.Desired["$version"])
	}

	// Stale etag.
	if _, _, err := s.PatchTwin("d", iothub.Twin{Tags: obj(t, `{"x":1}`)}, `"AAAAAAAAAAE="`); !errors.Is(err, ErrPrecondition) {
		t.Errorf("stale etag: %v", err)
	}
	// Empty patch: no change at all.
	tw2, ch, err := s.PatchTwin("d", iothub.Twin{}, "")
	if err != nil || ch != nil || tw2.Version != tw.Version {
		t.Errorf("empty patch: %v %v %d", ch, err, tw2.Version)
	}
	if _, _, err := s.PatchTwin("nope", iothub.Twin{}, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	// The device view carries desired values.
	b, _ := s.DeviceTwin("d")
	if string(b) != `{"desired":{"$version":3,"cfg":{"a":1},"interval":10},"reported":{"$version":1}}` {
		t.Errorf("DeviceTwin = %s", b)
	}
}

func TestReplaceTwin(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	_, _, err := s.PatchTwin("d", iothub.Twin{Tags: obj(t, `{"a":1}`), Properties: iothub.TwinProperties{
		Desired: obj(t, `{"keep":1,"drop":2,"nest":{"x":1,"y":2}}`)}}, "*")
	if err != nil {
		t.Fatal(err)
	}
	tw, ch, err := s.ReplaceTwin("d", iothub.Twin{Tags: obj(t, `{"b":2}`), Properties: iothub.TwinProperties{
		Desired: obj(t, `{"keep":1,"nest":{"x":1},"new":true,"$version":1}`)}}, "*")
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonOf(t, tw.Tags); got != `{"b":2}` {
		t.Errorf("tags = %s", got)
	}
	if got := jsonOf(t, values(tw.Properties.Desired)); got != `{"keep":1,"nest":{"x":1},"new":true}` {
		t.Errorf("desired = %s", got)
	}
	if ch == nil || string(ch.Patch) != `{"$version":3,"drop":null,"nest":{"y":null},"new":true}` {
		t.Errorf("change = %+v", ch)
	}
	// Same desired again: no change, but the tags are replaced.
	tw, ch, err = s.ReplaceTwin("d", iothub.Twin{Properties: iothub.TwinProperties{Desired: obj(t, `{"keep":1,"nest":{"x":1},"new":true}`)}}, tw.ETag)
	if err != nil || ch != nil || len(tw.Tags) != 0 {
		t.Errorf("identical replace: change %+v err %v tags %v", ch, err, tw.Tags)
	}
	if _, _, err := s.ReplaceTwin("d", iothub.Twin{}, `"AAAAAAAAAAE="`); !errors.Is(err, ErrPrecondition) {
		t.Errorf("stale etag: %v", err)
	}
}

func TestPatchReported(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	v, err := s.PatchReported("d", []byte(`{"fw":"1.0","reboot":{"at":"x","n":1},"$version":7}`))
	if err != nil || v != 2 {
		t.Fatalf("PatchReported = %d, %v", v, err)
	}
	v, err = s.PatchReported("d", []byte(` {"reboot":{"n":null},"fw":null,"big":4503599627370495} `))
	if err != nil || v != 3 {
		t.Fatalf("PatchReported = %d, %v", v, err)
	}
	b, _ := s.DeviceTwin("d")
	if string(b) != `{"desired":{"$version":1},"reported":{"$version":3,"big":4503599627370495,"reboot":{"at":"x"}}}` {
		t.Errorf("DeviceTwin = %s", b)
	}
	tw, _ := s.Twin("d")
	if tw.Version != 3 || tw.Properties.Reported["$version"] != int64(3) {
		t.Errorf("twin version %d reported %v", tw.Version, tw.Properties.Reported["$version"])
	}
	if tw.LastActivityTime == iothub.NeverTime {
		t.Error("reported patch did not set lastActivityTime")
	}
	md := tw.Properties.Reported["$metadata"].(map[string]any)
	if md["reboot"].(map[string]any)["at"].(map[string]any)["$lastUpdated"] == nil {
		t.Errorf("reported $metadata = %v", md)
	}
	var ve *ValidationError
	if _, err := s.PatchReported("d", []byte(`{"a":`)); !errors.As(err, &ve) || ve.Code != iothub.CodeIotHubFormatError {
		t.Errorf("malformed: %v", err)
	}
	if _, err := s.PatchReported("d", []byte(`{"a":1} {}`)); !errors.As(err, &ve) || ve.Code != iothub.CodeIotHubFormatError {
		t.Errorf("trailing data: %v", err)
	}
	for _, p := range []string{`[1]`, `"x"`, `null`, `5`} {
		if _, err := s.PatchReported("d", []byte(p)); !errors.As(err, &ve) || ve.Code != iothub.CodeArgumentInvalid {
			t.Errorf("patch %s: %v", p, err)
		}
	}
	if _, err := s.PatchReported("nope", []byte(`{}`)); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	if v, _ := s.PatchReported("d", []byte(`{}`)); v != 4 {
		t.Errorf("empty patch version = %d, want 4", v)
	}
}

// nested returns a section with depth levels of objects below its root.
func nested(depth int) string {
	var b strings.Builder
	for i := 0; i <= depth; i++ {
		fmt.Fprintf(&b, `{"l%d":`, i)
	}
	b.WriteString(`1`)
	b.WriteString(strings.Repeat("}", depth+1))
	return b.String()
}

func TestValidationLimits(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	big := func(n int) string { return `{"s":"` + strings.Repeat("x", n) + `"}` }
	many := func(total int) string { // several 4000-byte strings adding up to about total bytes
		var parts []string
		for i := 0; i*4010 < total; i++ {
			parts = append(parts, fmt.Sprintf(`"k%d":"%s"`, i, strings.Repeat("y", 4000)))
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	cases := []struct {
		name string
		doc  string
		ok   bool
	}{
		{"plain", `{"a":1,"b":"x","c":true,"d":[1,"2",{"e":null}],"f":1.5e300}`, true},
		{"depth 10", nested(10), true},
		{"depth 11", nested(11), false},
		{"array depth", `{"a":` + strings.Repeat("[", 11) + strings.Repeat("]", 11) + `}`, false},
		{"dot in key", `{"a.b":1}`, false},
		{"dollar in key", `{"a$":1}`, false},
		{"dollar key", `{"$foo":1}`, false},
		{"space in key", `{"a b":1}`, false},
		{"control char", `{"a\u0001":1}`, false},
		{"C1 control char", `{"a\u0085":1}`, false},
		{"nested bad key", `{"a":{"b.c":1}}`, false},
		{"key 1024", `{"` + strings.Repeat("k", 1024) + `":1}`, true},
		{"key 1025", `{"` + strings.Repeat("k", 1025) + `":1}`, false},
		{"string 4096", big(4096), true},
		{"string 4097", big(4097), false},
		{"max int", `{"a":4503599627370495}`, true},
		{"min int", `{"a":-4503599627370496}`, true},
		{"int too big", `{"a":4503599627370496}`, false},
		{"int too small", `{"a":-4503599627370497}`, false},
		{"huge int", `{"a":123456789012345678901234567890}`, false},
		{"float ok", `{"a":4503599627370496.5}`, true},
		{"size under 32KB", many(28000), true},
		{"size over 32KB", many(34000), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Reported, through the device path.
			_, err := s.PatchReported("d", []byte(tc.doc))
			check(t, "reported", err, tc.ok)
			// Desired, through the service path.
			m := obj(t, tc.doc)
			_, _, err = s.PatchTwin("d", iothub.Twin{Properties: iothub.TwinProperties{Desired: m}}, "*")
			check(t, "desired", err, tc.ok)
			// Clean up so sizes do not add up between cases.
			clear := map[string]any{}
			for k := range m {
				clear[k] = nil
			}
			if _, err := s.PatchReported("d", []byte(jsonOf(t, clear))); err != nil && tc.ok {
				t.Fatal(err)
			}
			if _, _, err := s.PatchTwin("d", iothub.Twin{Properties: iothub.TwinProperties{Desired: clear}}, "*"); err != nil && tc.ok {
				t.Fatal(err)
			}
		})
	}
	// Tags are limited to 8 KB.
	_, _, err := s.PatchTwin("d", iothub.Twin{Tags: obj(t, many(7000))}, "*")
	check(t, "tags 7KB", err, true)
	_, _, err = s.PatchTwin("d", iothub.Twin{Tags: obj(t, `{"more":"`+strings.Repeat("z", 1500)+`"}`)}, "*")
	check(t, "tags over 8KB", err, false)
	// A refused write leaves the twin unchanged.
	tw, _ := s.Twin("d")
	if _, ok := tw.Tags["more"]; ok {
		t.Error("refused tags were stored")
	}
}

func check(t *testing.T, what string, err error, ok bool) {
	t.Helper()
	var ve *ValidationError
	switch {
	case ok && err != nil:
		t.Errorf("%s: unexpected error %v", what, err)
	case !ok && !errors.As(err, &ve):
		t.Errorf("%s: error = %v, want ValidationError", what, err)
	case !ok && ve.Code != iothub.CodeArgumentInvalid:
		t.Errorf("%s: code = %d, want %d", what, ve.Code, iothub.CodeArgumentInvalid)
	}
}

func TestConnectionState(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "hub.db")
	s := openAt(t, path, c)
	mustCreate(t, s, "d")
	if err := s.SetConnected("d", true); err != nil {
		t.Fatal(err)
	}
	d, _ := s.Device("d")
	tw, _ := s.Twin("d")
	if d.ConnectionState != "Connected" || tw.ConnectionState != "Connected" || d.ConnectionStateUpdatedTime == iothub.NeverTime {
		t.Errorf("after connect: %+v", d)
	}
	before := d.LastActivityTime
	s.Touch("d")
	s.Touch("unknown")
	d, _ = s.Device("d")
	if d.LastActivityTime <= before {
		t.Errorf("Touch did not advance lastActivityTime: %s <= %s", d.LastActivityTime, before)
	}
	touched := d.LastActivityTime
	if err := s.SetConnected("nope", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetConnected(nope) = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
	// A restarted hub has no connections; Touch survived Close.
	s = openAt(t, path, c)
	defer s.Close()
	d, _ = s.Device("d")
	if d.ConnectionState != "Disconnected" || d.LastActivityTime != touched {
		t.Errorf("after restart: state %s lastActivity %s (want %s)", d.ConnectionState, d.LastActivityTime, touched)
	}
}

// snapshot renders everything observable about the listed devices.
func snapshot(t *testing.T, s *Store, ids ...string) string {
	t.Helper()
	var b strings.Builder
	for _, id := range ids {
		d, err := s.Device(id)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", id, err)
			continue
		}
		tw, _ := s.Twin(id)
		dt, _ := s.DeviceTwin(id)
		fmt.Fprintf(&b, "%s\n%s\n%s\n", jsonOf(t, d), jsonOf(t, tw), dt)
	}
	return b.String()
}

func TestDurability(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "hub.db")
	s := openAt(t, path, c)
	mustCreate(t, s, "a")
	mustCreate(t, s, "b")
	mustCreate(t, s, "gone")
	if _, err := s.UpdateDevice(iothub.Device{DeviceID: "a", Status: "disabled"}, "*"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.PatchTwin("a", iothub.Twin{Tags: obj(t, `{"t":1}`), Properties: iothub.TwinProperties{Desired: obj(t, `{"x":{"y":0.1}}`)}}, "*"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ReplaceTwin("b", iothub.Twin{Properties: iothub.TwinProperties{Desired: obj(t, `{"z":[1,{"q":null}]}`)}}, "*"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PatchReported("b", []byte(`{"r":12345678901234}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice("gone", "*"); err != nil {
		t.Fatal(err)
	}
	want := snapshot(t, s, "a", "b", "gone")

	// A copy of the file taken while the store is still open — what a
	// killed hub leaves behind — holds every acknowledged write.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(dir, "crashed.db")
	if err := os.WriteFile(crashed, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, crashed, c)
	if got := snapshot(t, s2, "a", "b", "gone"); got != want {
		t.Errorf("state after crash:\n%s\nwant:\n%s", got, want)
	}
	p1, _ := s.Policies()
	p2, _ := s2.Policies()
	if !reflect.DeepEqual(p1, p2) {
		t.Error("policies lost in crash copy")
	}
	_ = s2.Close()

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, c)
	defer s.Close()
	if got := snapshot(t, s, "a", "b", "gone"); got != want {
		t.Errorf("state after reopen:\n%s\nwant:\n%s", got, want)
	}
	if ds, _ := s.Devices(0); len(ds) != 2 {
		t.Errorf("%d devices after reopen, want 2", len(ds))
	}
}

func TestConcurrentWriters(t *testing.T) {
	s, _ := newStore(t)
	const devices, writers, rounds = 4, 4, 10
	for i := range devices {
		mustCreate(t, s, fmt.Sprintf("d%d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, devices*writers*rounds*3)
	for i := range devices {
		id := fmt.Sprintf("d%d", i)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					if _, err := s.PatchReported(id, fmt.Appendf(nil, `{"w%d":%d}`, w, r)); err != nil {
						errs <- err
					}
					if _, _, err := s.PatchTwin(id, iothub.Twin{Properties: iothub.TwinProperties{
						Desired: map[string]any{fmt.Sprintf("w%d", w): json.Number(fmt.Sprint(r))}}}, "*"); err != nil {
						errs <- err
					}
					s.Touch(id)
					if _, err := s.DeviceTwin(id); err != nil {
						errs <- err
					}
					if _, err := s.Twin(id); err != nil {
						errs <- err
					}
				}
			}()
		}
	}
	wg.Go(func() {
		for range rounds {
			_ = s.ForEachTwin(func(iothub.Twin) bool { return true })
			_, _ = s.Devices(0)
		}
	})
	testwait.Group(t, &wg, "the concurrent store users")
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range devices {
		tw, _ := s.Twin(fmt.Sprintf("d%d", i))
		if tw.Properties.Reported["$version"] != int64(1+writers*rounds) || tw.Properties.Desired["$version"] != int64(1+writers*rounds) {
			t.Errorf("d%d: versions %v/%v", i, tw.Properties.Reported["$version"], tw.Properties.Desired["$version"])
		}
		if tw.Version != int64(1+2*writers*rounds) {
			t.Errorf("d%d: twin version %d", i, tw.Version)
		}
		if got := jsonOf(t, values(tw.Properties.Reported)); got != `{"w0":9,"w1":9,"w2":9,"w3":9}` {
			t.Errorf("d%d: reported %s", i, got)
		}
	}
}

func TestETagMatches(t *testing.T) {
	cases := []struct {
		ifMatch, cur string
		want         bool
	}{
		{"", "MA==", true}, {"*", "MA==", true}, {`"*"`, "MA==", true}, {`"MA=="`, "MA==", true},
		{"MA==", "MA==", true}, {` "MA==" `, "MA==", true}, {`W/"MA=="`, "MA==", true},
		{`"MQ=="`, "MA==", false}, {`"MA="`, "MA==", false}, {`"`, "MA==", false},
	}
	for _, c := range cases {
		if got := ETagMatches(c.ifMatch, c.cur); got != c.want {
			t.Errorf("ETagMatches(%q, %q) = %v", c.ifMatch, c.cur, got)
		}
	}
	if twinETag(1) != "AAAAAAAAAAE=" || twinETag(2) != "AAAAAAAAAAI=" || identityETag(0) != "MA==" || identityETag(1) != "MQ==" {
		t.Error("etag encodings differ from the real hub's")
	}
}

func TestFlushActivity(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "hub.db")
	s := openAt(t, path, c)
	defer s.Close()
	mustCreate(t, s, "d")
	s.Touch("d")
	d, _ := s.Device("d")
	if err := s.FlushActivity(); err != nil {
		t.Fatal(err)
	}
	if d2, _ := s.Device("d"); d2.LastActivityTime != d.LastActivityTime {
		t.Errorf("flush changed lastActivityTime: %s -> %s", d.LastActivityTime, d2.LastActivityTime)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(dir, "crashed.db")
	if err := os.WriteFile(crashed, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, crashed, c)
	defer s2.Close()
	if d2, _ := s2.Device("d"); d2.LastActivityTime != d.LastActivityTime {
		t.Errorf("flushed lastActivityTime lost in a crash: %s, want %s", d2.LastActivityTime, d.LastActivityTime)
	}
}

// TestOnDesiredOrder checks that the subscriber sees every desired change
// of a device, in $version order, however many writers race, and only
// changes of the desired properties.
func TestOnDesiredOrder(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "d")
	var mu sync.Mutex
	var got []int64
	s.OnDesired(func(id string, version int64, patch []byte) {
		mu.Lock()
		defer mu.Unlock()
		if id != "d" || !strings.Contains(string(patch), fmt.Sprintf(`"$version":%d`, version)) {
			t.Errorf("notified %q version %d patch %s", id, version, patch)
		}
		got = append(got, version)
	})
	const writers, each = 4, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				d := iothub.TwinProperties{Desired: map[string]any{"w": w, "i": i}}
				var err error
				if i%2 == 0 {
					_, _, err = s.PatchTwin("d", iothub.Twin{Properties: d}, "*")
				} else {
					_, _, err = s.ReplaceTwin("d", iothub.Twin{Properties: d}, "*")
				}
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	testwait.Group(t, &wg, "the concurrent writers")
	if _, _, err := s.PatchTwin("d", iothub.Twin{Tags: map[string]any{"only": "tags"}}, "*"); err != nil {
		t.Fatal(err)
	}
	s.OnDesired(nil)
	if _, _, err := s.PatchTwin("d", iothub.Twin{Properties: iothub.TwinProperties{Desired: map[string]any{"after": 1}}}, "*"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != writers*each {
		t.Fatalf("%d notifications, want %d", len(got), writers*each)
	}
	for i, v := range got {
		if v != int64(i+2) { // version 1 is the new twin's
			t.Fatalf("notification %d has $version %d, want %d (order %v)", i, v, i+2, got)
		}
	}
}
