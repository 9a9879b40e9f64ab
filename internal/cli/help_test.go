package cli

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// leafCommand is a command without subcommands (help commands left out),
// with its path under dmctl.
type leafCommand struct {
	path string
	cmd  *cli.Command
}

func leafCommands() []leafCommand {
	var out []leafCommand
	var walk func(cmds []*cli.Command, parent string)
	walk = func(cmds []*cli.Command, parent string) {
		for _, c := range cmds {
			if c.Name == helpTemplate.Name {
				continue
			}
			path := strings.TrimSpace(parent + " " + c.Name)
			var subs []*cli.Command
			for _, s := range c.Subcommands {
				if s.Name != helpTemplate.Name {
					subs = append(subs, s)
				}
			}
			if len(subs) == 0 {
				out = append(out, leafCommand{path, c})
			}
			walk(subs, path)
		}
	}
	walk(newApp(io.Discard, io.Discard).Commands, "")
	return out
}

func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(context.Background(), append([]string{"dmctl"}, args...), strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

// examplesIn returns the lines of the EXAMPLES section of a help text.
func examplesIn(help string) []string {
	_, sec, ok := strings.Cut(help, "\nEXAMPLES:\n")
	if !ok {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(sec, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

var flagToken = regexp.MustCompile(`^--?([a-z][a-z0-9-]*)`)

// TestHelpExamples walks the whole command tree: every leaf command's help
// has an EXAMPLES section whose command lines run that command (by name or
// alias) with flags it has.
func TestHelpExamples(t *testing.T) {
	leaves := leafCommands()
	if len(leaves) < 20 {
		t.Fatalf("found %d leaf commands; the walk is broken", len(leaves))
	}
	known := map[string]bool{}
	for _, leaf := range leaves {
		known[leaf.path] = true
		t.Run(leaf.path, func(t *testing.T) {
			code, out, errOut := runMain(t, append(strings.Fields(leaf.path), "--help")...)
			if code != 0 {
				t.Fatalf("--help exited %d: %s", code, errOut)
			}
			lines := examplesIn(out)
			if len(lines) == 0 {
				t.Fatalf("no EXAMPLES in 'dmctl %s --help':\n%s", leaf.path, out)
			}
			commands := 0
			for _, l := range lines {
				if strings.HasPrefix(l, "#") {
					continue
				}
				found := false
				for _, seg := range strings.Split(l, " | ") {
					if words, ok := runsCommand(seg, leaf.path, leaf.cmd); ok {
						found = true
						checkFlags(t, l, words, leaf.cmd)
					}
				}
				if !found {
					t.Errorf("example %q does not run 'dmctl %s'", l, leaf.path)
				}
				commands++
			}
			if commands == 0 {
				t.Errorf("EXAMPLES of %q has comments only", leaf.path)
			}
		})
	}
	for path := range examples {
		if !known[path] {
			t.Errorf("examples for %q, which is no leaf command", path)
		}
	}
}

// runsCommand reports whether a shell command line runs dmctl path (the last
// word may be an alias), and returns the words after it.
func runsCommand(line, path string, cmd *cli.Command) ([]string, bool) {
	words := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "source <("))
	want := append([]string{"dmctl"}, strings.Fields(path)...)
	if len(words) < len(want) {
		return nil, false
	}
	for i, w := range want[:len(want)-1] {
		if words[i] != w {
			return nil, false
		}
	}
	if !slices.Contains(cmd.Names(), words[len(want)-1]) {
		return nil, false
	}
	return words[len(want):], true
}

func checkFlags(t *testing.T, line string, words []string, cmd *cli.Command) {
	t.Helper()
	var names []string
	for _, f := range cmd.Flags {
		names = append(names, f.Names()...)
	}
	for _, w := range words {
		if w == "|" || w == "&&" || strings.HasPrefix(w, ">") {
			return
		}
		if m := flagToken.FindStringSubmatch(w); m != nil && !slices.Contains(names, m[1]) {
			t.Errorf("example %q: the command has no flag %q", line, w)
		}
	}
}

// TestHelpMarks: required flags say so in help, and those marks are true
// (the command refuses to run without the flag, exit 2); no bool flag says
// "(default: false)"; the query command's usage line has no "[flags]".
func TestHelpMarks(t *testing.T) {
	t.Setenv("IOTHUB_CONNECTION_STRING", "HostName=127.0.0.1:1;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleQ==")
	for _, leaf := range leafCommands() {
		_, help, _ := runMain(t, append(strings.Fields(leaf.path), "--help")...)
		if strings.Contains(help, "(default: false)") {
			t.Errorf("'dmctl %s --help' says (default: false):\n%s", leaf.path, help)
		}
		for flag, note := range requiredFlags[leaf.path] {
			if !regexp.MustCompile(`(?m)^\s+--` + flag + ` .*\(` + regexp.QuoteMeta(note) + `\)$`).MatchString(help) {
				t.Errorf("'dmctl %s --help' does not mark --%s (%s):\n%s", leaf.path, flag, note, help)
			}
			args := strings.Fields(leaf.path)
			for other, n := range requiredFlags[leaf.path] {
				if other != flag && n == "required" {
					args = append(args, "--"+other, "x")
				}
			}
			code, _, errOut := runMain(t, args...)
			if code != exitUsage || !strings.Contains(errOut, "dmctl: error: missing --"+flag) || !strings.Contains(errOut, "dmctl: hint: ") {
				t.Errorf("dmctl %s: exit %d, want 2 with 'missing --%s' and a hint:\n%s", strings.Join(args, " "), code, flag, errOut)
			}
		}
	}
	for path := range requiredFlags {
		if _, ok := examples[path]; !ok {
			t.Errorf("required flags for %q, which has no examples (no leaf command?)", path)
		}
	}
	_, help, _ := runMain(t, "service", "query", "--help")
	if !strings.Contains(help, "\n   dmctl service query [command options] \"SELECT ... FROM devices [WHERE ...]\"\n") {
		t.Errorf("query usage line:\n%s", help)
	}
}
