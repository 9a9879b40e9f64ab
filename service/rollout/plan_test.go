package rollout

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseWaves(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Step
		err  string
	}{
		{"1%,10%,100%", []Step{{Percent: 1}, {Percent: 10}, {Percent: 100}}, ""},
		{" 1 , 10 ,100 ", []Step{{Count: 1}, {Count: 10}, {Count: 100}}, ""},
		{"1,10%,100%", []Step{{Count: 1}, {Percent: 10}, {Percent: 100}}, ""},
		{"0.5%", []Step{{Percent: 0.5}}, ""},
		{"", nil, "no waves"},
		{"1,,2", nil, "wave 2 is empty"},
		{"10%,5%", nil, "larger than the one before"},
		{"5,5", nil, "larger than the one before"},
		{"0%", nil, "above 0"},
		{"101%", nil, "at most 100"},
		{"0", nil, "above 0"},
		{"-3", nil, "above 0"},
		{"x%", nil, "above 0"},
		{"ten", nil, "device count"},
		{"NaN%", nil, "above 0"},
	} {
		got, err := ParseWaves(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseWaves(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseWaves(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if s := fmt.Sprint([]Step{{Percent: 12.5}, {Count: 3}}); s != "[12.5% 3]" {
		t.Errorf("String: %s", s)
	}
}

func TestWaveSizes(t *testing.T) {
	p := func(s string) []Step {
		w, err := ParseWaves(s)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	for _, tc := range []struct {
		plan []Step
		n    int
		want []int
	}{
		{nil, 7, []int{7}},
		{nil, 0, nil},
		{p("1%,10%,100%"), 1000, []int{10, 90, 900}},
		{p("1%,10%,100%"), 100, []int{1, 9, 90}},
		{p("1%,10%,100%"), 5, []int{1, 4}},          // 1% and 10% of 5 both round up to 1
		{p("1%,10%,100%"), 1, []int{1}},             // one device: one wave
		{p("1,10,100"), 1000, []int{1, 9, 90, 900}}, // the rest as a final wave
		{p("1,10,100"), 50, []int{1, 9, 40}},        // counts capped at n
		{p("50%"), 3, []int{2, 1}},                  // ceil(1.5) = 2
		{p("1,50%,100%"), 21, []int{1, 10, 10}},
		{p("33.3%,66.6%,100%"), 1000, []int{333, 333, 334}},
	} {
		got := WaveSizes(tc.plan, tc.n)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("WaveSizes(%v, %d) = %v, want %v", tc.plan, tc.n, got, tc.want)
		}
		sum := 0
		for _, s := range got {
			sum += s
		}
		if sum != tc.n {
			t.Errorf("WaveSizes(%v, %d) sums to %d", tc.plan, tc.n, sum)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"5%": 0.05, "0%": 0, "100%": 1, " 2.5 %": 0.025} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"5", "0.05", "-1%", "101%", "%", "abc%", ""} {
		if got, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", in, got)
		}
	}
}
