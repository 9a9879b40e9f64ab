//go:build linux

package cli

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal and returns its terminal (slave) end.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { _ = master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { _ = tty.Close() })
	return tty
}

// Progress lines redraw in place only on a terminal that can do it: not on
// a pipe or file, and not when TERM=dumb.
func TestLiveTerminal(t *testing.T) {
	tty := openPTY(t)
	env := func(term string) func(string) string {
		return func(k string) string {
			if k == "TERM" {
				return term
			}
			return ""
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name string
		f    *os.File
		term string
		want bool
	}{
		{"terminal", tty, "xterm-256color", true},
		{"terminal, TERM unset", tty, "", true},
		{"TERM=dumb", tty, "dumb", false},
		{"pipe", w, "xterm-256color", false},
	} {
		if got := liveTerminal(tc.f, env(tc.term)); got != tc.want {
			t.Errorf("%s: liveTerminal = %v, want %v", tc.name, got, tc.want)
		}
	}
	if newLiveLine(tty).tty != liveTerminal(tty, os.Getenv) {
		t.Error("device wait's live line does not follow liveTerminal")
	}
}
