package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/internal/iothub"
)

// refDoc is the query document the slow way: Twin rendered to JSON and
// decoded with UseNumber.
func refDoc(t *testing.T, tw iothub.Twin) map[string]any {
	t.Helper()
	b, err := json.Marshal(tw)
	if err != nil {
		t.Fatal(err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

// checkDocs compares TwinDocs and ForEachTwinDoc with the reference rendering.
func checkDocs(t *testing.T, s *Store, step string) {
	t.Helper()
	var ids []string
	var want []map[string]any
	if err := s.ForEachTwin(func(tw iothub.Twin) bool {
		ids = append(ids, tw.DeviceID)
		want = append(want, refDoc(t, tw))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	var scanned []map[string]any
	if err := s.ForEachTwinDoc(func(d map[string]any) bool {
		scanned = append(scanned, d)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(scanned, want) {
		t.Errorf("%s: ForEachTwinDoc\n got %s\nwant %s", step, jsonOf(t, scanned), jsonOf(t, want))
	}
	// Reverse order plus an unknown id: docs come back in the order asked.
	var rev []string
	var wantRev []map[string]any
	for i := len(ids) - 1; i >= 0; i-- {
		rev = append(rev, ids[i], "unknown")
		wantRev = append(wantRev, want[i])
	}
	got, err := s.TwinDocs(rev)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, wantRev) {
		t.Errorf("%s: TwinDocs\n got %s\nwant %s", step, jsonOf(t, got), jsonOf(t, wantRev))
	}
}

func TestTwinDocsFollowWrites(t *testing.T) {
	s, _ := newStore(t)
	for _, id := range []string{"b", "a", "c"} {
		mustCreate(t, s, id)
	}
	checkDocs(t, s, "created")
	first, err := s.TwinDocs([]string{"a"})
	if err != nil || len(first) != 1 {
		t.Fatalf("TwinDocs = %v, %v", first, err)
	}
	kept := jsonOf(t, first[0])

	steps := []struct {
		name string
		fn   func() error
	}{
		{"patch tags", func() error {
			_, _, err := s.PatchTwin("a", iothub.Twin{Tags: obj(t, `{"site":"lab","n":1.50,"deep":{"x":[1,2,{"y":null}]}}`)}, "*")
			return err
		}},
		{"patch desired", func() error {
			_, _, err := s.PatchTwin("b", iothub.Twin{Properties: iothub.TwinProperties{Desired: obj(t, `{"interval":30}`)}}, "*")
			return err
		}},
		{"patch reported", func() error {
			_, err := s.PatchReported("a", []byte(`{"rebootTime":"2026-01-01T00:00:00Z","big":4503599627370495}`))
			return err
		}},
		{"connect", func() error { return s.SetConnected("c", true) }},
		{"touch", func() error { s.Touch("a"); return nil }},
		{"touch again", func() error { s.Touch("a"); s.Touch("b"); return nil }},
		{"flush activity", s.FlushActivity},
		{"disable", func() error {
			d, err := s.Device("b")
			if err != nil {
				return err
			}
			d.Status = "disabled"
			_, err = s.UpdateDevice(d, "*")
			return err
		}},
		{"replace twin", func() error {
			_, _, err := s.ReplaceTwin("a", iothub.Twin{Tags: obj(t, `{"only":true}`)}, "*")
			return err
		}},
		{"delete", func() error { return s.DeleteDevice("c", "*") }},
		{"recreate", func() error { mustCreate(t, s, "c"); return nil }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		checkDocs(t, s, st.name)
	}
	if got := jsonOf(t, first[0]); got != kept {
		t.Errorf("a document handed out earlier changed:\n got %s\nwant %s", got, kept)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TwinDocs([]string{"a"}); !errors.Is(err, ErrClosed) {
		t.Errorf("TwinDocs after Close = %v", err)
	}
	if err := s.ForEachTwinDoc(func(map[string]any) bool { return true }); !errors.Is(err, ErrClosed) {
		t.Errorf("ForEachTwinDoc after Close = %v", err)
	}
}

func TestForEachTwinDocStops(t *testing.T) {
	s, _ := newStore(t)
	for i := range 5 {
		mustCreate(t, s, fmt.Sprintf("d%d", i))
	}
	var seen []any
	if err := s.ForEachTwinDoc(func(d map[string]any) bool {
		seen = append(seen, d["deviceId"])
		return len(seen) < 2
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(seen, []any{"d0", "d1"}) {
		t.Errorf("seen %v", seen)
	}
}

// TestTwinDocsConcurrent reads documents while they are written and touched;
// run with -race.
func TestTwinDocsConcurrent(t *testing.T) {
	s, _ := newStore(t)
	ids := []string{"a", "b", "c", "d"}
	for _, id := range ids {
		mustCreate(t, s, id)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id := ids[(i+w)%len(ids)]
				s.Touch(id)
				if _, err := s.PatchReported(id, fmt.Appendf(nil, `{"i":%d}`, i)); err != nil {
					errs <- err
					return
				}
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				docs, err := s.TwinDocs(ids)
				if err != nil {
					errs <- err
					return
				}
				if _, err := json.Marshal(docs); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	testwait.Group(t, &wg, "the concurrent queries")
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkDocs(t, s, "after concurrent writes")
}

func TestForEachTwinDocAfter(t *testing.T) {
	s, _ := newStore(t)
	for _, id := range []string{"b", "d", "A", "c"} {
		mustCreate(t, s, id)
	}
	for _, c := range []struct {
		after string
		want  []any
	}{
		{"", []any{"A", "b", "c", "d"}},
		{"A", []any{"b", "c", "d"}},
		{"b", []any{"c", "d"}},
		{"bb", []any{"c", "d"}}, // gone or never there: the next one in order
		{"a", []any{"b", "c", "d"}},
		{"d", nil},
		{"z", nil},
	} {
		var got []any
		if err := s.ForEachTwinDocAfter(c.after, func(d map[string]any) bool {
			got = append(got, d["deviceId"])
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("after %q: %v, want %v", c.after, got, c.want)
		}
	}
}
