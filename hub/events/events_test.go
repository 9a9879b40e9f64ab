package events

import (
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func seqs(evs []Event) []uint64 {
	var s []uint64
	for _, e := range evs {
		s = append(s, e.Seq)
	}
	return s
}

func TestRingKeepsTheLastEventsAndCountsWhatIsLost(t *testing.T) {
	r := New(3, nil)
	if evs, lost := r.Since(0, 0); len(evs) != 0 || lost != 0 {
		t.Fatalf("empty ring: %v, lost %d", evs, lost)
	}
	for i := 0; i < 5; i++ {
		r.Add(Event{Kind: Connected, DeviceID: "d"})
	}
	evs, lost := r.Since(0, 0)
	if got := seqs(evs); len(got) != 3 || got[0] != 3 || got[2] != 5 || lost != 2 {
		t.Fatalf("Since(0) = %v lost %d, want [3 4 5] lost 2", got, lost)
	}
	if evs, lost := r.Since(3, 0); len(evs) != 2 || evs[0].Seq != 4 || lost != 0 {
		t.Fatalf("Since(3) = %v lost %d, want [4 5] lost 0", seqs(evs), lost)
	}
	if evs, _ := r.Since(1, 1); len(evs) != 1 || evs[0].Seq != 3 {
		t.Fatalf("Since(1, max 1) = %v, want [3]", seqs(evs))
	}
	if evs, lost := r.Since(5, 0); len(evs) != 0 || lost != 0 {
		t.Fatalf("Since(last) = %v lost %d, want nothing", seqs(evs), lost)
	}
	if r.Last() != 5 {
		t.Fatalf("Last = %d, want 5", r.Last())
	}
	if evs[0].Time.IsZero() {
		t.Fatal("Add left Time zero")
	}
}

func TestChangedWakesAWaiterAndCloseWakesAll(t *testing.T) {
	r := New(10, nil)
	ch := r.Changed()
	select {
	case <-ch:
		t.Fatal("Changed is ready before any Add")
	default:
	}
	r.Add(Event{Kind: Message})
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed was not closed by Add within 5 s")
	}
	ch = r.Changed()
	r.Close()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed was not closed by Close within 5 s")
	}
	r.Add(Event{Kind: Message})
	if r.Last() != 1 || !r.Closed() {
		t.Fatalf("after Close: Last %d Closed %v, want 1 true", r.Last(), r.Closed())
	}
}

func TestNilRingDropsEvents(t *testing.T) {
	var r *Ring
	r.Add(Event{Kind: Connected}) // must not panic
}

func TestSetBodyBoundsAndMarksPayloads(t *testing.T) {
	var e Event
	e.SetBody([]byte(`{"a":1}`))
	if e.Body != `{"a":1}` || e.Bytes != 7 || e.Truncated || e.Binary {
		t.Fatalf("small body: %+v", e)
	}
	big := strings.Repeat("é", MaxBody) // 2 bytes each
	e = Event{}
	e.SetBody([]byte(big))
	if !e.Truncated || len(e.Body) > MaxBody || !utf8.ValidString(e.Body) || e.Bytes != len(big) {
		t.Fatalf("big body: truncated %v, %d bytes kept (max %d), valid %v, Bytes %d", e.Truncated, len(e.Body), MaxBody, utf8.ValidString(e.Body), e.Bytes)
	}
	e = Event{}
	e.SetBody([]byte{0xff, 0xfe})
	if !e.Binary || e.Body != "" || e.Bytes != 2 {
		t.Fatalf("binary body: %+v", e)
	}
}

func TestConcurrentAddAndRead(t *testing.T) {
	r := New(100, nil)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				r.Add(Event{Kind: Message})
			}
		}()
	}
	var last uint64
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		evs, _ := r.Since(last, 0)
		for _, e := range evs {
			if e.Seq <= last {
				t.Fatalf("seq %d after %d: not increasing", e.Seq, last)
			}
			last = e.Seq
		}
		select {
		case <-done:
			if r.Last() != 2000 {
				t.Fatalf("Last = %d, want 2000", r.Last())
			}
			return
		default:
		}
	}
}
