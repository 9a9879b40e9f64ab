package cli

import (
	"runtime/debug"
	"testing"
)

func TestFormatVersion(t *testing.T) {
	vcs := func(rev, when, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: when}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "3f2a1c9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"no build info", nil, "devel"},
		{"go install @version", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{"tagged checkout", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs(rev, "2026-11-30T10:00:00Z", "false")}, "v1.2.3"},
		{"checkout, old go", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "2026-11-30T10:00:00Z", "false")},
			"3f2a1c9d8e7b (2026-11-30T10:00:00Z)"},
		{"checkout with changes", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261130100000-3f2a1c9d8e7b+dirty"}, Settings: vcs(rev, "2026-11-30T10:00:00Z", "true")},
			"3f2a1c9d8e7b (2026-11-30T10:00:00Z, modified)"},
		{"pseudo-version, no vcs", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261130100000-3f2a1c9d8e7b"}}, "v0.0.0-20261130100000-3f2a1c9d8e7b"},
		{"devel, no vcs", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
	} {
		if got := formatVersion(tc.bi); got != tc.want {
			t.Errorf("%s: formatVersion = %q, want %q", tc.name, got, tc.want)
		}
	}
}
