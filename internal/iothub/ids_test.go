package iothub

import (
	"strings"
	"testing"
)

func TestCheckID(t *testing.T) {
	for _, ok := range []string{"d1", "a-b.c+d%e_f#g*h?i!j(k)l,m:n=o@p$q'r", strings.Repeat("x", MaxIDLength)} {
		if err := CheckID(ok); err != nil {
			t.Errorf("CheckID(%q) = %v", ok, err)
		}
	}
	for id, want := range map[string]string{
		"":                                 "is empty",
		strings.Repeat("x", MaxIDLength+1): "over the limit of 128",
		"caf\xe9":                          "not valid UTF-8",
		"été":                              `contains 'é'`,
		"a/b":                              `contains '/'`,
		"a b":                              `contains ' '`,
		"a\x00b":                           `contains '\x00'`,
	} {
		err := CheckID(id)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckID(%q) = %v, want an error with %q", id, err, want)
		}
	}
}
