package cli

import "runtime/debug"

// version is set at release time with
// -ldflags "-X github.com/dmctl/dmctl/internal/cli.version=...".
var version = ""

// resolveVersion returns the release version, else the module version that
// `go install` recorded, else "devel".
func resolveVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
