package service_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
	"github.com/dmctl/dmctl/service/internal/servicetest"
)

// TestHubModules runs the module calls against the local hub: what the
// client sends is what the hub serves, and the hub's answers decode.
func TestHubModules(t *testing.T) {
	h, c := servicetest.HubClient(t)
	ctx := servicetest.Context(t)
	h.CreateDevice(t, "d1")

	m, err := c.CreateModule(ctx, "d1", "m1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.ModuleID != "m1" || m.DeviceID != "d1" || m.Authentication == nil || m.Authentication.SymmetricKey == nil || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("created %+v", m)
	}
	cs, err := c.ModuleConnectionString(m, service.PrimaryKey)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := sas.ParseDevice(cs)
	if err != nil || parsed.DeviceID != "d1" || parsed.ModuleID != "m1" {
		t.Errorf("module connection string %v: %+v", err, parsed)
	}
	if _, err := c.CreateModule(ctx, "d1", "m1", nil); !errors.Is(err, service.ErrModuleAlreadyExists) {
		t.Errorf("second create: %v", err)
	}
	if _, err := c.CreateModule(ctx, "nodev", "m1", nil); !errors.Is(err, service.ErrDeviceNotFound) {
		t.Errorf("create on a missing device: %v", err)
	}
	if _, err := c.CreateModule(ctx, "d1", "cam", service.CAAuth()); err != nil {
		t.Fatal(err)
	}
	up, err := c.UpdateModule(ctx, iothub.Module{DeviceID: "d1", ModuleID: "cam", Authentication: service.ThumbprintAuth("475F65AB30BCA5D7A5C510E25FEB1EB960C58647", "")}, "")
	if err != nil || up.Authentication.Type != iothub.AuthSelfSigned {
		t.Errorf("update to selfSigned: %+v, %v", up, err)
	}
	ms, err := c.Modules(ctx, "d1")
	if err != nil || len(ms) != 2 {
		t.Errorf("modules %+v, %v", ms, err)
	}

	tw, err := c.UpdateModuleTwin(ctx, "d1", "m1", service.TwinPatch{Desired: json.RawMessage(`{"interval":3}`)}, "*")
	if err != nil || tw.ModuleID != "m1" || tw.Properties.Desired["interval"] != float64(3) {
		t.Errorf("module twin update %+v, %v", tw, err)
	}
	dt, err := c.Twin(ctx, "d1")
	if err != nil || dt.Properties.Desired["interval"] != nil {
		t.Errorf("the device twin changed with its module's: %+v, %v", dt, err)
	}
	if _, err := c.InvokeModuleMethod(ctx, "d1", "m1", iothub.MethodRequest{MethodName: "ping"}); !errors.Is(err, service.ErrDeviceNotOnline) {
		t.Errorf("method on an offline module: %v", err)
	}

	if err := c.DeleteModule(ctx, "d1", "m1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Module(ctx, "d1", "m1"); !errors.Is(err, service.ErrModuleNotFound) {
		t.Errorf("deleted module: %v", err)
	}
	if _, err := c.ModuleTwin(ctx, "d1", "m1"); !errors.Is(err, service.ErrModuleNotFound) {
		t.Errorf("deleted module's twin: %v", err)
	}
}

// TestHubBulkAndStatistics creates devices in bulk on the local hub, with
// one name taken, and reads the counts.
func TestHubBulkAndStatistics(t *testing.T) {
	h, c := servicetest.HubClient(t)
	ctx := servicetest.Context(t)
	h.CreateDevice(t, "bk-0003")

	ids := service.SequentialIDs("bk", 1, 120)
	for _, r := range c.CreateDevicesBulk(ctx, ids, nil, 2) {
		if r.DeviceID == "bk-0003" {
			if !errors.Is(r.Err, service.ErrDeviceAlreadyExists) {
				t.Errorf("taken name: %v", r.Err)
			}
			continue
		}
		if r.Err != nil {
			t.Fatalf("%s: %v", r.DeviceID, r.Err)
		}
		// The keys sent are the ones registered.
		d, err := c.Device(ctx, r.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		if d.Authentication.SymmetricKey.PrimaryKey != r.Device.Authentication.SymmetricKey.PrimaryKey {
			t.Fatalf("%s: registered key differs from the one sent", r.DeviceID)
		}
	}
	res, err := c.BulkDevices(ctx, []iothub.ExportImportDevice{
		{ID: "bk-0001", ImportMode: iothub.ImportDelete},
		{ID: "nope", ImportMode: iothub.ImportDelete},
	})
	if err != nil || res.IsSuccessful || len(res.Errors) != 1 || !errors.Is(service.BulkError(res.Errors[0]), service.ErrDeviceNotFound) {
		t.Errorf("bulk delete: %+v, %v", res, err)
	}

	rs, err := c.RegistryStatistics(ctx)
	if err != nil || rs.TotalDeviceCount != 119 || rs.EnabledDeviceCount != 119 || rs.DisabledDeviceCount != 0 {
		t.Errorf("registry statistics %+v, %v", rs, err)
	}
	ss, err := c.ServiceStatistics(ctx)
	if err != nil || ss.ConnectedDeviceCount != 0 {
		t.Errorf("service statistics %+v, %v", ss, err)
	}
}
