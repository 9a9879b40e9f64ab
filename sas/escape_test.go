package sas

import (
	"fmt"
	"strings"
	"testing"
)

// TestEscapeEveryByte pins escape and unescape to their definition for
// every byte value: ASCII letters, digits and -_.~ stay, every other byte
// is %XX with uppercase hex, and unescape reverses it.
func TestEscapeEveryByte(t *testing.T) {
	for c := 0; c < 256; c++ {
		s := string([]byte{'a', byte(c), 'z'})
		want := s
		if !isUnreserved(byte(c)) {
			want = fmt.Sprintf("a%%%02Xz", c)
		}
		if got := escape(s); got != want {
			t.Errorf("escape(%q) = %q, want %q", s, got, want)
		}
		if back, err := unescape(want); err != nil || back != s {
			t.Errorf("unescape(%q) = %q, %v; want %q", want, back, err, s)
		}
	}
	// '+' is not a space in SAS tokens; lowercase hex is accepted.
	for in, want := range map[string]string{"a+b": "a+b", "%2b%2F": "+/", "x%20y": "x y"} {
		if got, err := unescape(in); err != nil || got != want {
			t.Errorf("unescape(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"%", "%4", "%G0", "a%2", strings.Repeat("%", 3)} {
		if _, err := unescape(in); err != ErrMalformed {
			t.Errorf("unescape(%q) error = %v, want ErrMalformed", in, err)
		}
	}
}
