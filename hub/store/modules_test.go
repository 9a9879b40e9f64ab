package store

import (
	"errors"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestModuleLifecycle(t *testing.T) {
	s, path := newStore(t)
	mustCreate(t, s, "dev1")
	mustCreate(t, s, "dev10")

	m, err := s.CreateModule(iothub.Module{DeviceID: "dev1", ModuleID: "filter"})
	if err != nil {
		t.Fatalf("CreateModule: %v", err)
	}
	if m.DeviceID != "dev1" || m.ModuleID != "filter" || m.Authentication == nil ||
		m.Authentication.Type != "sas" || m.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("created module = %+v", m)
	}
	if _, err := s.CreateModule(iothub.Module{DeviceID: "dev1", ModuleID: "filter"}); !errors.Is(err, ErrModuleExists) {
		t.Fatalf("second CreateModule: err = %v, want ErrModuleExists", err)
	}
	if _, err := s.CreateModule(iothub.Module{DeviceID: "nodev", ModuleID: "x"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateModule on a missing device: err = %v, want ErrNotFound", err)
	}
	if _, err := s.CreateModule(iothub.Module{DeviceID: "dev1", ModuleID: "a/b"}); err == nil {
		t.Fatal("CreateModule accepted a module id with '/'")
	}
	if _, err := s.CreateModule(iothub.Module{DeviceID: "dev10", ModuleID: "other"}); err != nil {
		t.Fatal(err)
	}

	// The device registry does not see modules.
	if n := s.Count(); n != 2 {
		t.Fatalf("Count = %d, want 2 devices", n)
	}
	mods, err := s.Modules("dev1")
	if err != nil || len(mods) != 1 || mods[0].ModuleID != "filter" {
		t.Fatalf("Modules(dev1) = %+v, %v; want only filter (not dev10's)", mods, err)
	}

	key := ModuleKey("dev1", "filter")
	tw, _, err := s.PatchTwin(key, iothub.Twin{Properties: iothub.TwinProperties{Desired: obj(t, `{"threshold":5}`)}}, "")
	if err != nil {
		t.Fatalf("PatchTwin(module): %v", err)
	}
	if tw.DeviceID != "dev1" || tw.ModuleID != "filter" {
		t.Fatalf("module twin ids = %q/%q", tw.DeviceID, tw.ModuleID)
	}
	if _, err := s.PatchReported(key, []byte(`{"ok":true}`)); err != nil {
		t.Fatalf("PatchReported(module): %v", err)
	}
	if err := s.SetModelID(key, "dtmi:com:example:Filter;1"); err != nil {
		t.Fatal(err)
	}
	dt, _ := s.Twin("dev1")
	if dt.Properties.Desired["threshold"] != nil {
		t.Fatal("the module's desired patch reached the device twin")
	}

	// Durable: a reopened store has the module and its twin.
	s.Close()
	s = openAt(t, path, newClock())
	t.Cleanup(func() { _ = s.Close() })
	tw, err = s.Twin(key)
	if err != nil || tw.ModelID != "dtmi:com:example:Filter;1" || tw.Properties.Reported["ok"] != true {
		t.Fatalf("module twin after reopen = %+v, %v", tw, err)
	}
	var docs []map[string]any
	if err := s.ForEachModuleTwinDoc(func(d map[string]any) bool { docs = append(docs, d); return true }); err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[0]["moduleId"] != "filter" || docs[1]["moduleId"] != "other" {
		t.Fatalf("module twin docs = %v", docs)
	}

	// Deleting the device deletes its modules, and only its own.
	if err := s.DeleteDevice("dev1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Module("dev1", "filter"); !errors.Is(err, ErrModuleNotFound) {
		t.Fatalf("Module after device delete: err = %v, want ErrModuleNotFound", err)
	}
	if _, err := s.Module("dev10", "other"); err != nil {
		t.Fatalf("dev10's module went with dev1: %v", err)
	}
	if err := s.DeleteModule("dev10", "other", `"bogus"`); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("DeleteModule with a wrong etag: err = %v", err)
	}
	if err := s.DeleteModule("dev10", "other", ""); err != nil {
		t.Fatal(err)
	}
	if n := s.ModuleCount(); n != 0 {
		t.Fatalf("ModuleCount = %d after deleting all", n)
	}
}

func TestDeviceScopes(t *testing.T) {
	s, _ := newStore(t)
	edge, err := s.CreateDevice(iothub.Device{DeviceID: "edge1", Capabilities: &iothub.Capabilities{IotEdge: true}})
	if err != nil {
		t.Fatal(err)
	}
	if edge.DeviceScope != "ms-azure-iot-edge://edge1-"+edge.GenerationID {
		t.Fatalf("edge deviceScope = %q", edge.DeviceScope)
	}
	leaf, err := s.CreateDevice(iothub.Device{DeviceID: "leaf", DeviceScope: edge.DeviceScope, ParentScopes: []string{edge.DeviceScope}})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.DeviceScope != edge.DeviceScope || len(leaf.ParentScopes) != 1 {
		t.Fatalf("leaf scopes = %q %v", leaf.DeviceScope, leaf.ParentScopes)
	}
	// An update that omits the scopes keeps them.
	leaf, err = s.UpdateDevice(iothub.Device{DeviceID: "leaf", Status: "disabled"}, "*")
	if err != nil || leaf.DeviceScope != edge.DeviceScope {
		t.Fatalf("after update: %q, %v", leaf.DeviceScope, err)
	}
	if tw, _ := s.Twin("leaf"); tw.DeviceScope != edge.DeviceScope || len(tw.ParentScopes) != 1 {
		t.Fatalf("twin scopes = %q %v", tw.DeviceScope, tw.ParentScopes)
	}
	if _, err := s.CreateDevice(iothub.Device{DeviceID: "bad", ParentScopes: []string{""}}); err == nil {
		t.Fatal("an empty parent scope was accepted")
	}
}
