package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

func serviceTwinShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print a device twin: a summary, or the whole twin with -o json",
		Flags: serviceFlags(deviceFlag()),
		Action: serviceAction(requireDevice, func(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
			twin, err := s.Twin(c.Context, id)
			if err != nil {
				return nil, nil, err
			}
			return twin, func(w io.Writer) error { return printTwinText(w, twin) }, nil
		}),
	}
}

func serviceTwinUpdateCommand() *cli.Command {
	return &cli.Command{
		Name:  "update",
		Usage: "merge tags and desired properties into a device twin",
		Description: `Patches the twin: members of --tags and --desired are merged in, and a
member set to null is removed. With --etag the update applies only if the
twin still has that etag (exit code 1 with a hint otherwise).`,
		Flags: serviceFlags(
			deviceFlag(),
			&cli.StringFlag{Name: "desired", Usage: "desired properties to merge (JSON object)"},
			&cli.StringFlag{Name: "tags", Usage: "tags to merge (JSON object)"},
			&cli.StringFlag{Name: "etag", Usage: "update only if the twin's etag is still this one"},
		),
		Action: serviceAction(twinUpdateArgs, func(c *cli.Context, s *service.Client, a twinUpdate) (any, func(io.Writer) error, error) {
			twin, err := s.UpdateTwin(c.Context, a.id, a.patch, c.String("etag"))
			if err != nil {
				return nil, nil, err
			}
			return twin, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Updated the twin of device %s (version %d, etag %s).\n", twin.DeviceID, twin.Version, twin.ETag)
				return err
			}, nil
		}),
	}
}

type twinUpdate struct {
	id    string
	patch service.TwinPatch
}

func twinUpdateArgs(c *cli.Context) (twinUpdate, error) {
	id, err := requireDevice(c)
	if err != nil {
		return twinUpdate{}, err
	}
	desired, err := jsonObjectFlag(c, "desired")
	if err != nil {
		return twinUpdate{}, err
	}
	tags, err := jsonObjectFlag(c, "tags")
	if err != nil {
		return twinUpdate{}, err
	}
	if desired == nil && tags == nil {
		return twinUpdate{}, usageErrorf(`give --desired '{"key": value}' and/or --tags '{"key": value}'`, "nothing to update")
	}
	return twinUpdate{id, service.TwinPatch{Tags: tags, Desired: desired}}, nil
}
