package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

func serviceTwinShowCommand() *cli.Command {
	return &cli.Command{
		Name:   "show",
		Usage:  "print a device twin",
		Flags:  serviceFlags(deviceFlag()),
		Action: runServiceTwinShow,
	}
}

func runServiceTwinShow(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	twin, err := client.Twin(c.Context, id)
	if err != nil {
		return serviceError(err, id)
	}
	return printJSON(c.App.Writer, twin)
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
		Action: runServiceTwinUpdate,
	}
}

func runServiceTwinUpdate(c *cli.Context) error {
	id, err := requireDevice(c)
	if err != nil {
		return err
	}
	desired, err := jsonObjectFlag(c, "desired")
	if err != nil {
		return err
	}
	tags, err := jsonObjectFlag(c, "tags")
	if err != nil {
		return err
	}
	if desired == nil && tags == nil {
		return usageErrorf(`give --desired '{"key": value}' and/or --tags '{"key": value}'`, "nothing to update")
	}
	client, err := newServiceClient(c)
	if err != nil {
		return err
	}
	defer client.Close()
	twin, err := client.UpdateTwin(c.Context, id, service.TwinPatch{Tags: tags, Desired: desired}, c.String("etag"))
	if err != nil {
		return serviceError(err, id)
	}
	if jsonOutput(c) {
		return printJSON(c.App.Writer, twin)
	}
	fmt.Fprintf(c.App.Writer, "Updated the twin of device %s (version %d, etag %s).\n", twin.DeviceID, twin.Version, twin.ETag)
	return nil
}
