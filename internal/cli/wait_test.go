package cli

import (
	"bytes"
	"testing"
	"time"
)

func TestWaitLine(t *testing.T) {
	if got, want := waitLine(3, 5, "connected", 2140*time.Millisecond), "3/5 connected (2.1s)"; got != want {
		t.Errorf("waitLine = %q, want %q", got, want)
	}
}

func TestNameSome(t *testing.T) {
	for _, tt := range []struct {
		ids   []string
		total int
		want  string
	}{
		{[]string{"a"}, 1, "a"},
		{[]string{"a", "b"}, 2, "a, b"},
		{[]string{"a", "b", "c", "d", "e"}, 12, "a, b, c, d, e and 7 more"},
	} {
		if got := nameSome(tt.ids, tt.total); got != tt.want {
			t.Errorf("nameSome(%q, %d) = %q, want %q", tt.ids, tt.total, got, tt.want)
		}
	}
}

// TestLiveLine: on a terminal the line is rewritten in place and cleared
// at the end; elsewhere nothing is written.
func TestLiveLine(t *testing.T) {
	var buf bytes.Buffer
	l := &liveLine{w: &buf, tty: true}
	l.show("0/2 connected (0s)")
	l.show("1/2 connected (0.3s)")
	l.clear()
	l.clear()
	if got, want := buf.String(), "\r\x1b[K0/2 connected (0s)\r\x1b[K1/2 connected (0.3s)\r\x1b[K"; got != want {
		t.Errorf("terminal output %q, want %q", got, want)
	}
	buf.Reset()
	l = newLiveLine(&buf) // not a terminal
	l.show("0/2 connected (0s)")
	l.clear()
	if buf.Len() != 0 {
		t.Errorf("wrote %q to a non-terminal", buf.String())
	}
}

// Progress written as log lines is paced: a line is due when its text
// changed and the interval has passed; end keeps a live line and moves on.
func TestThrottleAndLiveLineEnd(t *testing.T) {
	th := throttle{every: time.Hour}
	if !th.due("1/10") {
		t.Fatal("the first line is not due")
	}
	if th.due("2/10") || th.due("1/10") {
		t.Fatal("a line is due before the interval passed")
	}
	th.last = time.Time{} // as a new wave does
	if th.due("1/10") || !th.due("2/10") {
		t.Fatal("after a reset: the same text is due again, or a new one is not")
	}
	var buf bytes.Buffer
	l := &liveLine{w: &buf, tty: true}
	l.end() // nothing shown: nothing written
	l.show("wave 1/1")
	l.end()
	if got := buf.String(); got != "\r\x1b[Kwave 1/1\n" {
		t.Fatalf("live line then end wrote %q", got)
	}
}
