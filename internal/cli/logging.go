package cli

import (
	"os"

	"github.com/rs/zerolog"
)

// Durations in logs carry their unit ("took":"6.006s"), not a bare number
// of milliseconds. zerolog only has a package-wide setting for it; it is set
// once, before any logger exists.
func init() {
	zerolog.DurationFieldFormat = zerolog.DurationFormatString
}

// noColor reports whether console logs must be plain text: NO_COLOR set
// (https://no-color.org) or a terminal that cannot show colour (TERM=dumb).
func noColor(getenv func(string) string) bool {
	return getenv("NO_COLOR") != "" || getenv("TERM") == "dumb"
}

// osNoColor is noColor for this process's environment.
func osNoColor() bool { return noColor(os.Getenv) }
