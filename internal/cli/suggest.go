package cli

import (
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/editdist"
)

// unknownCommand is the usage error for a word that names no subcommand of
// c's command (or of the app), with the nearest names as a suggestion.
func unknownCommand(c *cli.Context) error {
	word := c.Args().First()
	var subs []*cli.Command
	where := "dmctl"
	if c.Command != nil && c.Command.Name != "" {
		subs, where = c.Command.Subcommands, c.Command.HelpName
	}
	if len(subs) == 0 {
		subs = c.App.Commands
	}
	var names []string
	for _, s := range subs {
		if !s.Hidden {
			names = append(names, s.Names()...)
		}
	}
	return usageErrorf(didYouMean(suggest(word, names), `"`)+"run '"+where+" --help' for the list of commands",
		"unknown command %q", word)
}

// flagSuggestion is the "did you mean" start of the hint for a flag-parsing
// error naming an undefined flag, or "".
func flagSuggestion(c *cli.Context, err error) string {
	const notDefined = "flag provided but not defined: "
	msg := err.Error()
	if !strings.HasPrefix(msg, notDefined) {
		return ""
	}
	word := strings.TrimLeft(strings.TrimPrefix(msg, notDefined), "-")
	var flags []cli.Flag
	if c.Command != nil && c.Command.Name != "" {
		flags = c.Command.Flags
	} else {
		flags = c.App.Flags
	}
	var names []string
	for _, f := range flags {
		if v, ok := f.(cli.VisibleFlag); ok && !v.IsVisible() {
			continue
		}
		names = append(names, f.Names()...)
	}
	found := suggest(word, names)
	for i, n := range found {
		found[i] = "-" + n
		if len(n) > 1 {
			found[i] = "--" + n
		}
	}
	return didYouMean(found, `"`)
}

// didYouMean phrases names as the start of a hint: `did you mean "a"? `,
// `did you mean "a" or "b"? `; nothing when there are none.
func didYouMean(names []string, quote string) string {
	if len(names) == 0 {
		return ""
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quote + n + quote
	}
	list := q[len(q)-1]
	if len(q) > 1 {
		list = strings.Join(q[:len(q)-1], ", ") + " or " + list
	}
	return "did you mean " + list + "? "
}

// suggest returns the names nearest to word: those a few edits away
// (nearest first; "rebot" for "reboot", "servce" for "service"), else those
// that share whole dash-separated parts with it ("device-id" for "device",
// "timeout" for "wait-timeout"), in their order. One-letter words and names
// are left out.
func suggest(word string, names []string) []string {
	word = strings.ToLower(word)
	if len(word) < 2 {
		return nil // one letter is as near to every other as to none
	}
	seen := map[string]bool{}
	var uniq []string
	for _, n := range names {
		if !seen[n] && len(n) > 1 && n != word {
			seen[n] = true
			uniq = append(uniq, n)
		}
	}
	maxEdits := 1
	switch {
	case len(word) > 8:
		maxEdits = 3
	case len(word) > 4:
		maxEdits = 2
	}
	best, near := maxEdits+1, []string(nil)
	for _, n := range uniq {
		d := editdist.Distance(word, n)
		switch {
		case d < best:
			best, near = d, []string{n}
		case d == best:
			near = append(near, n)
		}
	}
	if near != nil {
		return limit(near)
	}
	var parts []string
	for _, n := range uniq {
		if sharesParts(word, n) {
			parts = append(parts, n)
		}
	}
	return limit(parts)
}

func limit(names []string) []string {
	const max = 4
	if len(names) > max {
		return names[:max]
	}
	return names
}

// sharesParts reports whether the dash-separated parts of the shorter of a
// and b all appear, in order and adjacent, in the longer.
func sharesParts(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	return strings.HasPrefix(b, a+"-") || strings.HasSuffix(b, "-"+a) || strings.Contains(b, "-"+a+"-")
}
