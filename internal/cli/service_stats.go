package cli

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

func serviceStatsCommand() *cli.Command {
	return &cli.Command{
		Name:  "stats",
		Usage: "print the hub's device counts: registered, enabled, disabled, connected",
		Description: `Reads the registry statistics (GET /statistics/devices) and the service
statistics (GET /statistics/service). Modules are not counted.`,
		Flags: serviceFlags(),
		Action: serviceAction(noFlags, func(c *cli.Context, s *service.Client, _ struct{}) (any, func(io.Writer) error, error) {
			rs, err := s.RegistryStatistics(c.Context)
			if err != nil {
				return nil, nil, err
			}
			ss, err := s.ServiceStatistics(c.Context)
			if err != nil {
				return nil, nil, err
			}
			out := struct {
				Total     int64 `json:"totalDeviceCount"`
				Enabled   int64 `json:"enabledDeviceCount"`
				Disabled  int64 `json:"disabledDeviceCount"`
				Connected int64 `json:"connectedDeviceCount"`
			}{rs.TotalDeviceCount, rs.EnabledDeviceCount, rs.DisabledDeviceCount, ss.ConnectedDeviceCount}
			return out, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				for _, kv := range []struct {
					k string
					v int64
				}{{"Devices", out.Total}, {"Enabled", out.Enabled}, {"Disabled", out.Disabled}, {"Connected", out.Connected}} {
					fmt.Fprintf(tw, "%s:\t%d\n", kv.k, kv.v)
				}
				return tw.Flush()
			}, nil
		}),
	}
}
