package fdlimit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestCheckAndHint(t *testing.T) {
	l := Limit{Soft: 20000, Hard: 20000}
	if err := l.Check(19936); err != nil {
		t.Fatalf("19,936 connections under a 20,000 limit: %v", err)
	}
	err := l.Check(100000)
	if !errors.Is(err, ErrTooMany) || !strings.Contains(err.Error(), "100000 connections need about 100064 open files; this process may open 20000") {
		t.Fatalf("Check(100000) = %v", err)
	}
	h := l.Hint(100000, "--processes")
	for _, want := range []string{"the hard limit is 20000", "ulimit -Hn 100064", "--processes 6", "at most 19936 connections each"} {
		if !strings.Contains(h, want) {
			t.Errorf("hint %q lacks %q", h, want)
		}
	}
	raisable := Limit{Soft: 1024, Hard: 1 << 20}
	if h := raisable.Hint(5000, ""); !strings.Contains(h, "ulimit -n 5064") || strings.Contains(h, "processes") {
		t.Errorf("hint with a raisable soft limit and no shard flag: %q", h)
	}
	if !l.Near(17943) || l.Near(17900) {
		t.Errorf("Near: 90%% of 19,936 is 17,943 connections")
	}
	if (Limit{Soft: 10}).Connections() != 0 || (Limit{Soft: 1 << 50}).Check(1<<30) != nil {
		t.Error("tiny or unlimited limits")
	}
}

func TestOpenReadsTheProcessLimit(t *testing.T) {
	l, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	if l.Soft == 0 || l.Soft > l.Hard {
		t.Fatalf("limit %+v", l)
	}
}

// A process that runs out of descriptors sees EMFILE, which IsExhausted
// recognises through the errors net and os wrap it in.
func TestIsExhausted(t *testing.T) {
	if !IsExhausted(&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}) {
		t.Error("accept's EMFILE not recognised")
	}
	if !IsExhausted(fmt.Errorf("dial: %w", syscall.ENFILE)) {
		t.Error("ENFILE not recognised")
	}
	if IsExhausted(syscall.ECONNRESET) || IsExhausted(nil) {
		t.Error("other errors taken for exhaustion")
	}
}
