package query

import (
	"errors"
	"testing"
)

func TestConfigurationStatusPath(t *testing.T) {
	doc := map[string]any{
		"deviceId": "d1",
		"configurations": map[string]any{
			"fw-2.0;x": map[string]any{"status": "Applied"},
			"other":    map[string]any{"status": "Targeted"},
		},
	}
	cases := map[string]bool{
		"SELECT deviceId FROM devices WHERE configurations.[[fw-2.0;x]].status = 'Applied'":    true,
		"SELECT deviceId FROM devices WHERE configurations. [[other]].status = 'Applied'":      false,
		"SELECT deviceId FROM devices WHERE configurations.[[other]].status = 'Targeted'":      true,
		"SELECT deviceId FROM devices WHERE configurations.[[missing]].status = 'Applied'":     false,
		"SELECT deviceId FROM devices WHERE NOT is_defined(configurations.[[missing]].status)": true,
	}
	for q, want := range cases {
		p, err := Parse(q)
		if err != nil {
			t.Errorf("Parse(%q): %v", q, err)
			continue
		}
		if got := p.Match(doc); got != want {
			t.Errorf("%q matched %v, want %v", q, got, want)
		}
	}
	for _, q := range []string{
		"SELECT * FROM devices WHERE configurations.[[x].status = 'Applied'",
		"SELECT * FROM devices WHERE configurations.[[]].status = 'Applied'",
	} {
		var se *SyntaxError
		if _, err := Parse(q); !errors.As(err, &se) {
			t.Errorf("Parse(%q): %v, want a syntax error", q, err)
		}
	}
}
