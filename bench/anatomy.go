package main

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/rs/zerolog"
)

// anatomyRow is what an idle device connection costs one side, in the Go
// runtime's own accounting: that side runs inside the bench process and the
// other side in a child process, so the bench process's figures before and
// after the fleet connected are that side's alone.
type anatomyRow struct {
	Side       string // "hub" or "device"
	Conns      int
	Heap       float64 // live heap objects per connection, bytes
	Spans      float64 // heap spans in use (objects and the free slots among them) per connection, bytes
	Stacks     float64 // goroutine stack memory per connection, bytes
	Goroutines float64 // per connection
	Goal       float64 // the GC's heap goal per connection, bytes
	Err        string
}

// runtimeMem is a reading of the bench process's Go memory.
type runtimeMem struct {
	heap, spans, stacks, goal uint64
	goroutines                int
}

// gcRounds GCs run before each reading: each may halve a goroutine's stack
// that uses under a quarter of it, as the GC does for an idle process.
var gcRounds = 2

// readRuntimeMem returns the live heap objects (the least of five readings
// 300 ms apart, so that a reading taken while the hub renders twins for a
// query or a configuration pass does not count those documents) and the
// heap spans in use at that reading (the objects plus the free slots among
// them: memory the heap cannot return while one object of a span lives),
// the memory reserved for goroutine stacks, the GC's heap goal and the
// goroutine count, each after gcRounds GCs.
func readRuntimeMem() runtimeMem {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	var m runtimeMem
	for i := range 5 {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		for range gcRounds {
			runtime.GC()
		}
		metrics.Read(samples)
		if h := samples[0].Value.Uint64(); i == 0 || h < m.heap {
			m.heap, m.spans = h, h+samples[3].Value.Uint64()
		}
		m.stacks, m.goal = samples[1].Value.Uint64(), samples[2].Value.Uint64()
	}
	m.goroutines = runtime.NumGoroutine()
	return m
}

// row is the per-connection difference between two readings.
func (after runtimeMem) row(side string, before runtimeMem, n int) anatomyRow {
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	return anatomyRow{Side: side, Conns: n, Heap: per(after.heap, before.heap),
		Spans: per(after.spans, before.spans), Stacks: per(after.stacks, before.stacks),
		Goroutines: float64(after.goroutines-before.goroutines) / float64(n), Goal: per(after.goal, before.goal)}
}

// anatomySection measures section 3's idle connections once per side:
// the hub in this process with a `dmctl device run` fleet as a child, then
// a `dmctl hub serve` child with the fleet package in this process.
func anatomySection(ctx context.Context, cfg *config, res *results, bin string) {
	n := cfg.AnatomyDevices
	if n <= 0 {
		return
	}
	cfg.progress("anatomy: the hub's side of %d idle connections", n)
	r, err := hubAnatomy(ctx, cfg, bin, n)
	if err != nil {
		r = anatomyRow{Side: "hub", Conns: n, Err: err.Error()}
	}
	res.Anatomy = append(res.Anatomy, r)
	if ctx.Err() != nil {
		return
	}
	cfg.progress("anatomy: the devices' side of %d idle connections", n)
	if r, err = deviceAnatomy(ctx, cfg, bin, n); err != nil {
		r = anatomyRow{Side: "device", Conns: n, Err: err.Error()}
	}
	res.Anatomy = append(res.Anatomy, r)
}

// hubAnatomy runs a hub in this process and n idle devices in a child.
func hubAnatomy(ctx context.Context, cfg *config, bin string, n int) (anatomyRow, error) {
	dir, err := dataDir(cfg, "hub-anatomy")
	if err != nil {
		return anatomyRow{}, err
	}
	h, err := hub.New(hub.Config{DataDir: dir, Listen: []string{"127.0.0.1:0"}, Log: zerolog.Nop()})
	if err != nil {
		return anatomyRow{}, err
	}
	if err := h.Start(ctx); err != nil {
		_ = h.Close()
		return anatomyRow{}, err
	}
	defer func() { _ = h.Close() }()
	port := strconv.Itoa(h.Port())
	ids := service.SequentialIDs("anatomy", 0, n)
	css := make([]string, n)
	for i, id := range ids {
		d, err := h.Store().CreateDevice(iothub.Device{DeviceID: id})
		if err != nil {
			return anatomyRow{}, err
		}
		css[i] = "HostName=localhost:" + port + ";DeviceId=" + id + ";SharedAccessKey=" + d.Authentication.SymmetricKey.PrimaryKey
	}
	file := filepath.Join(dir, "fleet.txt")
	if err := writeLines(file, css); err != nil {
		return anatomyRow{}, err
	}
	ready := filepath.Join(dir, "fleet.ready.json")
	before := readRuntimeMem()
	f, err := start("dmctl device run", []string{"DMCTL_CA_FILE=" + h.CAFile()}, "", bin, "--log-level", "warn", "device", "run",
		"--connection-strings-file", file, "--ready-file", ready, "--connect-rate", strconv.Itoa(cfg.ConnectRate)+"/s")
	if err != nil {
		return anatomyRow{}, err
	}
	defer f.stop(30 * time.Second)
	if _, err := f.waitFile(ctx, ready, 60*time.Second+time.Duration(n)*time.Second/time.Duration(max(1, cfg.ConnectRate))*3); err != nil {
		return anatomyRow{}, err
	}
	settle(ctx)
	connected := 0
	for _, id := range ids {
		if h.Connected(id) {
			connected++
		}
	}
	if connected != n {
		return anatomyRow{}, fmt.Errorf("%d of %d devices connected", connected, n)
	}
	return readRuntimeMem().row("hub", before, n), nil
}

// deviceAnatomy runs a hub process and n idle devices in this process, with
// the fleet package `dmctl device run` uses.
func deviceAnatomy(ctx context.Context, cfg *config, bin string, n int) (anatomyRow, error) {
	dir, err := dataDir(cfg, "hub-anatomy-proc")
	if err != nil {
		return anatomyRow{}, err
	}
	h, err := startHubProc(ctx, cfg, bin, dir)
	if err != nil {
		return anatomyRow{}, err
	}
	defer h.stop()
	css := make([]*sas.ConnectionString, 0, n)
	for _, r := range h.svc.CreateDevices(ctx, service.SequentialIDs("anatomy", 0, n), 16) {
		if r.Err != nil {
			return anatomyRow{}, r.Err
		}
		cs, err := sas.ParseDevice("HostName=localhost:" + h.port + ";DeviceId=" + r.DeviceID + ";SharedAccessKey=" + r.Device.Authentication.SymmetricKey.PrimaryKey)
		if err != nil {
			return anatomyRow{}, err
		}
		css = append(css, cs)
	}
	fl, err := fleet.New(fleet.Config{Devices: css, Conn: mqtt.Config{RootCAs: h.pool, ClientType: "dmctl-bench"},
		Device: device.Config{}, ConnectRate: float64(cfg.ConnectRate), Log: zerolog.Nop()})
	if err != nil {
		return anatomyRow{}, err
	}
	before := readRuntimeMem()
	gc := fleet.NewConnectGC() // as dmctl device run collects while it connects
	gc.Connecting()
	stop, err := startFleet(ctx, fl, 60*time.Second+time.Duration(n)*time.Second/time.Duration(max(1, cfg.ConnectRate))*3)
	gc.Connected()
	if err != nil {
		return anatomyRow{}, fmt.Errorf("%d devices: %w", n, err)
	}
	defer stop()
	settle(ctx)
	return readRuntimeMem().row("device", before, n), nil
}

// settle lets every fresh connection finish its first exchanges (twin
// read, first reports).
func settle(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
}

// anatomyMarkdown writes section 3's breakdown of an idle connection.
func (r *results) anatomyMarkdown(w func(string, ...any)) {
	if len(r.Anatomy) == 0 {
		return
	}
	w("\n### What one idle connection is made of\n\n")
	w("Each side in turn inside the bench process, the other side in a child process (the hub in-process with a `dmctl device run` child; then a `dmctl hub serve` child with the fleet package in-process), so the bench process's figures are that side's alone: the Go runtime's live heap objects, the heap spans that hold them, memory reserved for goroutine stacks and the GC's heap goal, each read after %d forced GCs (as an idle process's periodic GC would shrink its stacks), two seconds after the last device connected, minus the same before the fleet started. ", gcRounds)
	w("A span in use holds live objects and the free slots among them; the heap cannot give its memory back while one object in it lives, and a connect storm leaves many such spans, each connection's long-lived objects allocated among its handshake's garbage; the hub runs with GOGC=100, the fleet as `dmctl device run` runs it, with GC percent %d while devices connect. ", fleet.ConnectingGCPercent)
	w("Once the free pages are returned (`dmctl device run` returns them when every device has connected), a side's RSS is about its spans in use plus its stacks; between collections the heap grows towards the GC's goal (with GOGC=100, twice the live heap plus the part of the stacks in use), so RSS runs up to about the goal plus the stacks.\n\n")
	w("| side | connections | heap objects / conn | heap spans in use / conn | goroutine stacks / conn | goroutines / conn | GC heap goal / conn | |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, a := range r.Anatomy {
		if a.Err != "" {
			w("| %s | %d | - | - | - | - | - | %s |\n", a.Side, a.Conns, oneLine(a.Err))
			continue
		}
		w("| %s | %d | %s | %s | %s | %.2f | %s | |\n", a.Side, a.Conns, kib(a.Heap), kib(a.Spans), kib(a.Stacks), a.Goroutines, kib(a.Goal))
	}
}
