package soak

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestCheckFindsLostAndUnexpectedWrites(t *testing.T) {
	// Writes 1..10 sent: keys soak1..soak7 got 1..7, soak0 got 8, soak1
	// and soak2 then 9 and 10.
	var sent [Keys]int64
	for seq := int64(1); seq <= 10; seq++ {
		sent[seq%Keys] = seq
	}
	acks := []ack{{seq: 3, iv: 0}, {seq: 9, iv: 1}, {seq: 10, iv: 2}}
	cases := []struct {
		name       string
		section    map[string]any
		lost       []int
		unexpected int
	}{
		{"every acked write there", map[string]any{"soak3": 3.0, "soak1": 9.0, "soak2": 10.0, "$version": 4.0}, nil, 0},
		{"an older value (9 lost)", map[string]any{"soak3": 3.0, "soak1": 1.0, "soak2": 10.0}, []int{1}, 0},
		{"a missing key (3 lost)", map[string]any{"soak1": 9.0, "soak2": 10.0}, []int{0}, 0},
		{"a later unacknowledged write is fine", map[string]any{"soak3": 3.0, "soak1": 9.0, "soak2": 10.0, "soak4": 4.0}, nil, 0},
		{"a value never sent", map[string]any{"soak3": 11.0, "soak1": 9.0, "soak2": 10.0}, []int{0}, 1},
		{"a value of the wrong key", map[string]any{"soak3": 4.0, "soak1": 9.0, "soak2": 10.0}, []int{0}, 1},
		{"not a number", map[string]any{"soak3": "3", "soak1": 9.0, "soak2": 10.0}, []int{0}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lost, unexpected := check(c.section, sent, acks)
			if !equalInts(lost, c.lost) || unexpected != c.unexpected {
				t.Errorf("check = lost in intervals %v, %d unexpected; want %v, %d", lost, unexpected, c.lost, c.unexpected)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCheckRSS(t *testing.T) {
	const mb = 1 << 20
	series := func(vals ...int64) []rssSample {
		s := make([]rssSample, len(vals))
		for i, v := range vals {
			s[i] = rssSample{at: time.Duration(i) * time.Second, rss: v * mb}
		}
		return s
	}
	cases := []struct {
		name   string
		procs  [][]rssSample
		ok     bool
		judged []bool
	}{
		// The first third (connects) may climb; only last vs middle counts.
		{"flat after the start", [][]rssSample{series(10, 40, 60, 62, 61, 63, 62, 64, 63)}, true, []bool{true}},
		{"within the slack", [][]rssSample{series(10, 40, 50, 50, 50, 50, 66, 76, 70)}, true, []bool{true}},
		{"steady growth", [][]rssSample{series(10, 50, 100, 150, 200, 250, 300, 350, 400)}, false, []bool{true}},
		{"second process grows", [][]rssSample{series(50, 50, 50, 50), series(10, 100, 100, 200, 300, 400)}, false, []bool{true, true}},
		{"too few samples are not judged", [][]rssSample{series(10, 500)}, true, []bool{false}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := checkRSS(c.procs)
			if got.OK != c.ok || len(got.Processes) != len(c.judged) {
				t.Fatalf("checkRSS = %+v, want OK %v over %d processes", got, c.ok, len(c.judged))
			}
			for i, p := range got.Processes {
				if p.Judged != c.judged[i] {
					t.Errorf("process %d judged %v, want %v", i, p.Judged, c.judged[i])
				}
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	ok := Config{Bin: "/bin/true", WorkDir: t.TempDir()}
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no binary", func(c *Config) { c.Bin = "" }, "Bin and WorkDir are required"},
		{"no work dir", func(c *Config) { c.WorkDir = "" }, "Bin and WorkDir are required"},
		{"negative devices", func(c *Config) { c.Devices = -1 }, "negative size"},
		{"negative rate", func(c *Config) { c.MethodRate = -5 }, "negative size"},
		{"kill after the load", func(c *Config) { c.Duration = time.Second; c.KillAt = 2 * time.Second }, "not inside"},
		{"kill at the end", func(c *Config) { c.Duration = time.Second; c.KillAt = time.Second }, "not inside"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.edit(&cfg)
			_, err := Run(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Run = %v, want an error with %q", err, c.want)
			}
		})
	}
}
