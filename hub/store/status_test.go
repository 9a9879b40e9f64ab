package store

import (
	"errors"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

// TestDeviceStatus: the status Device reports, for enabled and disabled
// devices, and ErrNotFound for an unknown one.
func TestDeviceStatus(t *testing.T) {
	s, _ := newStore(t)
	for _, d := range []iothub.Device{{DeviceID: "on"}, {DeviceID: "off", Status: "disabled"}} {
		if _, err := s.CreateDevice(d); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"on", "off"} {
		d, err := s.Device(id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.DeviceStatus(id)
		if err != nil || got != d.Status {
			t.Errorf("DeviceStatus(%q) = %q, %v; Device says %q", id, got, err, d.Status)
		}
	}
	if got, _ := s.DeviceStatus("off"); got != "disabled" {
		t.Errorf("DeviceStatus(off) = %q, want disabled", got)
	}
	if _, err := s.DeviceStatus("nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeviceStatus(nobody): %v, want ErrNotFound", err)
	}
}
