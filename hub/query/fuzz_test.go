package query

import (
	"errors"
	"testing"
	"unicode/utf8"
)

func FuzzParse(f *testing.F) {
	for _, tc := range matchCases {
		f.Add(tc.query)
	}
	for _, tc := range projectCases {
		f.Add(tc.query)
	}
	for _, tc := range syntaxCases {
		if len(tc.query) < 1000 {
			f.Add(tc.query)
		}
	}
	docs := map[string][][]map[string]any{}
	for _, c := range []string{CollectionDevices, CollectionModules, CollectionJobs} {
		docs[c] = [][]map[string]any{fixture(f, c, false), fixture(f, c, true)}
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := Parse(s)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q): error %T is not a *SyntaxError", s, err)
			}
			if n := utf8.RuneCountInString(s); se.Pos < 1 || (se.Pos > n+1 && se.Pos != MaxLength+1) {
				t.Fatalf("Parse(%q): position %d outside 1..%d", s, se.Pos, n+1)
			}
			return
		}
		if q.Top() < 0 {
			t.Fatalf("Parse(%q): Top() = %d", s, q.Top())
		}
		sets, ok := docs[q.Collection()]
		if !ok {
			t.Fatalf("Parse(%q): unknown collection %q", s, q.Collection())
		}
		for _, set := range sets {
			var matched []map[string]any
			for _, d := range set {
				if q.Match(d) {
					matched = append(matched, d)
				}
			}
			rows, err := q.Project(matched)
			if err != nil {
				t.Fatalf("Project(%q): %v", s, err)
			}
			if q.Top() > 0 && len(rows) > q.Top() {
				t.Fatalf("Project(%q): %d rows over TOP %d", s, len(rows), q.Top())
			}
		}
		q.Match(nil)
		if _, err := Parse(q.String()); err != nil {
			t.Fatalf("re-parse of %q failed: %v", s, err)
		}
	})
}
