package api

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// TestAppendMethodResult: the answer of a direct method is byte for byte
// what json.Marshal of iothub.MethodResult gives, non-JSON answers as null.
func TestAppendMethodResult(t *testing.T) {
	marshal := func(status int, body []byte) []byte {
		res := iothub.MethodResult{Status: status, Payload: json.RawMessage("null")}
		if b := bytes.TrimSpace(body); len(b) > 0 && json.Valid(b) && store.CheckJSONText(b) == nil {
			res.Payload = b
		}
		out, err := json.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, body := range []string{
		``, ` `, `null`, `{"a":1}`, " {\n \"a\" : [1, 2 ,3] }\t", `"<b>&amp;</b>"`, "\"line\u2028sep\u2029\"",
		`{"x":"\u003c"}`, `not json`, `{"a":1} trailing`, `{"a":`, "\"\xff\"", `123`, `-0.5e10`, `[]`, `"é"`,
	} {
		for _, status := range []int{200, -1, 0, 500} {
			var buf bytes.Buffer
			appendMethodResult(&buf, status, []byte(body))
			if want := marshal(status, []byte(body)); !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("status %d, body %q: got %s, want %s", status, body, buf.Bytes(), want)
			}
		}
	}
}
