package store

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
)

// FuzzTwinJSON feeds arbitrary bytes to the twin JSON paths: DecodeObject,
// ValidateTwinPatch, PatchTwin (tags and desired) and PatchReported (the
// device's MQTT patch). None may panic; every refusal is a
// *ValidationError; whatever is accepted is stored as valid UTF-8 JSON.
// The store is opened once and reused by every input.
func FuzzTwinJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"a":{"b":{"c":[1,2,{"d":null}]}}}`, `{"$version":3,"a":"x"}`,
		`{"a":"caf` + "\xe9" + `"}`, `{"a":"\ud800"}`, `{"a":"\ud83d\ude00"}`, `{"a":"\\ud800"}`,
		`{"a.b":1}`, `{"":1}`, `{"a":1e400}`, `{"a":4503599627370496}`, `[1]`, `null`, `{"a":1} x`, ``,
		`{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{"k":1}}}}}}}}}}}`,
	} {
		f.Add([]byte(s))
	}
	s, err := Open(filepath.Join(f.TempDir(), "hub.db"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	if _, err := s.CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		f.Fatal(err)
	}
	refused := func(t *testing.T, what string, b []byte, err error) bool {
		t.Helper()
		if err == nil {
			return false
		}
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("%s(%q): error %T %v is not a *ValidationError", what, b, err, err)
		}
		if ve.Code/1000 != 400 {
			t.Fatalf("%s(%q): code %d is not a 400", what, b, ve.Code)
		}
		return true
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeObject(b)
		if !refused(t, "DecodeObject", b, err) {
			if !utf8.Valid(b) {
				t.Fatalf("DecodeObject accepted bytes that are not UTF-8: %q", b)
			}
			for _, patch := range []iothub.Twin{{Tags: m}, {Properties: iothub.TwinProperties{Desired: m}}} {
				if refused(t, "ValidateTwinPatch", b, ValidateTwinPatch(patch)) {
					continue
				}
				_, _, err := s.PatchTwin("d1", patch, "")
				refused(t, "PatchTwin", b, err)
			}
		}
		_, err = s.PatchReported("d1", b)
		refused(t, "PatchReported", b, err)
		tw, err := s.Twin("d1")
		if err != nil {
			t.Fatal(err)
		}
		out, err := json.Marshal(tw)
		if err != nil || !utf8.Valid(out) || !json.Valid(out) {
			t.Fatalf("stored twin does not render as UTF-8 JSON after %q: %v", b, err)
		}
	})
}
