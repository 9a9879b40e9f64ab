package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestQueryPaging(t *testing.T) {
	pages := map[string]struct {
		items string
		next  string
	}{
		"":   {`[{"deviceId":"a"},{"deviceId":"b"}]`, "t1"},
		"t1": {`[{"deviceId":"c"},{"deviceId":"d"}]`, "t2"},
		"t2": {`[{"deviceId":"e"}]`, ""},
	}
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/devices/query" {
			http.Error(w, "wrong route", 400)
			return
		}
		p, ok := pages[r.Header.Get("x-ms-continuation")]
		if !ok {
			http.Error(w, "bad token", 400)
			return
		}
		if p.next != "" {
			w.Header().Set("x-ms-continuation", p.next)
		}
		w.Header().Set("x-ms-item-type", "twin")
		writeJSON(w, 200, p.items)
	})
	var got []string
	err := c.Query(testContext(t), "SELECT * FROM devices", 2, func(raw json.RawMessage) error {
		var d struct{ DeviceID string }
		if err := json.Unmarshal(raw, &d); err != nil {
			return err
		}
		got = append(got, d.DeviceID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a,b,c,d,e" {
		t.Errorf("items %v", got)
	}
	reqs := rec.all()
	if len(reqs) != 3 {
		t.Fatalf("%d pages requested, want 3", len(reqs))
	}
	for i, r := range reqs {
		if r.Header.Get("x-ms-max-item-count") != "2" {
			t.Errorf("page %d: x-ms-max-item-count %q", i, r.Header.Get("x-ms-max-item-count"))
		}
		if string(r.Body) != `{"query":"SELECT * FROM devices"}` {
			t.Errorf("page %d: body %s", i, r.Body)
		}
	}
	if reqs[0].Header.Get("x-ms-continuation") != "" || reqs[2].Header.Get("x-ms-continuation") != "t2" {
		t.Errorf("continuation headers %q, %q", reqs[0].Header.Get("x-ms-continuation"), reqs[2].Header.Get("x-ms-continuation"))
	}

	// Stopping early asks for no further page.
	before := rec.count()
	n := 0
	err = c.Query(testContext(t), "SELECT * FROM devices", 0, func(json.RawMessage) error {
		n++
		if n == 3 {
			return ErrStopQuery
		}
		return nil
	})
	if err != nil || n != 3 || rec.count()-before != 2 {
		t.Errorf("stop: err %v, %d items, %d pages", err, n, rec.count()-before)
	}
	// A callback error ends the query and comes back as is.
	boom := errors.New("boom")
	if err := c.Query(testContext(t), "q", 0, func(json.RawMessage) error { return boom }); err != boom {
		t.Errorf("callback error: %v", err)
	}
}

func TestQueryRepeatedTokenEnds(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-ms-continuation", "same")
		writeJSON(w, 200, `[]`)
	})
	err := c.Query(testContext(t), "SELECT * FROM devices", 0, func(json.RawMessage) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "repeated continuation") {
		t.Fatalf("err = %v", err)
	}
	if rec.count() != 2 {
		t.Errorf("%d requests", rec.count())
	}
}

func TestQueryPageRetried(t *testing.T) {
	var mu sync.Mutex
	n := 0
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		if k == 2 {
			writeJSON(w, 500, iothub.RegistryErrorBody(iothub.CodeServerError, "oops", time.Now()))
			return
		}
		if k == 1 {
			w.Header().Set("x-ms-continuation", "next")
		}
		writeJSON(w, 200, fmt.Sprintf(`[{"n":%d}]`, k))
	})
	var got []string
	err := c.Query(testContext(t), "SELECT * FROM devices", 0, func(raw json.RawMessage) error {
		got = append(got, string(raw))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != `{"n":1} {"n":3}` || rec.count() != 3 {
		t.Errorf("items %v after %d requests", got, rec.count())
	}
	if rec.all()[2].Header.Get("x-ms-continuation") != "next" {
		t.Error("retried page lost its continuation token")
	}
}

func TestRegistry(t *testing.T) {
	const key1, key2 = "cHJpbWFyeWtleXByaW1hcnlrZXk=", "c2Vjb25kYXJ5a2V5c2Vjb25kYXI="
	dev := `{"deviceId":"d1","etag":"MA==","status":"enabled","connectionState":"Disconnected",` +
		`"authentication":{"type":"sas","symmetricKey":{"primaryKey":"` + key1 + `","secondaryKey":"` + key2 + `"}}}`
	c, srv, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "PUT" && r.URL.Path == "/devices/d1":
			writeJSON(w, 200, dev)
		case r.Method == "PUT" && r.URL.Path == "/devices/dup":
			writeJSON(w, 409, iothub.RegistryErrorBody(iothub.CodeDeviceAlreadyExists, "dup", time.Now()))
		case r.Method == "GET" && r.URL.Path == "/devices/d1":
			writeJSON(w, 200, dev)
		case r.Method == "GET" && r.URL.Path == "/devices":
			writeJSON(w, 200, "["+dev+"]")
		case r.Method == "DELETE" && r.URL.Path == "/devices/d1":
			w.WriteHeader(204)
		default:
			writeJSON(w, 404, iothub.RegistryErrorBody(iothub.CodeDeviceNotFound, r.URL.Path, time.Now()))
		}
	})
	ctx := testContext(t)
	d, err := c.CreateDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.all()[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	auth, _ := body["authentication"].(map[string]any)
	if body["deviceId"] != "d1" || auth["type"] != "sas" || auth["symmetricKey"] == nil {
		t.Errorf("create body %s", rec.all()[0].Body)
	}
	if im := rec.all()[0].Header.Get("If-Match"); im != "" {
		t.Errorf("create sent If-Match %q", im)
	}
	cs, err := c.DeviceConnectionString(d, PrimaryKey)
	if err != nil || cs != "HostName="+srv.Listener.Addr().String()+";DeviceId=d1;SharedAccessKey="+key1 {
		t.Errorf("connection string %q, %v", cs, err)
	}
	cs2, _ := c.DeviceConnectionString(d, SecondaryKey)
	if !strings.HasSuffix(cs2, ";SharedAccessKey="+key2) {
		t.Errorf("secondary connection string %q", cs2)
	}
	if _, err := c.DeviceConnectionString(&iothub.Device{DeviceID: "x", Authentication: &iothub.Authentication{Type: "none"}}, PrimaryKey); !errors.Is(err, ErrNoSymmetricKey) {
		t.Errorf("device without credentials: %v", err)
	}

	if _, err := c.CreateDevice(ctx, "dup"); !errors.Is(err, ErrDeviceAlreadyExists) || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("duplicate create: %v", err)
	}
	if _, err := c.Device(ctx, "nope"); !errors.Is(err, ErrDeviceNotFound) {
		t.Errorf("missing device: %v", err)
	}
	ds, err := c.Devices(ctx, 5)
	if err != nil || len(ds) != 1 || ds[0].DeviceID != "d1" {
		t.Errorf("list: %v %v", ds, err)
	}
	last := rec.all()[len(rec.all())-1]
	if last.Query["top"][0] != "5" {
		t.Errorf("list query %v", last.Query)
	}
	if err := c.DeleteDevice(ctx, "d1", ""); err != nil {
		t.Fatal(err)
	}
	last = rec.all()[len(rec.all())-1]
	if last.Header.Get("If-Match") != `"*"` {
		t.Errorf("delete If-Match %q", last.Header.Get("If-Match"))
	}
}

func TestIfMatch(t *testing.T) {
	for in, want := range map[string]string{
		"": `"*"`, "*": `"*"`, "MA==": `"MA=="`, `"MA=="`: `"MA=="`, ` AAAAAAAAAAE= `: `"AAAAAAAAAAE="`, `W/"x"`: `W/"x"`,
	} {
		if got := ifMatch(in); got != want {
			t.Errorf("ifMatch(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestInvokeMethodBody(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"status":201,"payload":{"ok":true}}`)
	})
	rt, ct := 12, 3
	res, err := c.InvokeMethod(testContext(t), "d#1", iothub.MethodRequest{
		MethodName: "doIt", Payload: json.RawMessage(`{"x":[1,2]}`),
		ResponseTimeoutInSeconds: &rt, ConnectTimeoutInSeconds: &ct,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 201 || string(res.Payload) != `{"ok":true}` {
		t.Errorf("result %+v", res)
	}
	r := rec.all()[0]
	if r.Method != "POST" || r.Path != "/twins/d#1/methods" || !strings.HasPrefix(r.RequestURI, "/twins/d%231/methods?") {
		t.Errorf("request %s %s", r.Method, r.RequestURI)
	}
	want := `{"methodName":"doIt","payload":{"x":[1,2]},"responseTimeoutInSeconds":12,"connectTimeoutInSeconds":3}`
	if string(r.Body) != want {
		t.Errorf("body %s, want %s", r.Body, want)
	}
}
