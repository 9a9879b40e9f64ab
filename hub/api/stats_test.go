package api

import (
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestStatistics(t *testing.T) {
	e := newEnv(t)
	owner := e.token("iothubowner")
	r := e.do("GET", "/statistics/devices?api-version=2021-04-12", owner, "")
	if r.status != 200 || string(r.body) != `{"totalDeviceCount":0,"enabledDeviceCount":0,"disabledDeviceCount":0}` {
		t.Fatalf("empty registry = %s", r)
	}
	if r := e.do("GET", "/statistics/service", owner, ""); r.status != 200 || string(r.body) != `{"connectedDeviceCount":0}` {
		t.Fatalf("service = %s", r)
	}
	e.create("a")
	e.create("b")
	if _, err := e.store.CreateDevice(iothub.Device{DeviceID: "c", Status: "disabled"}); err != nil {
		t.Fatal(err)
	}
	e.createModule("a", "m")
	if err := e.store.SetConnected("a", true); err != nil {
		t.Fatal(err)
	}
	if err := e.store.SetConnected("a/m", true); err != nil {
		t.Fatal(err)
	}
	if r := e.do("GET", "/statistics/devices", owner, ""); string(r.body) != `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}` {
		t.Errorf("devices = %s", r)
	}
	if r := e.do("GET", "/statistics/service", owner, ""); string(r.body) != `{"connectedDeviceCount":1}` {
		t.Errorf("service = %s", r)
	}
	// Live: a disconnect and a bulk import show at once.
	if err := e.store.SetConnected("a", false); err != nil {
		t.Fatal(err)
	}
	if r := e.do("POST", "/devices", owner, `[{"id":"d","importMode":"create"},{"id":"b","importMode":"delete"}]`); r.status != 200 {
		t.Fatal(r)
	}
	if r := e.do("GET", "/statistics/devices", owner, ""); string(r.body) != `{"totalDeviceCount":3,"enabledDeviceCount":2,"disabledDeviceCount":1}` {
		t.Errorf("devices after import = %s", r)
	}
	if r := e.do("GET", "/statistics/service", owner, ""); string(r.body) != `{"connectedDeviceCount":0}` {
		t.Errorf("service after disconnect = %s", r)
	}
}
