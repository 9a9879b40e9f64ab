package cli

import (
	"slices"
	"testing"
)

func TestSuggest(t *testing.T) {
	for _, tc := range []struct {
		word  string
		names []string
		want  []string
	}{
		{"servce", []string{"device", "service", "hub", "sas", "demo"}, []string{"service"}},
		{"rebot", []string{"reboot", "invoke", "twin", "query"}, []string{"reboot"}},
		{"device-id", []string{"connection-string", "device", "d", "output"}, []string{"device"}},
		{"timeout", []string{"device", "response-timeout", "connect-timeout", "wait-timeout"}, []string{"response-timeout", "connect-timeout", "wait-timeout"}},
		{"rbeoot", []string{"reboot"}, []string{"reboot"}},
		{"x", []string{"xyz", "o"}, nil},
		{"banana", []string{"reboot", "twin"}, nil},
	} {
		if got := suggest(tc.word, tc.names); !slices.Equal(got, tc.want) {
			t.Errorf("suggest(%q) = %q, want %q", tc.word, got, tc.want)
		}
	}
}
