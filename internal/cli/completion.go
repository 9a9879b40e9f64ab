package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

// The completion scripts ask dmctl itself for the words that can follow
// what is typed ('dmctl service --generate-bash-completion' lists the
// service commands; after a word starting with "-", the command's flags), so
// they never go stale.
const bashCompletion = `# bash completion for dmctl; load with: source <(dmctl completion bash)
_dmctl_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}" words
  if [[ "$cur" == -* ]]; then
    words="$("${COMP_WORDS[@]:0:COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)"
  else
    words="$("${COMP_WORDS[@]:0:COMP_CWORD}" --generate-bash-completion 2>/dev/null)"
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _dmctl_complete dmctl
`

const zshCompletion = `#compdef dmctl
# zsh completion for dmctl; put it in a folder of $fpath as _dmctl, or load
# it with: source <(dmctl completion zsh)
_dmctl() {
  local -a words_
  local cur="${words[CURRENT]}"
  if [[ "$cur" == -* ]]; then
    words_=(${(f)"$("${words[@]:0:CURRENT-1}" "$cur" --generate-bash-completion 2>/dev/null)"})
  else
    words_=(${(f)"$("${words[@]:0:CURRENT-1}" --generate-bash-completion 2>/dev/null)"})
  fi
  if (( ${#words_} )); then
    compadd -a words_
  else
    _files
  fi
}
if [[ "$funcstack[1]" == _dmctl ]]; then
  _dmctl "$@"
else
  compdef _dmctl dmctl
fi
`

const fishCompletion = `# fish completion for dmctl; save as ~/.config/fish/completions/dmctl.fish
function __dmctl_complete
    set -l args (commandline -opc)
    set -l cur (commandline -ct)
    if string match -q -- '-*' $cur
        $args $cur --generate-bash-completion 2>/dev/null
    else
        $args --generate-bash-completion 2>/dev/null
    end
end
complete -c dmctl -f -a '(__dmctl_complete)'
`

var completionScripts = map[string]string{
	"bash": bashCompletion,
	"zsh":  zshCompletion,
	"fish": fishCompletion,
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: `Prints a script that completes dmctl's commands and flags in the shell
named. The script asks dmctl for the words that fit, so it follows the
dmctl on PATH.`,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("name the shell: dmctl completion bash, zsh or fish", "expected one shell argument, got %d", c.NArg())
			}
			script, ok := completionScripts[c.Args().First()]
			if !ok {
				return usageErrorf("use bash, zsh or fish", "no completion for shell %q", c.Args().First())
			}
			_, err := io.WriteString(c.App.Writer, script)
			return err
		},
	}
}

func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print dmctl's manual page (roff)",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("run 'dmctl man --help' for usage", "unexpected argument %q", c.Args().First())
			}
			page, err := manPage()
			if err != nil {
				return err
			}
			_, err = io.WriteString(c.App.Writer, page)
			return err
		},
	}
}

// manPage renders the manual page of a fresh command tree, without the
// help subcommands every command has.
func manPage() (string, error) {
	app := newApp(io.Discard, io.Discard)
	var strip func([]*cli.Command) []*cli.Command
	strip = func(cmds []*cli.Command) []*cli.Command {
		var out []*cli.Command
		for _, c := range cmds {
			if c.Name == helpTemplate.Name {
				continue
			}
			c.Subcommands = strip(c.Subcommands)
			out = append(out, c)
		}
		return out
	}
	app.Commands = strip(app.Commands)
	page, err := app.ToManWithSection(1)
	if err != nil {
		return "", fmt.Errorf("render the manual page: %w", err)
	}
	return page, nil
}
