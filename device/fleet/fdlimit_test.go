package fleet

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/internal/fdlimit"
	"github.com/dmctl/dmctl/sas"
)

// Devices the kernel refuses a descriptor are counted as held back until
// they connect, and the fleet warns once, with the numbers and the fix.
func TestFleetCountsDevicesHeldBackByTheFileLimit(t *testing.T) {
	var css []*sas.ConnectionString
	for i := range 3 {
		cs, err := sas.ParseDevice(fmt.Sprintf("HostName=h.example;DeviceId=d%d;SharedAccessKey=c2VjcmV0LWtleQ==", i))
		if err != nil {
			t.Fatal(err)
		}
		css = append(css, cs)
	}
	var logs bytes.Buffer
	f, err := New(Config{
		Devices:   css,
		Limit:     fdlimit.Limit{Soft: 66, Hard: 66},
		ShardFlag: "--processes",
		Log:       zerolog.New(&logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	failed := func(err error) device.Event { return device.Event{Kind: device.EventConnectFailed, Err: err} }
	f.connEvent(f.members[0], failed(fmt.Errorf("connect to h.example:8883 as d0: %w", emfile)))
	f.connEvent(f.members[1], failed(fmt.Errorf("dial: %w", syscall.EMFILE)))
	f.connEvent(f.members[1], failed(fmt.Errorf("dial: %w", syscall.EMFILE))) // counted once
	if got := f.Stats().FdLimited; got != 2 {
		t.Fatalf("after two devices were refused a descriptor, FdLimited = %d, want 2", got)
	}
	if n := strings.Count(logs.String(), `"event":"fd_exhausted"`); n != 1 {
		t.Fatalf("fd_exhausted logged %d times, want once:\n%s", n, logs.String())
	}
	for _, want := range []string{`"limit":66`, "ulimit -Hn 67", "--processes 2 (at most 2 connections each)", "too many open files"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the warning lacks %q:\n%s", want, logs.String())
		}
	}
	f.connEvent(f.members[0], device.Event{Kind: device.EventConnected})
	f.connEvent(f.members[1], failed(syscall.ECONNREFUSED))
	f.connEvent(f.members[2], failed(syscall.ECONNREFUSED))
	if got := f.Stats().FdLimited; got != 0 {
		t.Fatalf("after the devices connected or failed otherwise, FdLimited = %d, want 0", got)
	}
	// The system's table full is another fix.
	if h := f.fdHint(3, fmt.Errorf("socket: %w", syscall.ENFILE)); !strings.Contains(h, "fs.file-max") {
		t.Errorf("ENFILE hint: %q", h)
	}
}

// The state line names the held-back devices; shards' Stats add up.
func TestStatsLogAndAdd(t *testing.T) {
	a := Stats{Devices: 10, Connected: 7, Retrying: 3, FdLimited: 3, EverConnected: 7}
	b := Stats{Devices: 5, Connected: 5, EverConnected: 5, FwCurrent: 5}
	sum := a.Add(b)
	if want := (Stats{Devices: 15, Connected: 12, Retrying: 3, FdLimited: 3, EverConnected: 12, FwCurrent: 5}); sum != want {
		t.Fatalf("sum %+v, want %+v", sum, want)
	}
	var buf bytes.Buffer
	l := zerolog.New(&buf)
	sum.Log(l.Info(), false)
	if want := `"event":"fleet","devices":15,"connected":12,"connecting":0,"retrying":3,"rebooting":0,"fd_limited":3,"message":"fleet: 12/15 connected, 0 connecting, 3 retrying, 0 rebooting · 3 held back by the open-file limit"`; !strings.Contains(buf.String(), want) {
		t.Fatalf("state line %s\nwant %s", buf.String(), want)
	}
}
