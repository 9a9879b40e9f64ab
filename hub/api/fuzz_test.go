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
// and reused by every input, and then through a handler whose store is
// closed. No request may panic; over the open store none gets a 5xx, over
// the closed one none gets a 5xx but the documented 503; every answer with
// a body is JSON.
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
	open := openFuzzStore(f, "hub.db")
	f.Cleanup(func() { _ = open.Close() })
	closed := openFuzzStore(f, "closed.db")
	openTokens, closedTokens := tokensFor(f, open), tokensFor(f, closed)
	if err := closed.Close(); err != nil {
		f.Fatal(err)
	}
	fuzzREST(f, open, openTokens, closed, closedTokens)
}

// openFuzzStore opens a store in f's temp dir holding device d1.
func openFuzzStore(f *testing.F, name string) *store.Store {
	st, err := store.Open(filepath.Join(f.TempDir(), name), nil)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := st.CreateDevice(iothub.Device{DeviceID: "d1"}); err != nil {
		f.Fatal(err)
	}
	return st
}

// tokensFor signs a token per policy of st ("" first: no credential).
func tokensFor(f *testing.F, st *store.Store) []string {
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
	return tokens
}

func fuzzREST(f *testing.F, open *store.Store, openTokens []string, closed *store.Store, closedTokens []string) {
	handler := func(st *store.Store) http.Handler {
		return New(Config{
			Store:   st,
			Devices: &fakeDevices{}, // every device is offline
			Jobs:    &fakeJobs{},
			Hosts:   func() []string { return []string{hubHost} },
			Log:     zerolog.Nop(),
		})
	}
	hOpen, hClosed := handler(open), handler(closed)
	f.Fuzz(func(t *testing.T, method, path, headers string, body []byte, auth uint8) {
		for _, c := range []struct {
			h      http.Handler
			tokens []string
			ok5xx  int
		}{{hOpen, openTokens, 0}, {hClosed, closedTokens, http.StatusServiceUnavailable}} {
			req, err := http.NewRequest(method, "http://"+hubHost+path, bytes.NewReader(body))
			if err != nil || !strings.HasPrefix(path, "/") {
				return // not a request a client can send
			}
			for _, line := range strings.Split(headers, "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok {
					req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
				}
			}
			if tok := c.tokens[int(auth)%len(c.tokens)]; tok != "" {
				req.Header.Set("Authorization", tok)
			}
			rec := httptest.NewRecorder()
			c.h.ServeHTTP(rec, req)
			res := rec.Result()
			if res.StatusCode >= 500 && res.StatusCode != c.ok5xx {
				t.Fatalf("%s %q (store closed: %v): %d %s", method, path, c.ok5xx != 0, res.StatusCode, rec.Body.Bytes())
			}
			if b := rec.Body.Bytes(); len(b) > 0 {
				if !json.Valid(b) {
					t.Fatalf("%s %q: %d, body is not JSON: %q", method, path, res.StatusCode, b)
				}
				if ct := res.Header.Get("Content-Type"); ct != contentTypeJSON {
					t.Fatalf("%s %q: Content-Type %q", method, path, ct)
				}
			}
		}
	})
}
