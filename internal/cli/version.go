package cli

import (
	"runtime/debug"
	"strings"
)

// version is set at release time with
// -ldflags "-X github.com/dmctl/dmctl/internal/cli.version=...".
var version = ""

// resolveVersion returns the release version, else what the build recorded
// (see formatVersion).
func resolveVersion() string {
	if version != "" {
		return version
	}
	bi, _ := debug.ReadBuildInfo()
	return formatVersion(bi)
}

// formatVersion describes a build from its build info: the module version
// `go install ...@v1.2.3` recorded; for a build from a git checkout, the
// commit, its time and whether the tree had changes ("3f2a1c9d8e7b
// (2026-11-30T10:00:00Z, modified)"), which says more than the
// pseudo-version Go derives from them; else "devel".
func formatVersion(bi *debug.BuildInfo) string {
	if bi == nil {
		return "devel"
	}
	var rev, when string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	v := bi.Main.Version
	if v != "" && v != "(devel)" && !isPseudoVersionOf(v, rev) {
		return v
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	var notes []string
	if when != "" {
		notes = append(notes, when)
	}
	if modified {
		notes = append(notes, "modified")
	}
	if len(notes) == 0 {
		return rev
	}
	return rev + " (" + strings.Join(notes, ", ") + ")"
}

// isPseudoVersionOf reports whether v is the version Go makes up for the
// untagged commit rev: v0.0.0-20261130100000-3f2a1c9d8e7b, maybe +dirty.
func isPseudoVersionOf(v, rev string) bool {
	v = strings.TrimSuffix(v, "+dirty")
	i := strings.LastIndexByte(v, '-')
	return rev != "" && i >= 0 && len(v)-i-1 == 12 && strings.HasPrefix(rev, v[i+1:])
}
