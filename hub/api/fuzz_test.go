package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/rs/zerolog"
)

// FuzzREST sends arbitrary requests (method, path, header lines, body, and
// which credential) through the real handler over a real store, opened once
// and reused by every input. No request may panic or get a 5xx (the store
// stays open, so not even the documented 503), and every answer with a body
// is JSON.
func FuzzREST(f *testing.F) {
	for _, c := range []struct {
		method, path, headers, body string
		auth                        uint8
	}{
		{"GET", "/devices/d1", "", "", 1},
		{"GET", "/devices/d1", "", "", 0},
		{"PUT", "/devices/d2", "", `{"deviceId":"d2"}`, 1},
		{"PUT", "/devices/d1", "If-Match: *", `{"deviceId":"d1","status":"disabled"}`, 1},
		{"DELETE", "/devices/d2", "If-Match: \"MA==\"", "", 1},
		{"PATCH", "/twins/d1", "", `{"tags":{"a":1},"properties":{"desired":{"b":null}}}`, 1},
		{"PUT", "/twins/d1", "If-Match: *", `{"tags":{"a":"caf` + "\xe9" + `"}}`, 2},
		{"POST", "/twins/d1/methods", "", `{"methodName":"reboot","payload":{"delay":1},"responseTimeoutInSeconds":5}`, 2},
		{"POST", "/twins/d1/modules/m1/methods", "", `{"methodName":"m/x"}`, 2},
		{"PUT", "/devices/d1/modules/m1", "", `{"moduleId":"m1"}`, 1},
		{"GET", "/devices/d1/modules", "", "", 1},
		{"POST", "/devices", "", `[{"id":"d3","importMode":"create"},{"id":"d1","importMode":"delete"}]`, 1},
		{"POST", "/devices/query", "x-ms-max-item-count: 1\nx-ms-continuation: abc", `{"query":"SELECT * FROM devices WHERE tags.a = 1"}`, 1},
		{"PUT", "/jobs/v2/j1", "", `{"jobId":"j1","type":"scheduleUpdateTwin","queryCondition":"*","updateTwin":{"tags":{"a":2}}}`, 1},
		{"GET", "/jobs/v2/query?jobType=x&jobStatus=y", "", "", 1},
		{"GET", "/statistics/devices", "", "", 1},
		{"GET", "/devices/%C3%A9t%C3%A9%00", "", "", 1},
		{"PATCH", "/twins/d1", "Content-Length: 3", `{"tags":{"a":"\ud800"}}`, 1},
		{"BREW", "/", "Authorization: SharedAccessSignature sr=x&sig=y&se=1", "", 0},
		{"GET", "/devices?top=0", "", "", 1},
	} {
		f.Add(c.method, c.path, c.headers, []byte(c.body), c.auth)
	}
	st, err := store.Open(filepath.Join(f.TempDir(), "hub.db"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	if _, err := st.CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		f.Fatal(err)
	}
	tokens := []string{""}
	for _, policy := range []string{"iothubowner", "service", "registryRead"} {
		p, err := st.Policy(policy)
		if err != nil {
			f.Fatal(err)
		}
		tok, err := sas.Sign(p.PrimaryKey, hubHost, p.Name, time.Now().Add(24*time.Hour))
		if err != nil {
			f.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	h := New(Config{
		Store:   st,
		Devices: &fakeDevices{}, // every device is offline
		Jobs:    &fakeJobs{},
		Hosts:   func() []string { return []string{hubHost} },
		Log:     zerolog.Nop(),
	})
	f.Fuzz(func(t *testing.T, method, path, headers string, body []byte, auth uint8) {
		req, err := http.NewRequest(method, "http://"+hubHost+path, bytes.NewReader(body))
		if err != nil || !strings.HasPrefix(path, "/") {
			return // not a request a client can send
		}
		for _, line := range strings.Split(headers, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		if tok := tokens[int(auth)%len(tokens)]; tok != "" {
			req.Header.Set("Authorization", tok)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		if res.StatusCode >= 500 {
			t.Fatalf("%s %q: %d %s", method, path, res.StatusCode, rec.Body.Bytes())
		}
		if b := rec.Body.Bytes(); len(b) > 0 {
			if !json.Valid(b) {
				t.Fatalf("%s %q: %d, body is not JSON: %q", method, path, res.StatusCode, b)
			}
			if ct := res.Header.Get("Content-Type"); ct != contentTypeJSON {
				t.Fatalf("%s %q: Content-Type %q", method, path, ct)
			}
		}
	})
}
