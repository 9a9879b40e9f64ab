package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// readBaseline reads the figures of sections 1 to 4 of an earlier report
// (the markdown this bench writes), so that the goals of both runs are
// computed the same way and shown side by side.
func readBaseline(path string) (*results, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &results{}
	section := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section, _, _ = strings.Cut(strings.TrimPrefix(line, "## "), " ")
			continue
		case strings.HasPrefix(line, "### Hub shutdown"):
			section = "shutdown"
			continue
		case !strings.HasPrefix(line, "| "):
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch section {
		case "1.":
			if row, ok := baselineLatency(cells); ok {
				r.Latency = append(r.Latency, row)
			}
		case "2.":
			if row, ok := baselineThroughput(cells); ok {
				r.Throughput = append(r.Throughput, row)
			}
		case "3.":
			if row, ok := baselineScale(cells); ok {
				r.Scale = append(r.Scale, row)
			}
		case "4.":
			if row, ok := baselineFleet(cells); ok {
				r.Fleet = append(r.Fleet, row)
			}
		case "shutdown":
			if len(cells) >= 2 {
				n, err1 := strconv.Atoi(cells[0])
				d, err2 := parseDur(cells[1])
				if err1 == nil && err2 == nil {
					r.Shutdown = append(r.Shutdown, shutdownRow{Connections: n, Exit: d})
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(r.Latency)+len(r.Throughput)+len(r.Scale) == 0 {
		return nil, fmt.Errorf("%s: no figures of sections 1 to 3 found", path)
	}
	return r, nil
}

// parseDur reads "0.064 ms" or "1.05 s".
func parseDur(s string) (time.Duration, error) {
	num, unit, ok := strings.Cut(s, " ")
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("not a duration: %q", s)
	}
	switch unit {
	case "ms":
		return time.Duration(v * float64(time.Millisecond)), nil
	case "s":
		return time.Duration(v * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("not a duration: %q", s)
}

// parseMiB reads "40.7 MiB" as bytes.
func parseMiB(s string) (int64, error) {
	num, ok := strings.CutSuffix(s, " MiB")
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("not MiB: %q", s)
	}
	return int64(v * (1 << 20)), nil
}

func baselineLatency(c []string) (latencyRow, bool) {
	if len(c) < 6 || !strings.HasPrefix(c[0], "(") {
		return latencyRow{}, false
	}
	key, _, ok := strings.Cut(strings.TrimPrefix(c[0], "("), ")")
	n, err := strconv.Atoi(c[1])
	if !ok || err != nil {
		return latencyRow{}, false
	}
	row := latencyRow{Key: key, Path: c[0]}
	row.N = n
	for i, d := range []*time.Duration{&row.P50, &row.P90, &row.P99, &row.Mean} {
		if *d, err = parseDur(c[2+i]); err != nil {
			return latencyRow{}, false
		}
	}
	return row, true
}

func baselineThroughput(c []string) (throughputRow, bool) {
	if len(c) < 5 {
		return throughputRow{}, false
	}
	conc, err1 := strconv.Atoi(c[1])
	calls, err2 := strconv.Atoi(c[2])
	errs, err3 := strconv.Atoi(c[3])
	per, err4 := strconv.ParseFloat(c[4], 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return throughputRow{}, false
	}
	return throughputRow{Client: c[0], Concurrency: conc, Calls: calls, Errors: errs, PerSec: per}, true
}

func baselineScale(c []string) (scaleRow, bool) {
	if len(c) < 7 {
		return scaleRow{}, false
	}
	n, err := strconv.Atoi(c[1])
	if err != nil {
		return scaleRow{}, false
	}
	row := scaleRow{Devices: n, Processes: 1}
	label, ceiling := strings.CutSuffix(c[0], " — ceiling")
	row.Ceiling = ceiling
	row.Impl, row.ConnectCfg, _ = strings.Cut(label, " (")
	row.ConnectCfg = strings.TrimSuffix(row.ConnectCfg, ")")
	if _, p, ok := strings.Cut(row.Impl, "--processes "); ok {
		row.Processes, _ = strconv.Atoi(p)
	}
	var err1, err2, err3 error
	row.Connect, err1 = parseDur(c[2])
	row.RSS, err2 = parseMiB(c[3])
	row.HubDelta, err3 = parseMiB(c[5])
	if err1 != nil || err2 != nil || err3 != nil {
		return scaleRow{}, false
	}
	return row, true
}

func baselineFleet(c []string) (fleetRow, bool) {
	if len(c) < 5 {
		return fleetRow{}, false
	}
	n, err1 := strconv.Atoi(c[0])
	jobs, err2 := strconv.Atoi(c[1])
	wall, err3 := parseDur(c[2])
	ok, err4 := strconv.Atoi(c[3])
	bad, err5 := strconv.Atoi(c[4])
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil {
		return fleetRow{}, false
	}
	return fleetRow{Devices: n, Jobs: jobs, Wall: wall, Confirmed: ok, Unsuccessful: bad}, true
}
