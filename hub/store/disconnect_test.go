package store

import (
	"errors"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
)

// At shutdown the hub records every closed connection in one write: each
// listed device turns Disconnected (durably, with the time), unlisted and
// unknown ones are left alone, and modules are covered too.
func TestSetDisconnectedAll(t *testing.T) {
	s, _ := newStore(t)
	for _, id := range []string{"a", "b", "c", "idle"} {
		mustCreate(t, s, id)
	}
	if _, err := s.CreateModule(iothub.Module{DeviceID: "a", ModuleID: "m"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c", "a/m"} {
		if err := s.SetConnected(id, true); err != nil {
			t.Fatal(err)
		}
	}
	before := lastTxID(t, s)
	if err := s.SetDisconnectedAll([]string{"a", "b", "a/m", "idle", "deleted-meanwhile"}); err != nil {
		t.Fatal(err)
	}
	if got := lastTxID(t, s) - before; got != 1 {
		t.Fatalf("%d write transactions, want 1", got)
	}
	for id, want := range map[string]string{"a": "Disconnected", "b": "Disconnected", "a/m": "Disconnected", "c": "Connected", "idle": "Disconnected"} {
		tw, err := s.Twin(id)
		if err != nil {
			t.Fatal(err)
		}
		if tw.ConnectionState != want {
			t.Errorf("%s: %s, want %s", id, tw.ConnectionState, want)
		}
	}
	// Nothing to change: no write at all.
	before = lastTxID(t, s)
	if err := s.SetDisconnectedAll([]string{"a", "idle"}); err != nil || lastTxID(t, s) != before {
		t.Fatalf("a second call wrote (err %v)", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDisconnectedAll([]string{"c"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}
