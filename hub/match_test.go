package hub

import (
	"strings"
	"testing"
)

// splitMatch is topic filter matching written the plain way, level by
// level after splitting both: matchFilter must agree with it everywhere.
func splitMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fs := strings.Split(filter, "/")
	ts := strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

// TestMatchFilterAgrees: every filter against every topic, edge cases of
// empty levels, trailing slashes and wildcards included.
func TestMatchFilterAgrees(t *testing.T) {
	filters := []string{"", "#", "+", "/", "+/", "/+", "a", "a/", "a/#", "a/+", "a/b", "a/b/", "a/+/c", "a/#/c",
		"+/+", "+/#", "/#", "$iothub/methods/POST/#", "$iothub/#", "$iothub/+/POST/#", "$iothub/twin/res/#"}
	topics := []string{"", "/", "a", "a/", "a/b", "a/b/", "a/b/c", "a//c", "/a", "b", "$iothub/methods/POST/m/?$rid=1",
		"$iothub/twin/res/200/?$rid=2", "$iothub", "$iothub/"}
	for _, f := range filters {
		for _, tp := range topics {
			if got, want := matchFilter(f, tp), splitMatch(f, tp); got != want {
				t.Errorf("matchFilter(%q, %q) = %v, want %v", f, tp, got, want)
			}
		}
	}
}

// TestMatchFilterAllocates: matching runs on every hub-to-device message
// and allocates nothing.
func TestMatchFilterAllocates(t *testing.T) {
	n := testing.AllocsPerRun(100, func() {
		matchFilter("$iothub/+/POST/#", "$iothub/methods/POST/reboot/?$rid=1")
	})
	if n != 0 {
		t.Errorf("matchFilter allocates %v times per call", n)
	}
}

// TestCutSpaceAgrees: cutSpace is CutPrefix with the identity's own space,
// for devices and modules, on topics inside, beside and outside it.
func TestCutSpaceAgrees(t *testing.T) {
	keys := []string{"d1", "d", "d1/m1", "d1/m", "d1/"}
	topics := []string{"devices/d1/messages/events/", "devices/d1/messages/events", "devices/d1", "devices/d1/",
		"devices/d12/messages/events/", "devices/d1/modules/m1/messages/events/a=b", "devices/d1/modules/m1",
		"devices/d1/modules/m12/x", "devices/d1/modules/m1/", "devices/", "", "$iothub/methods/res/200/?$rid=1"}
	for _, k := range keys {
		for _, tp := range topics {
			gr, gok := cutSpace(k, tp)
			wr, wok := strings.CutPrefix(tp, ownSpace(k))
			if gr != wr || gok != wok {
				t.Errorf("cutSpace(%q, %q) = %q, %v; want %q, %v", k, tp, gr, gok, wr, wok)
			}
		}
	}
}
