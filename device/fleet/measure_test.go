package fleet_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device/fleet"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/sas"
)

// TestMeasure is a measuring aid, not a check. With DMCTL_FLEET_FILE (one
// device connection string per line) and DMCTL_CA_FILE pointing at a hub
// running in another process (dmctl hub serve), it runs the first
// DMCTL_FLEET_MEASURE devices (default all) in this process and logs
// goroutines and Go memory per device; DMCTL_FLEET_PROFILE names a folder
// for heap.pprof and goroutine.pprof.
func TestMeasure(t *testing.T) {
	file := os.Getenv("DMCTL_FLEET_FILE")
	if file == "" {
		t.Skip("set DMCTL_FLEET_FILE and DMCTL_CA_FILE to measure a fleet against a running hub")
	}
	n, _ := strconv.Atoi(os.Getenv("DMCTL_FLEET_MEASURE"))
	css := readFile(t, file, n)
	pem, err := os.ReadFile(os.Getenv("DMCTL_CA_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)

	keepAlive, _ := time.ParseDuration(os.Getenv("DMCTL_FLEET_KEEPALIVE"))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	f, err := fleet.New(fleet.Config{
		Devices:     css,
		Conn:        mqtt.Config{RootCAs: pool, KeepAlive: keepAlive},
		ConnectRate: 1000,
		Log:         zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-f.Ready():
	case err := <-done:
		done <- nil
		t.Fatal(err)
	}
	t.Logf("%d devices connected in %s", len(css), f.ReadyAt().Sub(startOf(f)))
	time.Sleep(2 * time.Second) // let connect-time garbage become garbage
	for range 6 {               // stacks shrink by half per collection at most
		runtime.GC()
	}
	runtime.ReadMemStats(&after)
	g1 := runtime.NumGoroutine()
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / 1024 / float64(len(css)) }
	t.Logf("goroutines %d -> %d: %.1f per device", g0, g1, float64(g1-g0)/float64(len(css)))
	t.Logf("per device: heap in use %.1f kB, stacks %.1f kB, Go Sys %.1f kB",
		per(after.HeapInuse, before.HeapInuse), per(after.StackInuse, before.StackInuse), per(after.Sys, before.Sys))
	if dir := os.Getenv("DMCTL_FLEET_PROFILE"); dir != "" && keepAlive > 0 {
		// Idle CPU: a profile over two keep-alive periods.
		out, err := os.Create(dir + "/cpu.pprof")
		if err != nil {
			t.Fatal(err)
		}
		var ru0, ru1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		if err := pprof.StartCPUProfile(out); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * keepAlive)
		pprof.StopCPUProfile()
		out.Close()
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		t.Logf("idle CPU over %s: %s (%.1f%% of one core)", 2*keepAlive, cpu, 100*cpu.Seconds()/(2*keepAlive).Seconds())
	}
	if dir := os.Getenv("DMCTL_FLEET_PROFILE"); dir != "" {
		for _, p := range []string{"heap", "goroutine"} {
			out, err := os.Create(dir + "/" + p + ".pprof")
			if err != nil {
				t.Fatal(err)
			}
			if err := pprof.Lookup(p).WriteTo(out, 0); err != nil {
				t.Fatal(err)
			}
			out.Close()
		}
	}
}

var measureStart = time.Now()

func startOf(*fleet.Fleet) time.Time { return measureStart }

func readFile(t *testing.T, name string, n int) []*sas.ConnectionString {
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var css []*sas.ConnectionString
	sc := bufio.NewScanner(f)
	for sc.Scan() && (n <= 0 || len(css) < n) {
		cs, err := sas.ParseDevice(sc.Text())
		if err != nil {
			t.Fatal(err)
		}
		css = append(css, cs)
	}
	return css
}
