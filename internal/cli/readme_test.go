package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// invocation is one dmctl command line: its command words and flag names.
type invocation struct {
	words []string
	flags []string
	line  string
}

var (
	wordRE = regexp.MustCompile(`^[a-z][a-z-]*$`)
	stopRE = regexp.MustCompile(`[|&;>)#]`)
)

// invocations finds every "dmctl ..." command in text.
func invocations(text string) []invocation {
	var out []invocation
	for _, line := range strings.Split(text, "\n") {
		rest := line
		for {
			i := strings.Index(rest, "dmctl ")
			if i < 0 {
				break
			}
			if i > 0 && (rest[i-1] == '/' || rest[i-1] == '-' || rest[i-1] == '.' || isLetter(rest[i-1])) {
				rest = rest[i+len("dmctl "):]
				continue
			}
			rest = rest[i+len("dmctl "):]
			cmd := rest
			if j := stopRE.FindStringIndex(cmd); j != nil {
				cmd = cmd[:j[0]]
			}
			inv := invocation{line: strings.TrimSpace(line)}
			fields := strings.Fields(cmd)
			k := 0
			for ; k < len(fields) && wordRE.MatchString(fields[k]); k++ {
				inv.words = append(inv.words, fields[k])
			}
			for _, f := range fields[k:] {
				if strings.HasPrefix(f, "-") {
					name, _, _ := strings.Cut(f, "=")
					if name == "-o" {
						name = "--output"
					}
					inv.flags = append(inv.flags, name)
				}
			}
			if len(inv.words) > 0 {
				out = append(out, inv)
			}
		}
	}
	return out
}

func isLetter(b byte) bool { return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' }

// TestReadmeExamplesAreRun checks that every dmctl command the README shows
// is run, with at least the same flags, by an end-to-end script (or sits in
// a README block that a script runs as is).
func TestReadmeExamplesAreRun(t *testing.T) {
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	var tested []invocation
	files, _ := filepath.Glob(filepath.Join("testdata", "script", "*.txtar"))
	files = append(files, filepath.Join(repoRoot, "scripts", "ci-smoke.sh"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		tested = append(tested, invocations(string(b))...)
		for _, m := range regexp.MustCompile(`readmeblock ([a-z-]+)`).FindAllStringSubmatch(string(b), -1) {
			block, err := readmeBlock(readmePath, m[1])
			if err != nil {
				t.Fatal(err)
			}
			tested = append(tested, invocations(block)...)
		}
	}
	var code strings.Builder
	for _, part := range strings.Split(string(readme), "```sh\n")[1:] {
		block, _, _ := strings.Cut(part, "```")
		code.WriteString(block)
	}
	examples := invocations(code.String())
	if len(examples) < 10 {
		t.Fatalf("found only %d dmctl examples in README.md; the parser is broken", len(examples))
	}
	for _, ex := range examples {
		if !slices.ContainsFunc(tested, func(s invocation) bool { return covers(s, ex) }) {
			t.Errorf("README example not run by any script in testdata/script: %s", ex.line)
		}
	}
}

func covers(script, example invocation) bool {
	if !slices.Equal(script.words, example.words) {
		return false
	}
	for _, f := range example.flags {
		if !slices.Contains(script.flags, f) {
			return false
		}
	}
	return true
}
