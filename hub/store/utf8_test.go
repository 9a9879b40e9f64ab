package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestCheckJSONText(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string // "" accepted, else a part of the message
	}{
		{`{"a":"café ✓ \u00e9"}`, ""},
		{`{"a":"\ud83d\ude00"}`, ""},
		{`{"a":"\\ud800"}`, ""}, // an escaped backslash, then text
		{`{"a":"\"\ud800"}`, `\ud800 at byte 8`},
		{`{"a":"\ud800"}`, `\ud800 at byte 6`},
		{`{"a":"\uDC00x"}`, `\udc00`},
		{`{"a":"\ud800\u0041"}`, `\ud800`},
		{`{"a":"\ud800`, `\ud800`},
		{`{"a":"\u12"}`, ""}, // malformed: left to the decoder
		{"{\"a\":\"caf\xe9\"}", "byte 9 (0xe9) is not valid UTF-8"},
		{"{\"caf\xc3\":1}", "byte 5 (0xc3)"},
		{"\xef\xbf\xbd", ""},              // U+FFFD itself is text
		{"\xed\xa0\x80", "byte 0 (0xed)"}, // a surrogate encoded as UTF-8
	} {
		err := CheckJSONText([]byte(c.in))
		if c.want == "" {
			if err != nil {
				t.Errorf("CheckJSONText(%q) = %v, want nil", c.in, err)
			}
			continue
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Code != iothub.CodeIotHubFormatError || !strings.Contains(ve.Msg, c.want) || !strings.Contains(ve.Msg, "UTF-8") {
			t.Errorf("CheckJSONText(%q) = %v, want an IotHubFormatError with %q", c.in, err, c.want)
		}
	}
}

func TestValidDeviceIDNamesCharactersAsRunes(t *testing.T) {
	for _, c := range []struct{ id, want string }{
		{"été", `deviceId "été" contains 'é'`},
		{"d✓", `deviceId "d✓" contains '✓'`},
		{"caf\xe9", `deviceId "caf\xe9" is not valid UTF-8`},
	} {
		err := ValidDeviceID(c.id)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ValidDeviceID(%q) = %v, want %s", c.id, err, c.want)
		}
	}
	err := ValidModuleID("m✓")
	if err == nil || !strings.Contains(err.Error(), `moduleId "m✓" contains '✓'`) {
		t.Errorf("ValidModuleID(m✓) = %v", err)
	}
}
