package main

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/rs/zerolog"
)

// BenchmarkIdleConnections measures what an idle device connection costs
// hub and device together, inside one process: live heap and goroutine
// stacks after a GC, and goroutines, per connection of a fleet of
// idleDevices (the same fleet package dmctl device run uses). It does not
// depend on the machine's load. Section 3 of go run ./bench measures the
// two sides apart (anatomySection). DMCTL_HEAPPROFILE=path writes the heap
// profile of the connected state there (pprof -focus 'hub|mochi' versus
// -focus 'device' tells the two sides apart).
//
//	go test -run '^$' -bench IdleConnections -benchtime 1x ./bench
func BenchmarkIdleConnections(b *testing.B) {
	const idleDevices = 500
	profile := os.Getenv("DMCTL_HEAPPROFILE")
	if profile != "" {
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	cfg := &config{Log: zerolog.Nop(), DataDir: b.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := startInProcess(ctx, cfg, &results{})
	if err != nil {
		b.Fatal(err)
	}
	defer p.close()
	ids := service.SequentialIDs("idle", 0, idleDevices)
	css := make([]*sas.ConnectionString, 0, len(ids))
	for _, id := range ids {
		key, err := p.register(id)
		if err != nil {
			b.Fatal(err)
		}
		cs, err := sas.ParseDevice(p.deviceCS(id, key))
		if err != nil {
			b.Fatal(err)
		}
		css = append(css, cs)
	}
	for range b.N {
		f, err := fleet.New(fleet.Config{
			Devices:     css,
			Conn:        mqtt.Config{RootCAs: p.h.CAPool(), ClientType: "dmctl-bench"},
			Device:      device.Config{},
			ConnectRate: 2000,
			Log:         zerolog.Nop(),
		})
		if err != nil {
			b.Fatal(err)
		}
		before := readRuntimeMem()
		stop, err := startFleet(ctx, f, 60*time.Second)
		if err != nil {
			b.Fatalf("%d devices: %v", idleDevices, err)
		}
		// Let every connection settle (twin reads, first reports).
		time.Sleep(2 * time.Second)
		after := readRuntimeMem()
		if profile != "" {
			if fh, err := os.Create(profile); err == nil {
				_ = pprof.Lookup("heap").WriteTo(fh, 0)
				_ = fh.Close()
			}
		}
		stop()
		r := after.row("both", before, idleDevices)
		b.ReportMetric(r.Heap, "heapB/conn")
		b.ReportMetric(r.Stacks, "stackB/conn")
		b.ReportMetric(r.Goroutines, "goroutines/conn")
	}
}
