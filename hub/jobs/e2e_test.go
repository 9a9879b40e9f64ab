package jobs_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/internal/testwait"

	"github.com/dmctl/dmctl/device"
	devmqtt "github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// handler is a device that answers every method with status and records
// desired patches.
type handler struct {
	status int

	mu      sync.Mutex
	calls   int
	desired []string
}

func (h *handler) HandleMethod(ctx context.Context, req device.MethodRequest) (int, []byte) {
	h.mu.Lock()
	h.calls++
	h.mu.Unlock()
	return h.status, []byte(`{"method":"` + req.Name + `"}`)
}

func (h *handler) HandleTwin([]byte) {}

func (h *handler) HandleDesired(version int64, patch []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.desired = append(h.desired, string(patch))
}

func (h *handler) snapshot() (int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls, append([]string(nil), h.desired...)
}

// TestJobsThroughTheHub runs jobs on a real hub against real MQTT devices.
func TestJobsThroughTheHub(t *testing.T) {
	srv := hubtest.NewServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	devs := map[string]*handler{"ok": {status: 200}, "sad": {status: 500}}
	var wg sync.WaitGroup
	runCtx, stopDevices := context.WithCancel(ctx)
	defer func() {
		stopDevices()
		testwait.Group(t, &wg, "the simulated devices to stop")
	}()
	for id, h := range devs {
		cs, err := sas.ParseDevice(srv.CreateDevice(t, id))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := devmqtt.New(devmqtt.Config{ConnectionString: cs, RootCAs: srv.CAPool()})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = conn.Run(runCtx, h)
		}()
	}
	srv.CreateDevice(t, "offline")
	for id := range devs {
		if err := srv.WaitSubscribed(ctx, id, iothub.MethodRequestTopic("m", "1")); err != nil {
			t.Fatalf("device %s: %v", id, err)
		}
		if err := srv.WaitSubscribed(ctx, id, iothub.DesiredPatchTopic(2)); err != nil {
			t.Fatalf("device %s: %v", id, err)
		}
	}

	svc, err := sas.ParseService(srv.ServiceConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: srv.CAPool()}}}
	defer client.CloseIdleConnections()
	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		tok, err := svc.Token(time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		req, err := http.NewRequestWithContext(ctx, method, "https://"+srv.Addr()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", tok)
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	wait := func(id string) iothub.JobResponse {
		t.Helper()
		for {
			status, b := call("GET", "/jobs/v2/"+id+"?api-version=2021-04-12", "")
			var j iothub.JobResponse
			if status != 200 || json.Unmarshal(b, &j) != nil {
				t.Fatalf("GET job: %d %s", status, b)
			}
			if iothub.JobTerminal(j.Status) && j.DeviceJobStatistics.RunningCount == 0 {
				return j
			}
			select {
			case <-ctx.Done():
				t.Fatalf("job %s did not finish: %+v", id, j)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}

	status, b := call("PUT", "/jobs/v2/reboot-all?api-version=2021-04-12",
		`{"jobId":"reboot-all","type":"scheduleDeviceMethod","cloudToDeviceMethod":{"methodName":"rebootDevice","payload":null,"responseTimeoutInSeconds":5},"queryCondition":"deviceId IN ['ok', 'sad', 'offline']"}`)
	if status != 200 {
		t.Fatalf("create: %d %s", status, b)
	}
	j := wait("reboot-all")
	if j.Status != iothub.JobCompleted || j.DeviceJobStatistics != (iothub.JobStatistics{DeviceCount: 3, SucceededCount: 2, FailedCount: 1}) {
		t.Fatalf("job = %+v", j)
	}
	status, b = call("POST", "/devices/query", `{"query":"SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'reboot-all'"}`)
	var rows []iothub.DeviceJob
	if status != 200 || json.Unmarshal(b, &rows) != nil || len(rows) != 3 {
		t.Fatalf("rows: %d %s", status, b)
	}
	got := map[string]string{}
	for _, r := range rows {
		switch {
		case r.Outcome != nil:
			got[r.DeviceID] = fmt.Sprintf("%s %d %s", r.Status, r.Outcome.DeviceMethodResponse.Status, r.Outcome.DeviceMethodResponse.Payload)
		case r.Error != nil:
			got[r.DeviceID] = r.Status + " " + r.Error.Code
		}
	}
	want := map[string]string{
		"ok":      `completed 200 {"method":"rebootDevice"}`,
		"sad":     `completed 500 {"method":"rebootDevice"}`,
		"offline": "failed 404103",
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("row of %s = %q, want %q", id, got[id], w)
		}
	}

	status, b = call("PUT", "/jobs/v2/tune",
		`{"jobId":"tune","type":"scheduleUpdateTwin","updateTwin":{"etag":"*","properties":{"desired":{"interval":7}}},"queryCondition":"deviceId = 'ok'"}`)
	if status != 200 {
		t.Fatalf("create: %d %s", status, b)
	}
	if j := wait("tune"); j.DeviceJobStatistics.SucceededCount != 1 {
		t.Fatalf("twin job = %+v", j)
	}
	for {
		if _, desired := devs["ok"].snapshot(); len(desired) == 1 {
			if !strings.Contains(desired[0], `"interval":7`) {
				t.Errorf("desired patch = %s", desired[0])
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the device never received the desired patch")
		case <-time.After(10 * time.Millisecond):
		}
	}
	for id, h := range devs {
		if calls, _ := h.snapshot(); calls != 1 {
			t.Errorf("device %s called %d times", id, calls)
		}
	}
}
