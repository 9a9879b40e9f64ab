package cli

import (
	"errors"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

// serviceCall is the part of a service command that talks to the hub. It
// gets the client and what the command's parse function read from the
// flags, and returns what to print: jsonValue for -o json (printed with
// printJSON), text for text output; a nil one prints nothing. What it
// returns is printed even with an error: a reboot that was not confirmed
// still shows the device's answer.
type serviceCall[A any] func(c *cli.Context, s *service.Client, args A) (jsonValue any, text func(io.Writer) error, err error)

// serviceAction is the skeleton of every service command:
//
//  1. parse reads and checks the flags, required ones first, before a
//     client exists, so bad input never reaches the network;
//  2. the client is built from --connection-string and --ca-file, and
//     closed at the end;
//  3. call does the work;
//  4. its result is printed as -o asks;
//  5. its error goes through moduleError and serviceError, with --device
//     and --module for the hints that name them.
func serviceAction[A any](parse func(*cli.Context) (A, error), call serviceCall[A]) cli.ActionFunc {
	return func(c *cli.Context) error {
		args, err := parse(c)
		if err != nil {
			return err
		}
		client, err := newServiceClient(c)
		if err != nil {
			return err
		}
		defer client.Close()
		jsonValue, text, err := call(c, client, args)
		if perr := printResult(c, jsonValue, text); perr != nil && err == nil {
			err = perr
		}
		err = moduleError(err, c.String("device"), c.String("module"))
		return serviceError(err, c.String("device"), c.Duration("connect-timeout"))
	}
}

// printResult prints a command's result as JSON or text, as -o asks.
func printResult(c *cli.Context, jsonValue any, text func(io.Writer) error) error {
	switch {
	case jsonOutput(c):
		if jsonValue != nil {
			return printJSON(c.App.Writer, jsonValue)
		}
	case text != nil:
		return text(c.App.Writer)
	}
	return nil
}

// noFlags is the parse step of a command with nothing to check.
func noFlags(*cli.Context) (struct{}, error) { return struct{}{}, nil }

// hinted reports whether err already carries a hint or an exit code of
// dmctl's own; serviceError leaves such errors as they are.
func hinted(err error) bool {
	var ee *exitError
	return errors.As(err, &ee)
}
