package main

import (
	"time"

	"github.com/dmctl/dmctl/internal/soak"
)

type latencyRow struct {
	Key  string // a, b, b2, b3, c
	Path string
	summary
	Err string
}

type throughputRow struct {
	Concurrency int
	Client      string
	Calls       int
	Errors      int
	Elapsed     time.Duration
	PerSec      float64
}

type scaleRow struct {
	Impl       string
	Devices    int
	Connect    time.Duration // start of the process to every device connected
	RSS        int64         // device process VmRSS with every device connected, bytes
	HubDelta   int64         // hub VmRSS after minus before, bytes
	HubBefore  int64
	HubAfter   int64
	ConnectCfg string
	Processes  int  // device processes (RSS is their sum)
	Ceiling    bool // the largest fleet the open-file limit allows
}

func (r scaleRow) perDevice() float64  { return float64(r.RSS) / float64(max(1, r.Devices)) }
func (r scaleRow) hubPerConn() float64 { return float64(r.HubDelta) / float64(max(1, r.Devices)) }

type fleetRow struct {
	Devices      int
	Wall         time.Duration
	Confirmed    int
	Unsuccessful int
	Jobs         int
	Detail       string
}

type cliRow struct {
	Tool   string
	Runs   int
	Median time.Duration
	Min    time.Duration
	Max    time.Duration
}

type results struct {
	Started, Finished time.Time
	Env               environment
	Latency           []latencyRow
	Throughput        []throughputRow
	Scale             []scaleRow
	Ceiling           *ceilingInfo // nil when not run
	Anatomy           []anatomyRow
	Shutdown          []shutdownRow
	Fleet             []fleetRow
	CLI               []cliRow
	Soak              *soak.Report  // nil when not run
	Firmware          *firmwareRow  // nil when not run
	Dashboard         *dashboardRow // nil when not run
	Notes             []string      // what was skipped or failed, and why
	Profiles          []string
}

func (r *results) note(format string, args ...any) {
	r.Notes = append(r.Notes, sprintf(format, args...))
}

func (r *results) latency(key string) (latencyRow, bool) {
	for _, l := range r.Latency {
		if l.Key == key && l.Err == "" && l.N > 0 {
			return l, true
		}
	}
	return latencyRow{}, false
}
