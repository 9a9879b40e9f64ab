package service

import "testing"

func TestQuoteAndIDList(t *testing.T) {
	if got := QuoteString(`it's a \ test`); got != `'it\'s a \\ test'` {
		t.Errorf("QuoteString: %s", got)
	}
	if got := IDListCondition([]string{"a", "b'c"}); got != `deviceId IN ['a', 'b\'c']` {
		t.Errorf("IDListCondition: %s", got)
	}
}

func TestSequentialIDs(t *testing.T) {
	for _, tc := range []struct {
		start, count int
		first, last  string
	}{
		{1, 100, "p-0001", "p-0100"},
		{1, 9999, "p-0001", "p-9999"},
		{1, 10000, "p-00001", "p-10000"},
		{9999, 2, "p-09999", "p-10000"},
		{0, 1, "p-0000", "p-0000"},
	} {
		ids := SequentialIDs("p", tc.start, tc.count)
		if len(ids) != tc.count || ids[0] != tc.first || ids[len(ids)-1] != tc.last {
			t.Errorf("SequentialIDs(p, %d, %d): %d ids %s..%s", tc.start, tc.count, len(ids), ids[0], ids[len(ids)-1])
		}
	}
	if SequentialIDs("p", 1, 0) != nil {
		t.Error("count 0")
	}
}
