package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/rs/zerolog"
)

// benchFleet is a hub with n devices; every hundredth has tags.x = 'y' and
// every device has reported.rebootTime.
type benchFleet struct {
	h     http.Handler
	auth  string
	store *store.Store
}

func newBenchFleet(b *testing.B, n int) *benchFleet {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), "hub.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	for i := range n {
		id := fmt.Sprintf("dev%05d", i)
		if _, err := st.CreateDevice(iothub.Device{DeviceID: id}); err != nil {
			b.Fatal(err)
		}
		if i%100 == 0 {
			if _, _, err := st.PatchTwin(id, iothub.Twin{Tags: map[string]any{"x": "y", "site": "lab"}}, "*"); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := st.PatchReported(id, []byte(`{"rebootTime":"2026-01-01T00:00:00Z","fw":{"version":"1.2.3","slot":2}}`)); err != nil {
			b.Fatal(err)
		}
	}
	p, err := st.Policy("iothubowner")
	if err != nil {
		b.Fatal(err)
	}
	tok, err := sas.Sign(p.PrimaryKey, hubHost, p.Name, time.Now().Add(24*time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	h := New(Config{
		Store: st,
		Hosts: func() []string { return []string{hubHost} },
		Log:   zerolog.Nop(),
	})
	return &benchFleet{h: h, auth: tok, store: st}
}

func (f *benchFleet) query(b *testing.B, q string, want int, hdr ...string) {
	b.Helper()
	body, _ := json.Marshal(map[string]string{"query": q})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/devices/query?api-version=2021-04-12", strings.NewReader(string(body)))
		req.Header.Set("Authorization", f.auth)
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(rec.Body.Bytes(), &items); err != nil || len(items) != want {
			b.Fatalf("%d items (%v)", len(items), err)
		}
	}
}

const benchFleetSize = 10000

// BenchmarkQueryScanTags is a full scan: SELECT * with a tag filter.
func BenchmarkQueryScanTags(b *testing.B) {
	f := newBenchFleet(b, benchFleetSize)
	f.query(b, "SELECT * FROM devices WHERE tags.x = 'y'", benchFleetSize/100)
}

// BenchmarkQueryLastPageOffset fetches the last page of SELECT * FROM
// devices with an offset token (the form issued before keyset tokens).
func BenchmarkQueryLastPageOffset(b *testing.B) {
	f := newBenchFleet(b, benchFleetSize)
	text := "SELECT * FROM devices"
	f.query(b, text, 100, "x-ms-continuation", makeToken(text, benchFleetSize-100))
}

// BenchmarkQueryLastPageKeyset fetches the same page with a keyset token.
func BenchmarkQueryLastPageKeyset(b *testing.B) {
	f := newBenchFleet(b, benchFleetSize)
	text := "SELECT * FROM devices"
	f.query(b, text, 100, "x-ms-continuation", makeKeysetToken(text, benchFleetSize-100, fmt.Sprintf("dev%05d", benchFleetSize-101)))
}

// BenchmarkQueryInList is the fleet-reboot confirmation poll: a projection
// over an IN list of 100 device ids.
func BenchmarkQueryInList(b *testing.B) {
	f := newBenchFleet(b, benchFleetSize)
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("'dev%05d'", 5000+i*7)
	}
	f.query(b, "SELECT deviceId, properties.reported.rebootTime AS rebootTime FROM devices WHERE deviceId IN ["+strings.Join(ids, ",")+"]", 100)
}

// scanVsLookupFleet makes 50 twins with varied tags, reported properties,
// statuses, connection states and pending activity.
func scanVsLookupFleet(t *testing.T) (*env, *server) {
	t.Helper()
	e := newEnv(t)
	for i := range 50 {
		id := fmt.Sprintf("d%02d", i)
		if i%7 == 3 {
			id = fmt.Sprintf("D%02d", i) // upper case sorts before lower case
		}
		d := iothub.Device{DeviceID: id}
		if i%9 == 4 {
			d.Status = "disabled"
		}
		if _, err := e.store.CreateDevice(d); err != nil {
			t.Fatal(err)
		}
		tags := map[string]any{"site": []string{"lab", "plant", "home"}[i%3], "n": i, "ratio": float64(i) / 4}
		if i%5 == 0 {
			tags["x"] = "y"
		}
		if _, _, err := e.store.PatchTwin(id, iothub.Twin{Tags: tags, Properties: iothub.TwinProperties{Desired: map[string]any{"interval": i * 10}}}, "*"); err != nil {
			t.Fatal(err)
		}
		if i%4 != 1 {
			rep := fmt.Sprintf(`{"rebootTime":"2026-01-01T00:00:%02dZ","fw":{"version":"1.%d.0","slot":%d},"big":4503599627370495,"f":1.5e3}`, i, i%3, i%2)
			if _, err := e.store.PatchReported(id, []byte(rep)); err != nil {
				t.Fatal(err)
			}
		}
		if i%3 == 0 {
			if err := e.store.SetConnected(id, true); err != nil {
				t.Fatal(err)
			}
		}
		if i%6 == 2 {
			e.store.Touch(id)
		}
	}
	// A device that is gone.
	if err := e.store.DeleteDevice("d12", "*"); err != nil {
		t.Fatal(err)
	}
	return e, &server{cfg: Config{Store: e.store}, now: time.Now, log: zerolog.Nop()}
}

var scanVsLookupQueries = []string{
	"SELECT * FROM devices WHERE deviceId = 'd05'",
	"SELECT * FROM devices WHERE DEVICEID = 'D03'",
	"SELECT * FROM devices WHERE deviceId = 'nope'",
	"SELECT * FROM devices WHERE deviceId IN ['d01','d10','d02','zz','d49','D10','d00','d02','D45']",
	"SELECT deviceId, properties.reported.rebootTime AS rebootTime FROM devices WHERE deviceId IN ['d01','d05','d09','d13','d21','d33','d47','d10']",
	"SELECT deviceId, properties.reported.fw.version FROM devices WHERE deviceId IN ['d01','d02','d04','d06'] AND properties.reported.fw.slot = 0",
	"SELECT * FROM devices WHERE tags.site = 'lab' AND deviceId IN ['d00','d01','d02','d03','d06','d09','d12','d15','d18','d21']",
	"SELECT * FROM devices WHERE deviceId IN ['d00','d05','d15','d20'] AND deviceId IN ['d05','d20','d25']",
	"SELECT TOP 3 * FROM devices WHERE deviceId IN ['d01','d02','d04','d05','d06','d07']",
	"SELECT COUNT() AS n FROM devices WHERE deviceId IN ['d01','d02','d04','zz']",
	"SELECT tags.site, COUNT() AS n FROM devices WHERE deviceId IN ['d01','d02','d04','d05','d06','d07','d08'] GROUP BY tags.site",
	"SELECT * FROM devices WHERE status = 'disabled' AND deviceId IN ['d04','d13','d22','d05']",
	"SELECT * FROM devices WHERE connectionState = 'Connected' AND deviceId IN ['d00','d01','d02','d03','d06']",
	"SELECT * FROM devices WHERE deviceId IN []",
	"SELECT * FROM devices WHERE deviceId IN ['d01', 1, null]",
	"SELECT * FROM devices WHERE deviceId = 'd20' AND tags.x = 'y'",
	"SELECT * FROM devices WHERE deviceId = 'd21' AND tags.x = 'y'",
}

// TestQueryLookupMatchesScan checks that looking twins up by the ids a
// condition names gives exactly the rows a full scan gives.
func TestQueryLookupMatchesScan(t *testing.T) {
	_, s := scanVsLookupFleet(t)
	for _, text := range scanVsLookupQueries {
		q, err := query.Parse(text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		if _, ok := q.DeviceIDs(); !ok {
			t.Fatalf("%s: not a lookup query", text)
		}
		for _, limit := range []int{0, 1, 2, 5} {
			if limit > 0 && !q.IsSelectAll() {
				continue
			}
			scanned, err := s.scanTwins(q, "", limit)
			if err != nil {
				t.Fatal(err)
			}
			want, err := q.Project(scanned)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.run(q, limit)
			if err != nil {
				t.Fatal(err)
			}
			wb, _ := json.Marshal(want)
			gb, _ := json.Marshal(got)
			if string(wb) != string(gb) {
				t.Errorf("%s (limit %d):\nlookup %s\nscan   %s", text, limit, gb, wb)
			}
		}
	}
}

// TestQueryScanMatchesReference checks that full-scan queries give the rows
// of the plain JSON rendering of every twin (GET /twins/{id}).
func TestQueryScanMatchesReference(t *testing.T) {
	e, s := scanVsLookupFleet(t)
	queries := append([]string{
		"SELECT * FROM devices",
		"SELECT * FROM devices WHERE tags.x = 'y'",
		"SELECT deviceId, tags.ratio, properties.reported.big, properties.reported.f FROM devices WHERE tags.n > 20",
		"SELECT * FROM devices WHERE properties.desired.interval >= 250 OR deviceId = 'd01'",
		"SELECT tags.site, COUNT() AS n, SUM(tags.n) AS s FROM devices GROUP BY tags.site",
		"SELECT * FROM devices WHERE lastActivityTime > '0001-01-01T00:00:00Z'",
	}, scanVsLookupQueries...)
	for _, text := range queries {
		q, err := query.Parse(text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		var docs []map[string]any
		err = e.store.ForEachTwin(func(tw iothub.Twin) bool {
			d, err := jsonDoc(tw)
			if err != nil {
				t.Fatal(err)
			}
			if q.Match(d) {
				docs = append(docs, d)
			}
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		want, err := q.Project(docs)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.run(q, 0)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := json.Marshal(want)
		gb, _ := json.Marshal(got)
		if string(wb) != string(gb) {
			t.Errorf("%s:\ngot  %s\nwant %s", text, gb, wb)
		}
	}
}

// TestQueryLookupPaging walks an IN-list query page by page over REST and
// compares it with the scan result.
func TestQueryLookupPaging(t *testing.T) {
	e, s := scanVsLookupFleet(t)
	owner := e.token("iothubowner")
	var ids []string
	for i := 0; i < 50; i += 2 {
		ids = append(ids, fmt.Sprintf("'d%02d'", i))
	}
	text := "SELECT * FROM devices WHERE deviceId IN [" + strings.Join(ids, ",") + "]"
	q, err := query.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	scanned, err := s.scanTwins(q, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	cont := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		body, _ := json.Marshal(map[string]string{"query": text})
		hdr := []string{"x-ms-max-item-count", "7"}
		if cont != "" {
			hdr = append(hdr, "x-ms-continuation", cont)
		}
		r := e.do("POST", "/devices/query", owner, string(body), hdr...)
		if r.status != 200 || r.header.Get("x-ms-item-type") != "twin" {
			t.Fatalf("page %d: %s", pages, r)
		}
		var items []map[string]any
		if err := json.Unmarshal(r.body, &items); err != nil {
			t.Fatal(err)
		}
		got = append(got, items...)
		cont = r.header.Get("x-ms-continuation")
		if cont == "" {
			break
		}
	}
	if len(got) != len(scanned) || len(got) != 21 {
		t.Fatalf("%d rows over pages, scan has %d", len(got), len(scanned))
	}
	for i := range got {
		if got[i]["deviceId"] != scanned[i]["deviceId"] || got[i]["etag"] != scanned[i]["etag"] {
			t.Errorf("row %d: %v, scan %v", i, got[i]["deviceId"], scanned[i]["deviceId"])
		}
	}
}

// walkPages runs text page by page over REST and returns the rows and the
// number of pages; start is the first continuation token ("" for none).
func walkPages(t *testing.T, e *env, text string, pageSize int, start string) ([]map[string]any, int) {
	t.Helper()
	owner := e.token("iothubowner")
	body, _ := json.Marshal(map[string]string{"query": text})
	var rows []map[string]any
	cont := start
	for pages := 1; ; pages++ {
		if pages > 100 {
			t.Fatalf("%s: paging does not end", text)
		}
		hdr := []string{"x-ms-max-item-count", fmt.Sprint(pageSize)}
		if cont != "" {
			hdr = append(hdr, "x-ms-continuation", cont)
		}
		r := e.do("POST", "/devices/query", owner, string(body), hdr...)
		if r.status != 200 {
			t.Fatalf("%s page %d: %s", text, pages, r)
		}
		var items []map[string]any
		d := json.NewDecoder(strings.NewReader(string(r.body)))
		d.UseNumber()
		if err := d.Decode(&items); err != nil {
			t.Fatal(err)
		}
		if items == nil {
			t.Fatalf("%s page %d: body %s is not an array", text, pages, r.body)
		}
		rows = append(rows, items...)
		vals, more := r.header["X-Ms-Continuation"]
		if !more {
			return rows, pages
		}
		if len(vals) != 1 || vals[0] == "" {
			t.Fatalf("%s page %d: continuation %q", text, pages, vals)
		}
		cont = vals[0]
	}
}

// TestQueryKeysetPaging walks SELECT * queries page by page and compares
// the rows with one evaluation of the whole query.
func TestQueryKeysetPaging(t *testing.T) {
	e, s := scanVsLookupFleet(t)
	for _, text := range []string{
		"SELECT * FROM devices",
		"SELECT * FROM devices WHERE tags.site = 'lab'",
		"SELECT TOP 17 * FROM devices",
		"SELECT TOP 6 * FROM devices WHERE tags.site = 'plant'",
		"SELECT TOP 100 * FROM devices WHERE tags.x = 'y'",
		"SELECT * FROM devices WHERE deviceId IN ['d01','d02','D03','d04','d05','d06','d07','d08','d09','zz']",
		"SELECT TOP 4 * FROM devices WHERE deviceId IN ['d01','d02','D03','d04','d05','d06','d07','d08','d09','zz']",
		"SELECT * FROM devices WHERE tags.site = 'nowhere'",
	} {
		q, err := query.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		all, err := s.run(q, 0)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(all)
		for _, size := range []int{1, 3, 5, 17, 100} {
			rows, pages := walkPages(t, e, text, size, "")
			got, _ := json.Marshal(rows)
			if rows == nil {
				got = []byte("[]")
			}
			if string(got) != string(want) {
				t.Errorf("%s, pages of %d:\n got %s\nwant %s", text, size, got, want)
			}
			wantPages := max(1, (len(all)+size-1)/size)
			if pages != wantPages {
				t.Errorf("%s, pages of %d: %d pages for %d rows", text, size, pages, len(all))
			}
		}
	}
}

// TestQueryContinuationTokens checks the token forms: offset tokens issued
// before keyset tokens still work, and tokens cannot cross queries.
func TestQueryContinuationTokens(t *testing.T) {
	e, s := scanVsLookupFleet(t)
	owner := e.token("iothubowner")
	do := func(text, cont string) response {
		body, _ := json.Marshal(map[string]string{"query": text})
		return e.do("POST", "/devices/query", owner, string(body), "x-ms-max-item-count", "4", "x-ms-continuation", cont)
	}

	// An offset token resumes SELECT * at that row.
	text := "SELECT TOP 20 * FROM devices WHERE tags.site != 'home'"
	q, _ := query.Parse(text)
	all, err := s.run(q, 0)
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := walkPages(t, e, text, 4, makeToken(text, 7))
	got, _ := json.Marshal(rows)
	want, _ := json.Marshal(all[7:])
	if string(got) != string(want) {
		t.Errorf("offset token:\n got %s\nwant %s", got, want)
	}

	// A keyset token resumes after its device id, also when that device
	// is gone, and counts earlier rows against TOP.
	if err := e.store.DeleteDevice("d05", "*"); err != nil {
		t.Fatal(err)
	}
	r := do("SELECT TOP 5 * FROM devices", makeKeysetToken("SELECT TOP 5 * FROM devices", 3, "d05"))
	var items []map[string]any
	_ = json.Unmarshal(r.body, &items)
	if r.status != 200 || len(items) != 2 || items[0]["deviceId"] != "d06" || items[1]["deviceId"] != "d07" {
		t.Errorf("keyset resume = %s", r)
	}
	if _, more := r.header["X-Ms-Continuation"]; more {
		t.Error("continuation after TOP was reached")
	}

	// Wrong query, wrong form, non-SELECT * query.
	tok := makeKeysetToken("SELECT * FROM devices", 4, "d04")
	wantStyleA(t, do("SELECT * FROM devices WHERE tags.x = 'y'", tok), 400, "ArgumentInvalid")
	wantStyleA(t, do("SELECT * FROM devices", tok[:len(tok)-4]+"!!!!"), 400, "ArgumentInvalid")
	proj := "SELECT deviceId FROM devices"
	wantStyleA(t, do(proj, makeKeysetToken(proj, 4, "d04")), 400, "ArgumentInvalid")
	jobs := "SELECT * FROM devices.jobs"
	wantStyleA(t, do(jobs, makeKeysetToken(jobs, 4, "d04")), 400, "ArgumentInvalid")
	// Projections keep offset tokens.
	rows, pages := walkPages(t, e, proj, 4, "")
	if n := e.store.Count(); len(rows) != n || pages != (n+3)/4 {
		t.Errorf("projection walk: %d rows in %d pages, %d devices", len(rows), pages, n)
	}
}
