package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/dmctl/dmctl/internal/iothub"
)

// textTime renders one of the hub's timestamps for text output: "never"
// for the unset one (IoT Hub's 0001-01-01T00:00:00Z, or empty).
func textTime(s string) string {
	if s == "" || strings.HasPrefix(s, "0001-01-01") {
		return "never"
	}
	return s
}

// printTwinText prints a twin as a summary a person reads: the device's
// state, then tags, reported and desired properties (without $metadata),
// one member a line, values as compact JSON.
func printTwinText(w io.Writer, t *iothub.Twin) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rows := [][2]string{{"Device ID", t.DeviceID}}
	if t.ModuleID != "" {
		rows = append(rows, [2]string{"Module ID", t.ModuleID})
	}
	rows = append(rows, [][2]string{
		{"Status", t.Status}, {"Connection state", t.ConnectionState},
		{"Last activity", textTime(t.LastActivityTime)}, {"Twin version", fmt.Sprint(t.Version)}, {"ETag", t.ETag},
	}...)
	for _, kv := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printMembers(w, "Tags", t.Tags)
	printMembers(w, "Reported properties"+sectionVersion(t.Properties.Reported), t.Properties.Reported)
	printMembers(w, "Desired properties"+sectionVersion(t.Properties.Desired), t.Properties.Desired)
	return nil
}

// sectionVersion is " (version N)" for a properties section with $version.
func sectionVersion(m map[string]any) string {
	if v, ok := m["$version"]; ok {
		return fmt.Sprintf(" (version %v)", v)
	}
	return ""
}

// printMembers prints a heading and the members of m in key order, leaving
// out the $-members (version, metadata); "(none)" when nothing is left.
func printMembers(w io.Writer, heading string, m map[string]any) {
	fmt.Fprintf(w, "%s:\n", heading)
	keys := make([]string, 0, len(m))
	for k := range m {
		if !strings.HasPrefix(k, "$") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, k := range keys {
		b, err := json.Marshal(m[k])
		if err != nil {
			b = []byte(fmt.Sprint(m[k]))
		}
		fmt.Fprintf(w, "  %s: %s\n", k, b)
	}
}
