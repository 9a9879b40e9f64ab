package editdist

import "testing"

func TestDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"service", "service", 0},
		{"servce", "service", 1},
		{"reobot", "reboot", 1}, // an adjacent swap is one edit
		{"rebtoo", "reboot", 2},
		{"rebot", "reboot", 1},
		{"", "abc", 3},
		{"device-id", "device", 3},
		{"ünï", "uni", 2}, // runes, not bytes
	} {
		if got := Distance(tc.a, tc.b); got != tc.want {
			t.Errorf("Distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
