package faults_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/faults"
)

// Connections reset mid-stream while a device reports: it reconnects every
// time, and every reported patch the device API acknowledged is in the twin
// the service reads afterwards (no acknowledged write is lost).
func TestResetsLoseNoAcknowledgedReport(t *testing.T) {
	r := newRig(t)
	d := r.startDevice(t, "reset-1", mqtt.Config{MaxBackoff: 2 * time.Second})
	client := r.service(t)

	// The device queues a numbered patch every 40 ms until the drops are
	// over, so there is always traffic for a toxic to cut.
	var acks []<-chan error
	stop := make(chan struct{})
	queued := make(chan struct{})
	go func() { // owned by the test: it ends when stop closes, and the test waits for it
		defer close(queued)
		for i := 0; ; i++ {
			done, err := d.conn.Queue(fmt.Appendf(nil, `{"p%03d":%d}`, i, i))
			if err != nil {
				t.Errorf("queue patch %d: %v", i, err)
				return
			}
			acks = append(acks, done)
			select {
			case <-stop:
				return
			case <-time.After(40 * time.Millisecond):
			}
		}
	}()

	// Four drops while the patches flow: two resets (RST at the next chunk
	// the device sends) and two connections cut after 300 bytes, in the
	// middle of a packet.
	cuts := []faults.Toxic{
		{Name: "reset", Type: "reset_peer", Stream: faults.Upstream, Attributes: map[string]any{"timeout": 0}},
		{Name: "cut", Type: "limit_data", Stream: faults.Upstream, Attributes: map[string]any{"bytes": 300}},
	}
	for k := 1; k <= 4; k++ {
		time.Sleep(300 * time.Millisecond) // let some patches through between drops
		tx := cuts[(k-1)%2]
		if err := r.dev.Add(tx); err != nil {
			t.Fatal(err)
		}
		d.rec.Wait(t, device.EventDisconnected, k, 15*time.Second)
		if err := r.dev.Remove(timeout(t, 5*time.Second), tx.Name); err != nil {
			t.Fatal(err)
		}
		d.rec.Wait(t, device.EventSubscribed, k+1, 15*time.Second)
	}
	time.Sleep(300 * time.Millisecond) // a few patches on the last connection too
	close(stop)
	select {
	case <-queued:
	case <-time.After(5 * time.Second):
		t.Fatal("the patch producer did not stop within 5 s")
	}
	patches := len(acks)

	acked := 0
	deadline := time.After(30 * time.Second)
	for i, done := range acks {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("patch %d refused: %v", i, err)
			}
			acked++
		case <-deadline:
			t.Fatalf("patch %d not acknowledged within 30 s of the last drop (%d acknowledged)", i, acked)
		}
	}

	tw, err := client.Twin(timeout(t, 30*time.Second), d.id)
	if err != nil {
		t.Fatalf("read twin: %v", err)
	}
	lost := 0
	for i := range patches {
		if got := tw.Properties.Reported[fmt.Sprintf("p%03d", i)]; got != float64(i) {
			t.Errorf("acknowledged patch p%03d: twin has %v, want %d", i, got, i)
			lost++
		}
	}
	t.Logf("drops: %d, reconnects: %d, patches acknowledged: %d, lost: %d, resent after no answer: %d",
		d.rec.Count(device.EventDisconnected), d.rec.Count(device.EventConnected)-1, acked, lost,
		d.rec.Count(device.EventReportRetry))
}
