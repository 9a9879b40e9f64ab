package cli

import (
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// examples are the EXAMPLES section of each leaf command's help, by the
// command's path under dmctl. A line starting with "#" says what the next
// command line does. TestHelpExamples checks every leaf command has some and
// that each line names that command and flags it has.
var examples = map[string][]string{
	"device run": {
		"# run one device from IOTHUB_DEVICE_CONNECTION_STRING, rebooting in 5 s",
		"dmctl device run --reboot-delay 5s",
		"# run a fleet, one connection string per line, 200 connects per second",
		"dmctl device run --connection-strings-file fleet.txt --connect-rate 200/s",
		"# run an X.509 device (HostName=<hub>;DeviceId=<id>;x509=true in IOTHUB_DEVICE_CONNECTION_STRING)",
		"dmctl device run --cert sensor1-cert.pem --key sensor1-key.pem",
		"# start on firmware 1.0.0; a desired firmware object updates it, applying in 5 s",
		"dmctl device run --firmware-version 1.0.0 --firmware-apply-delay 5s",
		"# a fleet campaign downloading at most 16 packages at once",
		"dmctl device run --connection-strings-file fleet.txt --download-concurrency 16",
		"# a fleet larger than one process may hold: as many processes as the open-file limit needs",
		"dmctl device run --connection-strings-file big-fleet.txt --processes 0",
		"# 50,000 devices over 3 processes, dialing from two source addresses",
		"dmctl device run --connection-strings-file big-fleet.txt --processes 3 --source-addrs 10.0.0.5,10.0.0.6",
	},
	"device send": {
		"# send one message as the device of IOTHUB_DEVICE_CONNECTION_STRING",
		"dmctl device send --message '{\"temperature\":21.5}' --content-type application/json",
		"# ten messages with an application property, one every 2 s",
		"dmctl device send --message hello --property level=info --count 10 --interval 2s",
	},
	"service reboot": {
		"# reboot one device and wait until its twin shows the new rebootTime",
		"dmctl service reboot --device myDeviceId",
		"# reboot a fleet in two waves, stopping if more than 5% of a wave fails",
		"dmctl service reboot --query \"tags.site = 'lab'\" --waves 10%,100% --abort-failure-rate 5%",
	},
	"service invoke": {
		"dmctl service invoke --device myDeviceId --method rebootDevice --payload '{\"delaySeconds\":1}'",
		"dmctl service invoke -d myDeviceId -m getStatus --response-timeout 10s",
		"dmctl service invoke --device myDeviceId --module telemetry --method getStatus",
	},
	"service twin show": {
		"dmctl service twin show --device myDeviceId",
		"dmctl service twin show -d myDeviceId -o json",
		"dmctl service twin show --device myDeviceId --module telemetry",
	},
	"service twin update": {
		"dmctl service twin update --device myDeviceId --tags '{\"site\":\"lab\"}'",
		"dmctl service twin update --device myDeviceId --desired '{\"telemetryInterval\":30}'",
		"dmctl service twin update --device myDeviceId --module telemetry --desired '{\"interval\":10}'",
	},
	"service device create": {
		"# register one device and keep its connection string",
		"dmctl service device create --device myDeviceId",
		"# register sim-0001 ... sim-0100, tagged, one connection string per line",
		"dmctl service device create --count 100 --prefix sim --tags '{\"site\":\"lab\"}'",
		"# register a device that logs in with a self-signed certificate",
		"dmctl service device create --device myDeviceId --auth x509-thumbprint --cert myDeviceId.pem",
	},
	"service device show": {
		"dmctl service device show --device myDeviceId",
	},
	"service device list": {
		"dmctl service device list --top 10",
		"dmctl service device ls -o json",
	},
	"service device delete": {
		"dmctl service device delete --device myDeviceId",
	},
	"service device connection-string": {
		"dmctl service device connection-string --device myDeviceId --key secondary",
	},
	"service device wait": {
		"dmctl service device wait --device myDeviceId --timeout 30s",
		"dmctl service device wait --query \"tags.site = 'lab'\" --state disconnected",
		"dmctl service device wait --device myDeviceId --module monitor",
	},
	"service query": {
		"dmctl service query \"SELECT * FROM devices WHERE tags.site = 'lab'\"",
		"dmctl service query --top 10 \"SELECT deviceId, properties.reported.rebootTime FROM devices\"",
	},
	"service job show": {
		"dmctl service job show --job dmctl-reboot-20260101T120000Z-w1 --devices",
	},
	"service job list": {
		"dmctl service job list --type method --status running",
	},
	"service job cancel": {
		"dmctl service job cancel --job dmctl-reboot-20260101T120000Z-w1",
	},
	"hub serve": {
		"# serve on a free loopback port and record the address",
		"dmctl hub serve --data ./hub-data --listen 127.0.0.1:0 --ready-file hub.json",
		"# the dashboard on a fixed port (open the printed 'Dashboard:' link)",
		"dmctl hub serve --data ./hub-data --dashboard 127.0.0.1:8080",
	},
	"hub connection-string": {
		"dmctl hub connection-string --data ./hub-data --ready-file hub.json",
	},
	"hub wait": {
		"dmctl hub wait --ready-file hub.json --timeout 10s",
	},
	"sas token": {
		"# a device token from IOTHUB_DEVICE_CONNECTION_STRING, valid for an hour",
		"dmctl sas token --ttl 1h",
		"dmctl sas token --connection-string \"$IOTHUB_CONNECTION_STRING\" --expiry 2030-01-01T00:00:00Z",
	},
	"sas inspect": {
		"dmctl sas inspect \"$TOKEN\"",
		"dmctl sas token | dmctl sas inspect -",
	},
	"demo": {
		"dmctl demo",
		"dmctl demo --reboot-delay 2s -o json",
	},
	"completion": {
		"# bash: load completion now, or add this line to ~/.bashrc",
		"source <(dmctl completion bash)",
		"dmctl completion zsh > \"${fpath[1]}/_dmctl\"",
		"dmctl completion fish > ~/.config/fish/completions/dmctl.fish",
	},
	"man": {
		"dmctl man > dmctl.1 && man ./dmctl.1",
	},
	"device cert create": {
		"# a self-signed certificate for x509-thumbprint devices: d1-cert.pem and d1-key.pem",
		"dmctl device cert create --device d1",
		"# a certificate signed by your own CA (see create-ca), valid for 30 days",
		"dmctl device cert create --device d2 --ca-cert ca-cert.pem --ca-key ca-key.pem --days 30",
	},
	"device cert create-ca": {
		"# a CA to sign device certificates with (x509-ca devices): ca-cert.pem and ca-key.pem",
		"dmctl device cert create-ca --name \"dmctl test CA\"",
	},
	"service module create": {
		"# a module with SAS keys generated by the hub",
		"dmctl service module create --device myDeviceId --module telemetry",
		"dmctl service module create --device myDeviceId --module camera --auth x509-thumbprint --cert camera.pem",
	},
	"service module show":              {"dmctl service module show --device myDeviceId --module telemetry -o json"},
	"service module list":              {"dmctl service module list --device myDeviceId", "dmctl service module ls -d myDeviceId -o json"},
	"service module delete":            {"dmctl service module delete --device myDeviceId --module telemetry"},
	"service module connection-string": {"dmctl service module connection-string --device myDeviceId --module telemetry --key secondary"},
	"service stats":                    {"dmctl service stats", "dmctl service stats -o json"},
	"service firmware update": {
		"# a package the local hub serves (dmctl hub serve --packages pkgs), in two waves",
		"dmctl service firmware update --query \"tags.site = 'lab'\" --version 2.0.0 --package pkgs/fw-2.0.0.bin --package-uri https://localhost:8883/packages/fw-2.0.0.bin --waves 10%,100%",
		"# a package on a web server, stopping if more than 5% of a wave fails",
		"dmctl service firmware update --query \"tags.model = 'm1'\" --version 2.1.0 --package https://fw.example.com/m1-2.1.0.bin --checksum 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --waves 1%,10%,100% --abort-failure-rate 5% -o json",
	},
	"service configuration create": {
		"# set the firmware every lab device should run, and count the devices on it",
		"dmctl service configuration create --id fw-2-0 --target-condition \"tags.site='lab'\" --priority 10 --content '{\"deviceContent\":{\"properties.desired.firmware\":{\"fwVersion\":\"2.0\"}}}' --metrics '{\"queries\":{\"current\":\"SELECT deviceId FROM devices WHERE properties.reported.firmware.currentFwVersion = '2.0'\"}}'",
		"# the same from files, as 'az iot hub configuration create' takes them",
		"dmctl service configuration create --id fw-2-0 --target-condition \"tags.site='lab'\" --content @content.json --metrics @metrics.json --labels '{\"campaign\":\"spring\"}'",
	},
	"service configuration show":       {"dmctl service configuration show --id fw-2-0", "dmctl service configuration show --id fw-2-0 -o json"},
	"service configuration list":       {"dmctl service configuration list --top 10"},
	"service configuration delete":     {"dmctl service configuration delete --id fw-2-0"},
	"service configuration test-query": {"dmctl service configuration test-query --target-condition \"tags.site='lab'\" --metrics @metrics.json"},
	"service factory-reset": {
		"# reset one device and wait until its twin shows the new factoryResetTime",
		"dmctl service factory-reset --device myDeviceId",
		"# reset every lab device through an IoT Hub job",
		"dmctl service factory-reset --query \"tags.site = 'lab'\"",
	},
}

// requiredFlags marks, in help, flags a command cannot run without. The
// commands check them themselves (a missing one is a usage error with a hint,
// exit 2), so they are not urfave/cli Required flags.
var requiredFlags = map[string]map[string]string{
	"service reboot":                   {"device": "required unless --query"},
	"service invoke":                   {"device": "required", "method": "required"},
	"service twin show":                {"device": "required"},
	"service twin update":              {"device": "required"},
	"service device create":            {"device": "required unless --count"},
	"service device show":              {"device": "required"},
	"service device delete":            {"device": "required"},
	"service device connection-string": {"device": "required"},
	"service device wait":              {"device": "required unless --query"},
	"service job show":                 {"job": "required"},
	"service job cancel":               {"job": "required"},
	"service module create":            {"device": "required", "module": "required"},
	"service module show":              {"device": "required", "module": "required"},
	"service module delete":            {"device": "required", "module": "required"},
	"service module connection-string": {"device": "required", "module": "required"},
	"service module list":              {"device": "required"},
	"service configuration create":     {"id": "required", "content": "required", "target-condition": "required"},
	"service configuration show":       {"id": "required"},
	"service configuration delete":     {"id": "required"},
	"service factory-reset":            {"device": "required unless --query"},
	"device send":                      {"message": "required"},
	"device cert create":               {"device": "required"},
	"device cert create-ca":            {"name": "required"},
	"service firmware update":          {"query": "required", "version": "required", "package": "required"},
}

// setHelp prepares the command tree under the app for help, completion and
// the global flags: each leaf command gets its EXAMPLES and a mark on its
// required flags, bool flags whose default is false stop saying so, show
// commands answer to get and list commands to ls, and every command takes
// --log-level and --log-format after its name too.
func setHelp(cmds []*cli.Command, parent string) {
	for _, c := range cmds {
		path := strings.TrimSpace(parent + " " + c.Name)
		switch c.Name {
		case "show":
			c.Aliases = append(c.Aliases, "get")
		case "list":
			c.Aliases = append(c.Aliases, "ls")
		}
		for _, f := range c.Flags {
			markFlag(f, requiredFlags[path])
		}
		c.Flags = append(c.Flags, commandLogFlags()...)
		c.Before = chainBefore(c.Before, commandLogger)
		if len(c.Subcommands) == 0 {
			c.CustomHelpTemplate = cli.CommandHelpTemplate + examplesTemplate(examples[path])
			c.BashComplete = leafComplete(c)
		}
		setHelp(c.Subcommands, path)
	}
}

// examplesTemplate renders lines as a help template section; each line is
// a quoted template string, so braces in it are printed as they are.
func examplesTemplate(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\nEXAMPLES:")
	for _, l := range lines {
		b.WriteString("\n   {{" + strconv.Quote(l) + "}}")
	}
	b.WriteString("\n")
	return b.String()
}

// markFlag appends "(required...)" to a flag's usage where the command needs
// it, and drops "(default: false)" from bool flags.
func markFlag(f cli.Flag, required map[string]string) {
	note := required[f.Names()[0]]
	if r, ok := f.(cli.RequiredFlag); ok && r.IsRequired() && note == "" {
		note = "required"
	}
	suffix := ""
	if note != "" {
		suffix = " (" + note + ")"
	}
	switch f := f.(type) {
	case *cli.StringFlag:
		f.Usage += suffix
	case *cli.IntFlag:
		f.Usage += suffix
	case *cli.DurationFlag:
		f.Usage += suffix
	case *cli.BoolFlag:
		f.Usage += suffix
		if !f.Value && f.DefaultText == "" {
			f.DisableDefaultText = true
		}
	}
}

// commandLogFlags are --log-level and --log-format as every command takes
// them; the app's own (shown in 'dmctl --help') carry the environment
// variables and defaults.
func commandLogFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Hidden: true},
		&cli.StringFlag{Name: "log-format", Hidden: true},
	}
}

func chainBefore(first, then cli.BeforeFunc) cli.BeforeFunc {
	if first == nil {
		return then
	}
	return func(c *cli.Context) error {
		if err := first(c); err != nil {
			return err
		}
		return then(c)
	}
}

// commandLogger rebuilds the logger when --log-level or --log-format was
// given after a command's name: the one given nearest the end of the
// command line wins, then the app's (flag, environment or default).
func commandLogger(c *cli.Context) error {
	lineage := c.Lineage()
	root := lineage[len(lineage)-1]
	given := false
	pick := func(name string) string {
		for _, ctx := range lineage[:len(lineage)-1] {
			if ctx.Command == nil {
				continue
			}
			for _, n := range ctx.LocalFlagNames() {
				if n == name {
					given = true
					return ctx.String(name)
				}
			}
		}
		return root.String(name)
	}
	level, format := pick("log-level"), pick("log-format")
	if !given {
		return nil
	}
	l, err := newLogger(c.App.ErrWriter, level, format)
	if err != nil {
		return err
	}
	c.App.Metadata[loggerKey] = l
	return nil
}

// leafComplete completes a leaf command's flags after a "-"; a leaf has no
// words of its own to offer (its help subcommand is not one).
func leafComplete(cmd *cli.Command) cli.BashCompleteFunc {
	flags := cli.DefaultCompleteWithFlags(cmd)
	return func(c *cli.Context) {
		if n := len(os.Args); n > 2 && strings.HasPrefix(os.Args[n-2], "-") {
			flags(c)
		}
	}
}
