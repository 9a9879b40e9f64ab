package service

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

// bulkHub answers POST /devices as IoT Hub does: the ids in taken fail with
// DeviceAlreadyExists (400, isSuccessful false), the others are created.
func bulkHub(t *testing.T, taken map[string]bool) (*Client, *recorder, func() [][]iothub.ExportImportDevice) {
	var mu sync.Mutex
	var batches [][]iothub.ExportImportDevice
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/devices" {
			http.Error(w, "wrong route", 404)
			return
		}
		var in []iothub.ExportImportDevice
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			writeJSON(w, 400, iothub.RegistryErrorBody(iothub.CodeArgumentInvalid, err.Error(), time.Now()))
			return
		}
		mu.Lock()
		batches = append(batches, in)
		mu.Unlock()
		res := iothub.BulkRegistryOperationResult{IsSuccessful: true, Errors: []iothub.DeviceRegistryOperationError{}, Warnings: []iothub.DeviceRegistryOperationWarning{}}
		for _, d := range in {
			if taken[d.ID] {
				res.IsSuccessful = false
				res.Errors = append(res.Errors, iothub.DeviceRegistryOperationError{DeviceID: d.ID, ErrorCode: "DeviceAlreadyExists", ErrorStatus: "A device with ID '" + d.ID + "' is already registered."})
			}
		}
		status := 200
		if !res.IsSuccessful {
			status = 400
		}
		writeJSON(w, status, res)
	})
	return c, rec, func() [][]iothub.ExportImportDevice {
		mu.Lock()
		defer mu.Unlock()
		return append([][]iothub.ExportImportDevice(nil), batches...)
	}
}

func TestBulkDevicesRequest(t *testing.T) {
	c, rec, _ := bulkHub(t, map[string]bool{"b": true})
	res, err := c.BulkDevices(testContext(t), []iothub.ExportImportDevice{
		{ID: "a", ImportMode: iothub.ImportCreate, Authentication: CAAuth()},
		{ID: "b", ImportMode: iothub.ImportCreate},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.IsSuccessful || len(res.Errors) != 1 || res.Errors[0].DeviceID != "b" {
		t.Fatalf("result %+v", res)
	}
	be := BulkError(res.Errors[0])
	if !errors.Is(be, ErrDeviceAlreadyExists) || be.Status != 409 || !strings.Contains(be.Error(), "already registered") {
		t.Errorf("BulkError: %v (status %d)", be, be.Status)
	}
	r := rec.all()[0]
	if r.Method != "POST" || r.Path != "/devices" || r.Query["api-version"][0] != iothub.APIVersion || r.Header.Get("If-Match") != "" {
		t.Errorf("request %s %s %v If-Match %q", r.Method, r.Path, r.Query, r.Header.Get("If-Match"))
	}
	want := `[{"id":"a","importMode":"create","authentication":{"type":"certificateAuthority"}},{"id":"b","importMode":"create"}]`
	if strings.TrimSpace(string(r.Body)) != want {
		t.Errorf("body\n%s\nwant\n%s", r.Body, want)
	}
}

func TestBulkDevicesRefused(t *testing.T) {
	n := 0
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		n++
		switch n {
		case 1: // a 400 that is no bulk result: an error
			writeJSON(w, 400, iothub.RegistryErrorBody(iothub.CodeArgumentInvalid, "duplicate id", time.Now()))
		case 2, 3: // throttled, then a server error: the create is not sent again after a 500
			if n == 2 {
				writeJSON(w, 429, iothub.RegistryErrorBody(iothub.CodeThrottled, "slow", time.Now()))
				return
			}
			writeJSON(w, 500, iothub.RegistryErrorBody(iothub.CodeServerError, "oops", time.Now()))
		}
	})
	ctx := testContext(t)
	one := []iothub.ExportImportDevice{{ID: "a", ImportMode: iothub.ImportCreate}}
	_, err := c.BulkDevices(ctx, one)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != iothub.CodeArgumentInvalid || !strings.Contains(err.Error(), "duplicate id") {
		t.Errorf("refused request: %v", err)
	}
	if _, err := c.BulkDevices(ctx, one); !errors.As(err, &ae) || ae.Status != 500 {
		t.Errorf("after 429 then 500: %v", err)
	}
	if rec.count() != 3 {
		t.Errorf("%d requests, want 3 (the 429 retried once, the 500 not)", rec.count())
	}
	for name, devs := range map[string][]iothub.ExportImportDevice{
		"none":      nil,
		"101":       make([]iothub.ExportImportDevice, iothub.MaxBulkDevices+1),
		"no id":     {{ImportMode: iothub.ImportCreate}},
		"no import": {{ID: "a"}},
	} {
		if _, err := c.BulkDevices(ctx, devs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if rec.count() != 3 {
		t.Errorf("invalid requests reached the hub")
	}
}

func TestCreateDevicesBulk(t *testing.T) {
	ids := SequentialIDs("sim", 1, 250)
	c, _, batches := bulkHub(t, map[string]bool{"sim-0007": true, "sim-0201": true})
	res := c.CreateDevicesBulk(testContext(t), ids, nil, 2)
	got := batches()
	if len(got) != 3 {
		t.Fatalf("%d requests for 250 devices, want 3", len(got))
	}
	sizes := map[int]int{}
	for _, b := range got {
		sizes[len(b)]++
	}
	if sizes[100] != 2 || sizes[50] != 1 {
		t.Errorf("batch sizes %v, want two of 100 and one of 50", sizes)
	}
	keys := map[string]bool{}
	for i, r := range res {
		if r.DeviceID != ids[i] {
			t.Fatalf("result %d is %q, want %q", i, r.DeviceID, ids[i])
		}
		if r.DeviceID == "sim-0007" || r.DeviceID == "sim-0201" {
			if !errors.Is(r.Err, ErrDeviceAlreadyExists) || !strings.Contains(r.Err.Error(), r.DeviceID) {
				t.Errorf("%s: %v, want DeviceAlreadyExists", r.DeviceID, r.Err)
			}
			continue
		}
		if r.Err != nil {
			t.Errorf("%s: %v", r.DeviceID, r.Err)
			continue
		}
		cs, err := c.DeviceConnectionString(r.Device, PrimaryKey)
		if err != nil || !strings.HasPrefix(cs, "HostName="+c.HostName()+";DeviceId="+r.DeviceID+";SharedAccessKey=") {
			t.Errorf("%s: connection string %q, %v", r.DeviceID, cs, err)
		}
		k := r.Device.Authentication.SymmetricKey
		if keys[k.PrimaryKey] || k.PrimaryKey == k.SecondaryKey {
			t.Errorf("%s: keys repeat", r.DeviceID)
		}
		keys[k.PrimaryKey] = true
	}
	// The keys in the results are the ones sent.
	sent := got[0][0]
	if sent.ImportMode != iothub.ImportCreate || sent.Status != "enabled" || sent.Authentication.Type != "sas" || !keys[sent.Authentication.SymmetricKey.PrimaryKey] {
		t.Errorf("sent %+v", sent)
	}
}

func TestCreateDevicesBulkCancelled(t *testing.T) {
	c, rec, _ := bulkHub(t, nil)
	cctx, cancel := context.WithCancel(testContext(t))
	cancel()
	for _, r := range c.CreateDevicesBulk(cctx, SequentialIDs("x", 1, 150), CAAuth(), 1) {
		if r.Err == nil {
			t.Fatalf("%s created after cancel", r.DeviceID)
		}
	}
	if rec.count() != 0 {
		t.Errorf("%d requests after cancel", rec.count())
	}
}

func TestStatistics(t *testing.T) {
	services := 0
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/statistics/devices":
			writeJSON(w, 200, `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}`)
		case "/statistics/service":
			if services++; services <= 4 {
				writeJSON(w, 503, iothub.RegistryErrorBody(iothub.CodeServiceUnavailable, "down", time.Now()))
				return
			}
			writeJSON(w, 200, `{"connectedDeviceCount":5}`)
		}
	})
	ctx := testContext(t)
	rs, err := c.RegistryStatistics(ctx)
	if err != nil || *rs != (iothub.RegistryStatistics{TotalDeviceCount: 3, EnabledDeviceCount: 2, DisabledDeviceCount: 1}) {
		t.Errorf("registry statistics %+v, %v", rs, err)
	}
	// Four tries in all (WithRetry(4) in newTestClient), each answered 503.
	if _, err := c.ServiceStatistics(ctx); !errors.Is(err, &APIError{Status: 503}) || !strings.Contains(err.Error(), "service statistics") {
		t.Errorf("service statistics on 503: %v", err)
	}
	ss, err := c.ServiceStatistics(ctx)
	if err != nil || ss.ConnectedDeviceCount != 5 {
		t.Errorf("service statistics %+v, %v", ss, err)
	}
	reqs := rec.all()
	if len(reqs) != 1+4+1 || reqs[0].Method != "GET" || reqs[1].Path != "/statistics/service" {
		t.Errorf("%d requests, want 6 (1 + 4 tries of the 503 + 1)", len(reqs))
	}
}
