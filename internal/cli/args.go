package cli

import (
	"github.com/urfave/cli/v2"
)

// rejectArgs makes a leaf command that takes no positional argument (no
// ArgsUsage) refuse one as a usage error, instead of ignoring it.
func rejectArgs(cmd *cli.Command) {
	if cmd.Action == nil || len(cmd.Subcommands) > 0 || cmd.ArgsUsage != "" {
		return
	}
	action := cmd.Action
	cmd.Action = func(c *cli.Context) error {
		if c.NArg() > 0 {
			return usageErrorf("run '"+c.Command.HelpName+" --help' for usage; it takes flags only",
				"unexpected argument %q", c.Args().First())
		}
		return action(c)
	}
}
