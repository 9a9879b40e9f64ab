package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/dmctl/dmctl/service"
)

func serviceQueryCommand() *cli.Command {
	return &cli.Command{
		Name:      "query",
		Usage:     "run an IoT Hub query over twins and print every result, all pages",
		ArgsUsage: `"SELECT ... FROM devices [WHERE ...]"`,
		Description: `Text output prints one JSON document per line, or a table when every row
is a flat projection (e.g. SELECT deviceId, properties.reported.rebootTime AS
rebootTime FROM devices). JSON output is one array.`,
		Flags: serviceFlags(
			&cli.IntFlag{Name: "top", Usage: "stop after this many results (0: all)"},
			&cli.IntFlag{Name: "page-size", Usage: "results per page asked of the hub (0: the hub's default)"},
		),
		Action: serviceAction(parseQueryArgs, runServiceQuery),
	}
}

var selectStarRE = regexp.MustCompile(`(?is)^\s*select\s+(top\s+\d+\s+)?\*`)

// queryArgs are the query and the flags of service query, checked.
type queryArgs struct {
	query         string
	top, pageSize int
}

func parseQueryArgs(c *cli.Context) (queryArgs, error) {
	for _, a := range c.Args().Tail() {
		if strings.HasPrefix(a, "-") {
			return queryArgs{}, usageErrorf(`put flags before the query: dmctl service query --top 10 "SELECT * FROM devices"`, "flag %s after the query", a)
		}
	}
	if c.NArg() != 1 || strings.TrimSpace(c.Args().First()) == "" {
		return queryArgs{}, usageErrorf(`give the query as one argument: dmctl service query "SELECT * FROM devices"`, "expected one query argument, got %d", c.NArg())
	}
	a := queryArgs{query: c.Args().First(), top: c.Int("top"), pageSize: c.Int("page-size")}
	if a.top < 0 || a.pageSize < 0 {
		return queryArgs{}, usageErrorf("--top and --page-size take positive numbers", "invalid --top or --page-size")
	}
	return a, nil
}

// runServiceQuery streams SELECT * rows as text lines while the pages
// come in; other text output is a table of all rows, JSON one array.
func runServiceQuery(c *cli.Context, s *service.Client, a queryArgs) (any, func(io.Writer) error, error) {
	w := c.App.Writer
	stream := !jsonOutput(c) && selectStarRE.MatchString(a.query)
	rows := []json.RawMessage{}
	n := 0
	err := s.Query(c.Context, a.query, a.pageSize, func(raw json.RawMessage) error {
		n++
		if stream {
			if _, err := fmt.Fprintln(w, compactJSON(raw)); err != nil {
				return err
			}
		} else {
			rows = append(rows, raw)
		}
		if a.top > 0 && n >= a.top {
			return service.ErrStopQuery
		}
		return nil
	})
	if err != nil || stream {
		return nil, nil, queryError(err)
	}
	return rows, func(w io.Writer) error { return printRows(w, rows) }, nil
}

// printRows prints flat objects as a table and anything else as JSON lines.
func printRows(w io.Writer, rows []json.RawMessage) error {
	var (
		cols   []string
		seen   = map[string]bool{}
		parsed = make([]map[string]json.RawMessage, 0, len(rows))
		flat   = true
	)
	for _, raw := range rows {
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil {
			flat = false
			break
		}
		for _, v := range m {
			if t := bytes.TrimSpace(v); len(t) > 0 && (t[0] == '{' || t[0] == '[') {
				flat = false
			}
		}
		for _, k := range objectKeys(raw) {
			if !seen[k] {
				seen[k] = true
				cols = append(cols, k)
			}
		}
		parsed = append(parsed, m)
	}
	if !flat || len(cols) == 0 {
		for _, raw := range rows {
			if _, err := fmt.Fprintln(w, compactJSON(raw)); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(cols, "\t"))
	for _, m := range parsed {
		cells := make([]string, len(cols))
		for i, k := range cols {
			v, ok := m[k]
			if !ok {
				continue
			}
			var s string
			if json.Unmarshal(v, &s) == nil {
				cells[i] = s
			} else {
				cells[i] = compactJSON(v)
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// objectKeys lists the member names of a JSON object in document order.
func objectKeys(raw json.RawMessage) []string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var keys []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return keys
		}
		k, _ := t.(string)
		keys = append(keys, k)
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return keys
		}
	}
	return keys
}
