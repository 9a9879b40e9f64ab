package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/service"
)

func serviceConfigurationCommand() *cli.Command {
	return &cli.Command{
		Name:  "configuration",
		Usage: "automatic device management: configurations that set desired properties on the twins a condition picks",
		Subcommands: []*cli.Command{
			serviceConfigurationCreateCommand(), serviceConfigurationShowCommand(), serviceConfigurationListCommand(),
			serviceConfigurationDeleteCommand(), serviceConfigurationTestQueryCommand(),
		},
	}
}

func configIDFlag() cli.Flag {
	return &cli.StringFlag{Name: "id", Aliases: []string{"config-id", "c"}, Usage: "configuration id (lowercase, up to 128 characters)"}
}

func metricsFlag() cli.Flag {
	return &cli.StringFlag{Name: "metrics", Usage: `custom metric queries: JSON {"queries": {"NAME": "SELECT deviceId FROM devices WHERE ..."}} (or {"metrics": {"queries": ...}}), or @FILE (@- for stdin)`}
}

func serviceConfigurationCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "add a configuration: desired-property content, a target condition, a priority, labels and metric queries",
		Description: `Takes the content and metrics as the Azure CLI does ('az iot hub
configuration create'): --content is {"deviceContent": {...}} or
{"moduleContent": {...}} (one of them), or a document whose "content" member
holds that (other members are left out, as az leaves them), whose keys
are twin paths under properties.desired (e.g.
{"deviceContent": {"properties.desired.firmware": {"fwVersion": "2.0"}}});
--metrics is {"queries": {"NAME": "QUERY"}}, or a document whose "metrics"
member holds that. Both take JSON or @FILE (@- for stdin). The hub applies the
configuration to every twin --target-condition picks (tags and properties,
e.g. "tags.site='lab'"); of two configurations that target one twin, the
higher --priority wins. Prints the configuration as the hub stored it. An
id in use fails; delete that configuration first.`,
		Flags: serviceFlags(configIDFlag(),
			&cli.StringFlag{Name: "content", Usage: `what to apply: JSON {"deviceContent": {"properties.desired.PATH": VALUE}}, or @FILE (@- for stdin)`},
			&cli.StringFlag{Name: "target-condition", Aliases: []string{"t"}, Usage: `which twins: a condition on tags and properties, e.g. "tags.site='lab'" ("*" for every device)`},
			&cli.IntFlag{Name: "priority", Aliases: []string{"p"}, Usage: "a non-negative number; the higher wins where configurations overlap"},
			&cli.StringFlag{Name: "labels", Aliases: []string{"lab"}, Usage: `labels as a JSON object of strings, e.g. '{"campaign":"spring"}'`},
			metricsFlag(),
		),
		Action: serviceAction(parseConfigurationCreate, func(c *cli.Context, s *service.Client, cfg iothub.Configuration) (any, func(io.Writer) error, error) {
			out, err := s.CreateConfiguration(c.Context, cfg)
			if err != nil {
				return nil, nil, configurationCLIError(err, cfg.ID)
			}
			return out, func(w io.Writer) error { return printConfiguration(w, out) }, nil
		}),
	}
}

// checkConfigID checks a configuration id as IoT Hub documents them: 1 to
// 128 characters, no upper case, no spaces and none of & ^ [ ] { } \ | " < > /.
func checkConfigID(c *cli.Context) (string, error) {
	id := c.String("id")
	const hint = "name the configuration with --id, e.g. --id firmware-2-0 (lowercase letters, digits and - : + % _ # * ? ! ( ) , = @ ; $ ', up to 128 characters)"
	switch {
	case id == "":
		return "", usageErrorf(hint, "missing --id")
	case len(id) > 128:
		return "", usageErrorf(hint, "--id is %d characters long, more than 128", len(id))
	case strings.ToLower(id) != id:
		return "", usageErrorf(hint, "--id %q has upper-case letters", id)
	}
	if i := strings.IndexAny(id, " &^[]{}\\|\"<>/\t\n"); i >= 0 {
		return "", usageErrorf(hint, "--id %q holds %q, which IoT Hub does not allow", id, id[i])
	}
	return id, nil
}

func parseConfigurationCreate(c *cli.Context) (iothub.Configuration, error) {
	id, err := checkConfigID(c)
	if err != nil {
		return iothub.Configuration{}, err
	}
	cfg := iothub.Configuration{ID: id, SchemaVersion: "1.0", Priority: c.Int("priority"), TargetCondition: strings.TrimSpace(c.String("target-condition"))}
	if !c.IsSet("content") {
		return cfg, usageErrorf(`give what to apply with --content '{"deviceContent": {"properties.desired.firmware": {"fwVersion": "2.0"}}}' (or @FILE)`, "missing --content")
	}
	if cfg.TargetCondition == "" {
		return cfg, usageErrorf(`pick the twins with --target-condition, e.g. "tags.site='lab'" ("*" for every device)`, "missing --target-condition")
	}
	if cfg.Priority < 0 {
		return cfg, usageErrorf("--priority takes a number of 0 or more", "invalid --priority %d", cfg.Priority)
	}
	if cfg.Content, err = contentFlag(c); err != nil {
		return cfg, err
	}
	if cfg.Labels, err = labelsFlag(c); err != nil {
		return cfg, err
	}
	if cfg.Metrics, err = metricsFlagValue(c); err != nil {
		return cfg, err
	}
	return cfg, nil
}

const contentHint = `--content takes {"deviceContent": {"properties.desired.PATH": VALUE}} or {"moduleContent": {...}}, optionally inside {"content": ...}, e.g. --content '{"deviceContent": {"properties.desired.firmware": {"fwVersion": "2.0"}}}'`

// contentFlag reads --content as the az CLI does: a "content" member, when
// present, holds the content (so a whole configuration document works too);
// of that, deviceContent or moduleContent is taken, exactly one of them, and
// other members are left out.
func contentFlag(c *cli.Context) (iothub.ConfigurationContent, error) {
	raw, err := jsonObjectFlag(c, "content")
	if err != nil {
		return iothub.ConfigurationContent{}, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return iothub.ConfigurationContent{}, usageErrorf(contentHint, "--content: %v", err)
	}
	if inner, ok := top["content"]; ok {
		top = nil
		if err := json.Unmarshal(inner, &top); err != nil || top == nil {
			return iothub.ConfigurationContent{}, usageErrorf(contentHint, "--content: \"content\" is not a JSON object")
		}
	}
	var out iothub.ConfigurationContent
	_, dev := top["deviceContent"]
	_, mod := top["moduleContent"]
	switch {
	case dev && mod:
		return out, usageErrorf("a configuration targets device twins (deviceContent) or module twins (moduleContent): create one of each", "--content has both deviceContent and moduleContent")
	case !dev && !mod && top["modulesContent"] != nil:
		return out, usageErrorf("modulesContent is an IoT Edge deployment's; a device configuration takes deviceContent or moduleContent", "--content: modulesContent is not supported")
	case !dev && !mod:
		return out, usageErrorf(contentHint, "--content has neither deviceContent nor moduleContent")
	}
	key := "deviceContent"
	if mod {
		key = "moduleContent"
	}
	var m map[string]any
	if err := json.Unmarshal(top[key], &m); err != nil || m == nil {
		return out, usageErrorf(contentHint, "--content: %q is not a JSON object", key)
	}
	if len(m) == 0 {
		return out, usageErrorf(contentHint, "--content: %s is empty", key)
	}
	for path := range m {
		if path != "properties.desired" && !strings.HasPrefix(path, "properties.desired.") {
			return out, usageErrorf(contentHint, "--content: %s key %q is not a path under properties.desired", key, path)
		}
	}
	if dev {
		out.DeviceContent = m
	} else {
		out.ModuleContent = m
	}
	return out, nil
}

// labelsFlag reads --labels, a JSON object of strings.
func labelsFlag(c *cli.Context) (map[string]string, error) {
	raw, err := jsonObjectFlag(c, "labels")
	if err != nil || raw == nil {
		return nil, err
	}
	var labels map[string]string
	if err := json.Unmarshal(raw, &labels); err != nil {
		return nil, usageErrorf(`--labels takes a JSON object of strings, e.g. --labels '{"campaign":"spring"}'`, "--labels: every value must be a string")
	}
	return labels, nil
}

const metricsHint = `--metrics takes {"queries": {"NAME": "SELECT deviceId FROM devices WHERE ..."}}, optionally inside {"metrics": ...}, or @FILE`

// metricsFlagValue reads --metrics in either of the az CLI's shapes; nil
// when unset.
func metricsFlagValue(c *cli.Context) (*iothub.ConfigurationMetrics, error) {
	raw, err := jsonObjectFlag(c, "metrics")
	if err != nil || raw == nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, usageErrorf(metricsHint, "--metrics: %v", err)
	}
	if inner, ok := top["metrics"]; ok {
		top = nil
		if err := json.Unmarshal(inner, &top); err != nil || top == nil {
			return nil, usageErrorf(metricsHint, "--metrics: \"metrics\" is not a JSON object")
		}
	}
	q, ok := top["queries"]
	if !ok {
		return nil, usageErrorf(metricsHint, "--metrics has no \"queries\"")
	}
	var queries map[string]string
	if err := json.Unmarshal(q, &queries); err != nil || queries == nil {
		return nil, usageErrorf(metricsHint, "--metrics: \"queries\" must map names to query strings")
	}
	for name, query := range queries {
		if name == "" || strings.TrimSpace(query) == "" {
			return nil, usageErrorf(metricsHint, "--metrics: query %q is empty", name)
		}
	}
	return &iothub.ConfigurationMetrics{Queries: queries}, nil
}

// configurationCLIError gives a missing configuration exit 4 and a hint, an
// existing one a hint.
func configurationCLIError(err error, id string) error {
	switch {
	case errors.Is(err, service.ErrConfigurationNotFound):
		return &exitError{err: err, code: exitDeviceNotFound,
			hint: fmt.Sprintf("no configuration %q in the hub: check --id, or list them with 'dmctl service configuration list'", id)}
	case errors.Is(err, service.ErrConfigurationExists):
		return withHint(err, fmt.Sprintf("the id is taken: pick another --id, or delete the old one with 'dmctl service configuration delete --id %s'", id))
	}
	return queryError(err)
}

func serviceConfigurationShowCommand() *cli.Command {
	return &cli.Command{
		Name:  "show",
		Usage: "print a configuration with its system metrics (targeted, applied) and custom metric results",
		Flags: serviceFlags(configIDFlag()),
		Action: serviceAction(checkConfigID, func(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
			cfg, err := s.Configuration(c.Context, id)
			if err != nil {
				return nil, nil, configurationCLIError(err, id)
			}
			return cfg, func(w io.Writer) error { return printConfiguration(w, cfg) }, nil
		}),
	}
}

// printConfiguration is the text form of one configuration.
func printConfiguration(w io.Writer, cfg iothub.Configuration) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"Configuration ID", cfg.ID}, {"Priority", strconv.Itoa(cfg.Priority)}, {"Target condition", cfg.TargetCondition},
		{"Created", textTime(cfg.CreatedTimeUtc)}, {"Last updated", textTime(cfg.LastUpdatedTimeUtc)}, {"ETag", cfg.ETag},
	}
	for _, k := range sortedKeys(cfg.Labels) {
		rows = append(rows, [2]string{"Label " + k, cfg.Labels[k]})
	}
	for _, part := range []struct {
		name string
		m    map[string]any
	}{{"Device content", cfg.Content.DeviceContent}, {"Module content", cfg.Content.ModuleContent}} {
		for _, k := range sortedKeys(part.m) {
			b, _ := json.Marshal(part.m[k])
			rows = append(rows, [2]string{part.name + " " + k, string(b)})
		}
	}
	if m := cfg.SystemMetrics; m != nil {
		for _, k := range sortedKeys(m.Results) {
			rows = append(rows, [2]string{"Metric " + k, strconv.FormatInt(m.Results[k], 10)})
		}
	}
	if m := cfg.Metrics; m != nil {
		for _, k := range sortedKeys(m.Queries) {
			v := "-"
			if n, ok := m.Results[k]; ok {
				v = strconv.FormatInt(n, 10)
			}
			rows = append(rows, [2]string{"Metric " + k, v + "  (" + m.Queries[k] + ")"})
		}
	}
	for _, kv := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func serviceConfigurationListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list configurations by priority, with how many twins each targets and has been applied to",
		Flags: serviceFlags(&cli.IntFlag{Name: "top", Usage: "at most this many configurations (a hub holds up to 100)"}),
		Action: serviceAction(configTopFlag, func(c *cli.Context, s *service.Client, top int) (any, func(io.Writer) error, error) {
			cfgs, err := s.Configurations(c.Context, top)
			if err != nil {
				return nil, nil, err
			}
			sort.SliceStable(cfgs, func(i, j int) bool {
				if cfgs[i].Priority != cfgs[j].Priority {
					return cfgs[i].Priority > cfgs[j].Priority
				}
				return cfgs[i].ID < cfgs[j].ID
			})
			if cfgs == nil {
				cfgs = []iothub.Configuration{}
			}
			return cfgs, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tPRIORITY\tTARGETED\tAPPLIED\tTARGET CONDITION")
				for _, cfg := range cfgs {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", cfg.ID, cfg.Priority,
						systemMetric(cfg, iothub.MetricTargetedCount), systemMetric(cfg, iothub.MetricAppliedCount), cfg.TargetCondition)
				}
				return tw.Flush()
			}, nil
		}),
	}
}

// configTopFlag reads --top of configuration list: 1 to 100 when given.
func configTopFlag(c *cli.Context) (int, error) {
	top := c.Int("top")
	if top < 0 || top > iothub.MaxConfigurations {
		return 0, usageErrorf(fmt.Sprintf("--top takes a number from 1 to %d (a hub holds at most %d configurations)", iothub.MaxConfigurations, iothub.MaxConfigurations), "invalid --top %d", top)
	}
	return top, nil
}

// systemMetric renders a system metric, "-" when the hub sent none.
func systemMetric(cfg iothub.Configuration, name string) string {
	if cfg.SystemMetrics == nil {
		return "-"
	}
	n, ok := cfg.SystemMetrics.Results[name]
	if !ok {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

func serviceConfigurationDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:  "delete",
		Usage: "remove a configuration (the desired properties it set stay on the twins)",
		Flags: serviceFlags(configIDFlag(), &cli.StringFlag{Name: "etag", Usage: "delete only if the configuration's etag is still this one"}),
		Action: serviceAction(checkConfigID, func(c *cli.Context, s *service.Client, id string) (any, func(io.Writer) error, error) {
			if err := s.DeleteConfiguration(c.Context, id, c.String("etag")); err != nil {
				return nil, nil, configurationCLIError(err, id)
			}
			return map[string]any{"id": id, "deleted": true}, printLine(fmt.Sprintf("Deleted configuration %s.", id)), nil
		}),
	}
}

func serviceConfigurationTestQueryCommand() *cli.Command {
	return &cli.Command{
		Name:  "test-query",
		Usage: "check a target condition and metric queries with the hub, without creating anything",
		Description: `Asks the hub (POST /configurations/testQueries) whether --target-condition
and the --metrics queries parse. Prints "valid" for each, or the hub's error.
Exits 0 when all are valid, 2 when the hub found an error.`,
		Flags: serviceFlags(
			&cli.StringFlag{Name: "target-condition", Aliases: []string{"t"}, Usage: `the condition to check, e.g. "tags.site='lab'"`},
			metricsFlag(),
		),
		Action: serviceAction(parseTestQuery, runTestQuery),
	}
}

func parseTestQuery(c *cli.Context) (iothub.ConfigurationQueriesTestInput, error) {
	in := iothub.ConfigurationQueriesTestInput{TargetCondition: strings.TrimSpace(c.String("target-condition"))}
	m, err := metricsFlagValue(c)
	if err != nil {
		return in, err
	}
	if m != nil {
		in.CustomMetricQueries = m.Queries
	}
	if in.TargetCondition == "" && len(in.CustomMetricQueries) == 0 {
		return in, usageErrorf(`give --target-condition "tags.site='lab'", --metrics '{"queries": {...}}', or both`, "nothing to test")
	}
	return in, nil
}

func runTestQuery(c *cli.Context, s *service.Client, in iothub.ConfigurationQueriesTestInput) (any, func(io.Writer) error, error) {
	res, err := s.TestConfigurationQueries(c.Context, in)
	if err != nil {
		return nil, nil, err
	}
	if res.CustomMetricQueryErrors == nil {
		res.CustomMetricQueryErrors = map[string]string{}
	}
	var bad []string
	if res.TargetConditionError != "" {
		bad = append(bad, "the target condition")
	}
	for _, name := range sortedKeys(res.CustomMetricQueryErrors) {
		if res.CustomMetricQueryErrors[name] != "" {
			bad = append(bad, fmt.Sprintf("metric %q", name))
		}
	}
	if len(bad) > 0 {
		err = &exitError{err: fmt.Errorf("the hub refused %s", strings.Join(bad, ", ")), code: exitUsage,
			hint: `a target condition is the body of a WHERE clause over twins ("tags.site='lab'"); a metric query is a whole query ("SELECT deviceId FROM devices WHERE ..."); strings in single quotes`}
	}
	return res, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		if in.TargetCondition != "" {
			fmt.Fprintf(tw, "Target condition:\t%s\n", verdict(res.TargetConditionError))
		}
		for _, name := range sortedKeys(in.CustomMetricQueries) {
			fmt.Fprintf(tw, "Metric %s:\t%s\n", name, verdict(res.CustomMetricQueryErrors[name]))
		}
		return tw.Flush()
	}, err
}

func verdict(e string) string {
	if e == "" {
		return "valid"
	}
	return "invalid: " + e
}
