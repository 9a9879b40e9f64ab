package store

import (
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestStatistics(t *testing.T) {
	s, path := newStore(t)
	want := func(s *Store, total, enabled, disabled, connected int64) {
		t.Helper()
		rs, err := s.RegistryStatistics()
		if err != nil {
			t.Fatal(err)
		}
		if rs != (iothub.RegistryStatistics{TotalDeviceCount: total, EnabledDeviceCount: enabled, DisabledDeviceCount: disabled}) {
			t.Errorf("registry statistics = %+v, want total %d enabled %d disabled %d", rs, total, enabled, disabled)
		}
		ss, err := s.ServiceStatistics()
		if err != nil {
			t.Fatal(err)
		}
		if ss.ConnectedDeviceCount != connected {
			t.Errorf("connectedDeviceCount = %d, want %d", ss.ConnectedDeviceCount, connected)
		}
	}
	want(s, 0, 0, 0, 0)
	mustCreate(t, s, "a")
	mustCreate(t, s, "b")
	if _, err := s.CreateDevice(iothub.Device{DeviceID: "c", Status: "disabled"}); err != nil {
		t.Fatal(err)
	}
	// Modules are not devices, connected or not.
	if _, err := s.CreateModule(iothub.Module{DeviceID: "a", ModuleID: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetConnected(ModuleKey("a", "m"), true); err != nil {
		t.Fatal(err)
	}
	want(s, 3, 2, 1, 0)

	if err := s.SetConnected("a", true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetConnected("b", true); err != nil {
		t.Fatal(err)
	}
	want(s, 3, 2, 1, 2)
	if err := s.SetConnected("b", false); err != nil {
		t.Fatal(err)
	}
	want(s, 3, 2, 1, 1)

	if _, err := s.UpdateDevice(iothub.Device{DeviceID: "a", Status: "disabled"}, "*"); err != nil {
		t.Fatal(err)
	}
	want(s, 3, 1, 2, 1)
	if res, err := s.Import([]iothub.ExportImportDevice{
		{ID: "d", ImportMode: "create"},
		{ID: "e", ImportMode: "create", Status: "disabled"},
		{ID: "c", ImportMode: "delete"},
	}); err != nil || !res.IsSuccessful {
		t.Fatalf("Import = %+v, %v", res, err)
	}
	want(s, 4, 2, 2, 1)
	if err := s.DeleteDevice("b", ""); err != nil {
		t.Fatal(err)
	}
	want(s, 3, 1, 2, 1)

	// A restarted hub has no connections.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path, newClock())
	defer s2.Close()
	want(s2, 3, 1, 2, 0)
	_ = s2.Close()
	if _, err := s2.RegistryStatistics(); err != ErrClosed {
		t.Errorf("RegistryStatistics on a closed store: %v", err)
	}
	if _, err := s2.ServiceStatistics(); err != ErrClosed {
		t.Errorf("ServiceStatistics on a closed store: %v", err)
	}
}
