package jobs

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/api"
	"github.com/dmctl/dmctl/hub/hubapi"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/rs/zerolog"
)

const hubHost = "hub.local"

type restEnv struct {
	t   *testing.T
	st  *store.Store
	srv *httptest.Server
	eng *engine
}

func newRESTEnv(t *testing.T, dev hubapi.Devices) *restEnv {
	t.Helper()
	st := newStore(t)
	eng := startEngine(t, Config{Store: st, Devices: dev})
	srv := httptest.NewServer(api.New(api.Config{
		Store:   st,
		Devices: dev,
		Jobs:    eng.Engine,
		Hosts:   func() []string { return []string{hubHost} },
		Log:     zerolog.New(zerolog.NewTestWriter(t)),
	}))
	t.Cleanup(func() {
		srv.Close()
		srv.Client().CloseIdleConnections()
	})
	return &restEnv{t: t, st: st, srv: srv, eng: eng}
}

func (e *restEnv) token(policy string) string {
	e.t.Helper()
	p, err := e.st.Policy(policy)
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := sas.Sign(p.PrimaryKey, hubHost, p.Name, time.Now().Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (e *restEnv) do(method, path, policy, body string, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", e.token(policy))
	if body != "" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{res.StatusCode, res.Header, b}
}

func wantError(t *testing.T, r resp, status int, name string) {
	t.Helper()
	var env struct{ Message string }
	if r.status != status || json.Unmarshal(r.body, &env) != nil || !strings.HasPrefix(env.Message, "ErrorCode:"+name+";") {
		t.Errorf("got %d %s, want %d with ErrorCode:%s", r.status, r.body, status, name)
	}
}

func decode[T any](t *testing.T, r resp) T {
	t.Helper()
	var v T
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q", ct)
	}
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	return v
}

func TestRESTJobsLikeTheNodeJobClient(t *testing.T) {
	dev := newFake(func(ctx context.Context, id, method string, payload []byte) (int, []byte, error) {
		if id == "d001" {
			return 0, nil, hubapi.ErrDeviceNotOnline
		}
		return 200, []byte(`{"ok":1}`), nil
	})
	e := newRESTEnv(t, dev)
	addDevices(t, e.st, 3, nil)

	// The body azure-iothub's JobClient.scheduleDeviceMethod sends when no
	// start time or maximum execution time is given.
	body := `{"jobId":"job1","type":"scheduleDeviceMethod","cloudToDeviceMethod":{"methodName":"rebootDevice","payload":{"delay":1},"responseTimeoutInSeconds":15},"startTime":null,"maxExecutionTimeInSeconds":null,"queryCondition":"deviceId IN ['d000', 'd001']"}`
	created := decode[map[string]any](t, e.do("PUT", "/jobs/v2/job1?api-version=2021-04-12", "iothubowner", body))
	for k, want := range map[string]any{"jobId": "job1", "type": "scheduleDeviceMethod", "maxExecutionTimeInSeconds": 3600.0,
		"queryCondition": "deviceId IN ['d000', 'd001']"} {
		if created[k] != want {
			t.Errorf("%s = %v, want %v", k, created[k], want)
		}
	}
	for _, k := range []string{"createdTime", "startTime", "endTime", "status", "deviceJobStatistics", "cloudToDeviceMethod"} {
		if _, ok := created[k]; !ok {
			t.Errorf("response lacks %s: %v", k, created)
		}
	}
	if m := created["cloudToDeviceMethod"].(map[string]any); m["responseTimeoutInSeconds"] != 15.0 || m["methodName"] != "rebootDevice" {
		t.Errorf("cloudToDeviceMethod = %v", m)
	}
	wantError(t, e.do("PUT", "/jobs/v2/job1", "iothubowner", body), 409, "JobAlreadyExists")

	// JobClient.getJob polls until the job is done.
	var j iothub.JobResponse
	deadline := time.Now().Add(20 * time.Second)
	for {
		j = decode[iothub.JobResponse](t, e.do("GET", "/jobs/v2/job1?api-version=2021-04-12", "iothubowner", ""))
		if j.Status == iothub.JobCompleted || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 2, SucceededCount: 1, FailedCount: 1}) {
		t.Fatalf("job = %+v", j)
	}
	wantError(t, e.do("GET", "/jobs/v2/nope", "iothubowner", ""), 404, "JobNotFound")

	// Device rows through the query API.
	q := `{"query":"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'job1'"}`
	r := e.do("POST", "/devices/query?api-version=2021-04-12", "iothubowner", q)
	rows := decode[[]map[string]any](t, r)
	if r.header.Get("x-ms-item-type") != "deviceJob" || len(rows) != 2 {
		t.Fatalf("rows (%s): %s", r.header.Get("x-ms-item-type"), r.body)
	}
	if rows[0]["deviceId"] != "d000" || rows[0]["status"] != "completed" || rows[0]["jobType"] != "scheduleDeviceMethod" {
		t.Errorf("row 0 = %v", rows[0])
	}
	if o := rows[0]["outcome"].(map[string]any)["deviceMethodResponse"].(map[string]any); o["status"] != 200.0 {
		t.Errorf("outcome = %v", o)
	}
	if rows[1]["status"] != "failed" || rows[1]["error"].(map[string]any)["code"] != "404103" || rows[1]["outcome"] != nil {
		t.Errorf("row 1 = %v", rows[1])
	}
	for _, k := range []string{"startTimeUtc", "endTimeUtc", "createdDateTimeUtc", "lastUpdatedDateTimeUtc"} {
		if s, _ := rows[0][k].(string); !strings.HasSuffix(s, "Z") {
			t.Errorf("%s = %v", k, rows[0][k])
		}
	}
	failed := decode[[]map[string]any](t, e.do("POST", "/devices/query", "iothubowner",
		`{"query":"SELECT * FROM devices.jobs WHERE devices.jobs.status = 'failed'"}`))
	if len(failed) != 1 || failed[0]["deviceId"] != "d001" {
		t.Errorf("failed rows = %v", failed)
	}
	// Paging over rows.
	r = e.do("POST", "/devices/query", "iothubowner", `{"query":"SELECT * FROM devices.jobs"}`, "x-ms-max-item-count", "1")
	if page := decode[[]map[string]any](t, r); len(page) != 1 || r.header.Get("x-ms-continuation") == "" {
		t.Errorf("first page: %s %v", r.body, r.header)
	}
	r = e.do("POST", "/devices/query", "iothubowner", `{"query":"SELECT * FROM devices.jobs"}`,
		"x-ms-max-item-count", "1", "x-ms-continuation", r.header.Get("x-ms-continuation"))
	if page := decode[[]map[string]any](t, r); len(page) != 1 || page[0]["deviceId"] != "d001" || r.header.Get("x-ms-continuation") != "" {
		t.Errorf("last page: %s %v", r.body, r.header)
	}
}

func TestRESTTwinJobCancelAndList(t *testing.T) {
	dev := newFake(nil)
	e := newRESTEnv(t, dev)
	addDevices(t, e.st, 2, func(int) string { return "lab" })

	twinBody := `{"jobId":"twin1","type":"scheduleUpdateTwin","updateTwin":{"etag":"*","tags":{"fw":"2"},"properties":{"desired":{"interval":10}}},"startTime":"` +
		time.Now().UTC().Format(time.RFC3339) + `","maxExecutionTimeInSeconds":60,"queryCondition":"tags.site = 'lab'"}`
	// Twin jobs are allowed with RegistryWrite alone; method jobs are not.
	created := decode[iothub.JobResponse](t, e.do("PUT", "/jobs/v2/twin1", "registryReadWrite", twinBody))
	if created.UpdateTwin == nil || created.UpdateTwin.Tags["fw"] != "2" || created.MaxExecutionTimeInSeconds != 60 {
		t.Errorf("created = %+v", created)
	}
	methodBody := `{"jobId":"m1","type":"scheduleDeviceMethod","cloudToDeviceMethod":{"methodName":"reboot"},"startTime":"2099-01-01T00:00:00.000Z","queryCondition":"deviceId = 'd000'"}`
	wantError(t, e.do("PUT", "/jobs/v2/m1", "registryReadWrite", methodBody), 401, "IotHubUnauthorizedAccess")
	wantError(t, e.do("PUT", "/jobs/v2/m1", "registryRead", methodBody), 401, "IotHubUnauthorizedAccess")
	wantError(t, e.do("PUT", "/jobs/v2/m1", "device", methodBody), 401, "IotHubUnauthorizedAccess")
	m1 := decode[iothub.JobResponse](t, e.do("PUT", "/jobs/v2/m1", "service", methodBody))
	if m1.Status != iothub.JobScheduled || m1.StartTime.Year() != 2099 {
		t.Errorf("scheduled job = %+v", m1)
	}
	// The Node SDK allows a numeric jobId.
	decode[iothub.JobResponse](t, e.do("PUT", "/jobs/v2/42", "service", strings.Replace(methodBody, `"m1"`, `42`, 1)))
	wantError(t, e.do("PUT", "/jobs/v2/other", "service", methodBody), 400, "ArgumentInvalid")
	wantError(t, e.do("PUT", "/jobs/v2/bad", "service", strings.Replace(methodBody, `"jobId":"m1",`, ``, 1)[:40]), 400, "IotHubFormatError")
	wantError(t, e.do("PUT", "/jobs/v2/bad", "service", strings.Replace(strings.Replace(methodBody, "m1", "bad", 1), "deviceId = 'd000'", "deviceId =", 1)), 400, "ArgumentInvalid")
	wantError(t, e.do("PUT", "/jobs/v2/bad_id", "service", strings.Replace(methodBody, `"jobId":"m1",`, ``, 1)), 400, "ArgumentInvalid")

	// Reading needs any of RegistryRead, RegistryWrite, ServiceConnect.
	decode[iothub.JobResponse](t, e.do("GET", "/jobs/v2/m1", "registryRead", ""))
	wantError(t, e.do("GET", "/jobs/v2/m1", "device", ""), 401, "IotHubUnauthorizedAccess")
	wantError(t, e.do("POST", "/jobs/v2/m1/cancel", "registryRead", ""), 401, "IotHubUnauthorizedAccess")

	cancelled := decode[iothub.JobResponse](t, e.do("POST", "/jobs/v2/m1/cancel?api-version=2021-04-12", "service", ""))
	if cancelled.Status != iothub.JobCancelled {
		t.Errorf("cancelled = %+v", cancelled)
	}
	wantError(t, e.do("POST", "/jobs/v2/nope/cancel", "service", ""), 404, "JobNotFound")

	j := waitJob(t, e.eng.Engine, "twin1", "completion", finished)
	if j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 2, SucceededCount: 2}) {
		t.Errorf("twin job = %+v", j)
	}
	tw, err := e.st.Twin("d001")
	if err != nil {
		t.Fatal(err)
	}
	if tw.Tags["fw"] != "2" || tw.Properties.Desired["interval"] == nil {
		t.Errorf("twin = %+v", tw)
	}

	// Listing, with the headers JobClient.createQuery sends.
	r := e.do("GET", "/jobs/v2/query?api-version=2021-04-12&jobType=scheduleDeviceMethod", "registryRead", "", "x-ms-max-item-count", "1")
	page := decode[[]iothub.JobResponse](t, r)
	if len(page) != 1 || page[0].JobID != "m1" || r.header.Get("x-ms-item-type") != "jobResponse" || r.header.Get("x-ms-continuation") == "" {
		t.Fatalf("page 1: %s %v", r.body, r.header)
	}
	r = e.do("GET", "/jobs/v2/query?api-version=2021-04-12&jobType=scheduleDeviceMethod", "registryRead", "",
		"x-ms-max-item-count", "1", "x-ms-continuation", r.header.Get("x-ms-continuation"))
	page = decode[[]iothub.JobResponse](t, r)
	if len(page) != 1 || page[0].JobID != "42" || r.header.Get("x-ms-continuation") != "" {
		t.Fatalf("page 2: %s %v", r.body, r.header)
	}
	page = decode[[]iothub.JobResponse](t, e.do("GET", "/jobs/v2/query?jobStatus=cancelled", "iothubowner", ""))
	if len(page) != 1 || page[0].JobID != "m1" {
		t.Errorf("cancelled jobs = %+v", page)
	}
	page = decode[[]iothub.JobResponse](t, e.do("GET", "/jobs/v2/query?jobStatus=finished&jobType=scheduleUpdateTwin", "iothubowner", ""))
	if len(page) != 1 || page[0].JobID != "twin1" {
		t.Errorf("finished twin jobs = %+v", page)
	}
	if all := decode[[]iothub.JobResponse](t, e.do("GET", "/jobs/v2/query", "iothubowner", "")); len(all) != 3 {
		t.Errorf("%d jobs", len(all))
	}
	wantError(t, e.do("GET", "/jobs/v2/query?jobType=firmware", "iothubowner", ""), 400, "ArgumentInvalid")
	wantError(t, e.do("GET", "/jobs/v2/query?jobStatus=odd", "iothubowner", ""), 400, "ArgumentInvalid")
	if n := len(dev.callCount()); n != 0 {
		t.Errorf("%d devices called", n)
	}
}
