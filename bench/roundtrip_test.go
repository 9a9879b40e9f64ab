package main

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/rs/zerolog"
)

// The benchmarks of this file measure the direct-method path inside one
// process, in figures that do not move with the machine's load: heap
// allocations per call (-benchmem counts every goroutine's: service
// client, hub and device alike) and read/write syscalls per call (the
// process's syscr and syscw from /proc/self/io, which count every read and
// write syscall, those that return EAGAIN included), and the process's CPU
// time per call (user and system, every thread: what throughput on a busy
// machine is bounded by; it moves a little with contention, far less than
// wall time).
//
//	go test -run '^$' -bench RoundTrip -benchmem ./bench

// procIO reads the process's read and write syscall counts.
func procIO(tb testing.TB) (reads, writes int64) {
	tb.Helper()
	f, err := os.Open("/proc/self/io")
	if err != nil {
		tb.Skipf("no /proc/self/io: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

// benchHub starts an in-process hub with one dmctl device answering the
// bench method, and returns it with a function that stops both.
func benchHub(b *testing.B, id string) (*inproc, func()) {
	b.Helper()
	cfg := &config{Log: zerolog.Nop(), DataDir: b.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	p, err := startInProcess(ctx, cfg, &results{})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop := func() {
		dcancel()
		wg.Wait()
		p.close()
		cancel()
	}
	if _, err := p.startDevice(dctx, &wg, id, device.Config{Quiet: true}); err != nil {
		stop()
		b.Fatal(err)
	}
	return p, stop
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loopWithSyscalls runs call b.N times and reports the read and write
// syscalls and the CPU time per call.
func loopWithSyscalls(b *testing.B, call func() error) {
	b.Helper()
	measured(b, call, func() {
		for i := 0; i < b.N; i++ {
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// measured warms call up (pools, buffers, stacks), then runs loop under the
// benchmark timer and reports the CPU time and the read and write syscalls
// per op.
func measured(b *testing.B, call func() error, loop func()) {
	b.Helper()
	for range 200 {
		if err := call(); err != nil {
			b.Fatal(err)
		}
	}
	r0, w0 := procIO(b)
	c0 := cpuTime()
	b.ReportAllocs()
	b.ResetTimer()
	loop()
	b.StopTimer()
	c1 := cpuTime()
	r1, w1 := procIO(b)
	b.ReportMetric(float64((c1-c0).Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(r1-r0)/float64(b.N), "reads/op")
	b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/op")
}

// BenchmarkMethodRoundTrip is section 1's path (a): dmctl service client
// (HTTPS) -> hub REST -> hub broker -> MQTT -> dmctl device, and back.
func BenchmarkMethodRoundTrip(b *testing.B) {
	p, stop := benchHub(b, "rt-dev")
	defer stop()
	call := invoker(context.Background(), p.svc)
	if err := call("rt-dev", true); err != nil {
		b.Fatal(err)
	}
	loopWithSyscalls(b, func() error { return call("rt-dev", false) })
}

// BenchmarkBrokerRoundTrip is the MQTT half of path (a) alone: the hub's
// broker invokes the method (as the REST handler does) -> MQTT -> dmctl
// device, and back; no HTTP.
func BenchmarkBrokerRoundTrip(b *testing.B) {
	p, stop := benchHub(b, "rt-broker")
	defer stop()
	devs := p.h.Devices()
	ctx := context.Background()
	if _, _, err := devs.Invoke(ctx, "rt-broker", benchMethod, benchPayload, 10*time.Second, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	loopWithSyscalls(b, func() error {
		_, _, err := devs.Invoke(ctx, "rt-broker", benchMethod, benchPayload, 0, 10*time.Second)
		return err
	})
}

// BenchmarkMethodParallel is section 2's load on one device: 64 callers
// at once (32 per core on 2 cores) through one service client. Its
// cpu-µs/op bounds throughput: 2 cores give 2e6/cpu-µs calls per second
// at most.
func BenchmarkMethodParallel(b *testing.B) {
	p, stop := benchHub(b, "rt-par")
	defer stop()
	call := invoker(context.Background(), p.svc)
	if err := call("rt-par", true); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(32)
	measured(b, func() error { return call("rt-par", false) }, func() {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call("rt-par", false); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
