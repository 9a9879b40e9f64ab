package cli

import (
	"io"
	"os"

	"github.com/mattn/go-isatty"
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

// liveTerminal reports whether w is a terminal that can redraw a line in
// place (carriage return and erase-line): a terminal, or a Cygwin/MSYS
// one, whose TERM is not "dumb".
func liveTerminal(w io.Writer, getenv func(string) string) bool {
	f, ok := w.(*os.File)
	if !ok || getenv("TERM") == "dumb" {
		return false
	}
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}
