package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

func serviceTwinShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print a device (or module) twin: a summary, or the whole twin with -o json",
		Flags: serviceFlags(deviceFlag(), moduleFlag("show the twin of this module of the device")),
		Action: serviceAction(requireDevice, func(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
			var twin *iothub.Twin
			var err error
			if m := c.String("module"); m != "" {
				twin, err = s.ModuleTwin(c.Context, id, m)
			} else {
				twin, err = s.Twin(c.Context, id)
			}
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
		Usage: "merge tags and desired properties into a device (or module) twin",
		Description: `Patches the twin: members of --tags and --desired are merged in, and a
member set to null is removed. With --etag the update applies only if the
twin still has that etag (exit code 1 with a hint otherwise). With --module
the module's twin is patched.`,
		Flags: serviceFlags(
			deviceFlag(),
			moduleFlag("update the twin of this module of the device"),
			&cli.StringFlag{Name: "desired", Usage: "desired properties to merge (JSON object)"},
			&cli.StringFlag{Name: "tags", Usage: "tags to merge (JSON object)"},
			&cli.StringFlag{Name: "etag", Usage: "update only if the twin's etag is still this one"},
		),
		Action: serviceAction(twinUpdateArgs, func(c *cli.Context, s *service.Client, a twinUpdate) (any, func(io.Writer) error, error) {
			var twin *iothub.Twin
			var err error
			if a.module != "" {
				twin, err = s.UpdateModuleTwin(c.Context, a.id, a.module, a.patch, c.String("etag"))
			} else {
				twin, err = s.UpdateTwin(c.Context, a.id, a.patch, c.String("etag"))
			}
			if err != nil {
				return nil, nil, err
			}
			return twin, func(w io.Writer) error {
				who := "device " + twin.DeviceID
				if a.module != "" {
					who = "module " + a.module + " of device " + twin.DeviceID
				}
				_, err := fmt.Fprintf(w, "Updated the twin of %s (version %d, etag %s).\n", who, twin.Version, twin.ETag)
				return err
			}, nil
		}),
	}
}

type twinUpdate struct {
	id, module string
	patch      service.TwinPatch
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
	return twinUpdate{id, c.String("module"), service.TwinPatch{Tags: tags, Desired: desired}}, nil
}
