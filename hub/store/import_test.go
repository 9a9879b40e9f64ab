package store

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
	bolt "go.etcd.io/bbolt"
)

// lastTxID is the id of the last committed write transaction.
func lastTxID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

func importErrs(res iothub.BulkRegistryOperationResult) map[string]string {
	m := map[string]string{}
	for _, e := range res.Errors {
		k := e.DeviceID
		if e.ModuleID != "" {
			k += "/" + e.ModuleID
		}
		m[k+" "+e.Operation] = e.ErrorCode
	}
	return m
}

func TestImportMixed(t *testing.T) {
	s, path := newStore(t)
	mustCreate(t, s, "exists")
	mustCreate(t, s, "upd")
	mustCreate(t, s, "del")
	etagDev := mustCreate(t, s, "etag")
	mustCreate(t, s, "etag2")
	mustCreate(t, s, "etag3")
	if _, err := s.CreateModule(iothub.Module{DeviceID: "del", ModuleID: "m"}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Device("exists")
	pk := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	ops := []iothub.ExportImportDevice{
		{ID: "new1", ImportMode: "create"},
		{ID: "new1", ModuleID: "mod", ImportMode: "create"},
		{ID: "new2", ImportMode: "create", Status: "disabled", Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: pk, SecondaryKey: pk}}},
		{ID: "exists", ImportMode: "create"},
		{ID: "upd", ImportMode: "Update", Status: "disabled"},
		{ID: "ghost", ImportMode: "update"},
		{ID: "etag", ImportMode: "updateIfMatchETag", ETag: "bm9wZQ==", Status: "disabled"},
		{ID: "etag2", ImportMode: "updateIfMatchETag", ETag: etagDev.ETag, Status: "disabled"},
		{ID: "etag3", ImportMode: "deleteIfMatchETag"},
		{ID: "etag", ImportMode: "delete"},
		{ID: "del", ImportMode: "Delete"},
		{ID: "nope", ImportMode: "deleteIfMatchETag", ETag: "MA=="},
		{ID: "bad/id", ImportMode: "create"},
		{ID: "badkey", ImportMode: "create", Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: "not base64!"}}},
		{ID: "new1", ImportMode: "update"},
		{ID: "ghost", ModuleID: "m", ImportMode: "create"},
		{ID: "upd", ImportMode: "replace"},
	}
	txBefore := lastTxID(t, s)
	res, err := s.Import(ops)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if got := lastTxID(t, s); got != txBefore+1 {
		t.Errorf("Import committed %d write transactions, want 1", got-txBefore)
	}
	want := map[string]string{
		"exists create":           ImportErrDeviceAlreadyExists,
		"ghost update":            ImportErrDeviceNotFound,
		"etag updateIfMatchETag":  ImportErrPreconditionFailed,
		"etag3 deleteIfMatchETag": ImportErrArgumentInvalid, // no eTag given
		"etag delete":             ImportErrDeviceDefinedMultipleTimes,
		"nope deleteIfMatchETag":  ImportErrDeviceNotFound,
		"bad/id create":           ImportErrArgumentInvalid,
		"badkey create":           ImportErrArgumentInvalid,
		"new1 update":             ImportErrDeviceDefinedMultipleTimes,
		"ghost/m create":          ImportErrDeviceNotFound,
		"upd ":                    ImportErrArgumentInvalid, // unknown mode
	}
	got := importErrs(res)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("errors = %v\nwant     %v", got, want)
	}
	if res.IsSuccessful {
		t.Error("IsSuccessful with errors")
	}
	for _, e := range res.Errors {
		if e.ErrorStatus == "" {
			t.Errorf("error for %s has no errorStatus", e.DeviceID)
		}
	}

	check := func(s *Store) {
		t.Helper()
		d, err := s.Device("new1")
		if err != nil || d.Authentication.SymmetricKey.PrimaryKey == "" || d.Status != "enabled" {
			t.Errorf("new1 = %+v, %v", d, err)
		}
		if m, err := s.Module("new1", "mod"); err != nil || m.Authentication.SymmetricKey.PrimaryKey == "" {
			t.Errorf("module new1/mod = %+v, %v", m, err)
		}
		if d, err := s.Device("new2"); err != nil || d.Status != "disabled" || d.Authentication.SymmetricKey.PrimaryKey != pk {
			t.Errorf("new2 = %+v, %v", d, err)
		}
		if d, _ := s.Device("exists"); d.ETag != before.ETag || d.GenerationID != before.GenerationID {
			t.Errorf("exists changed: %+v", d)
		}
		if d, _ := s.Device("upd"); d.Status != "disabled" || d.ETag != identityETag(1) {
			t.Errorf("upd = status %s etag %s, want disabled %s", d.Status, d.ETag, identityETag(1))
		}
		if d, _ := s.Device("etag"); d.Status != "enabled" {
			t.Errorf("etag device updated despite the mismatch")
		}
		if d, _ := s.Device("etag2"); d.Status != "disabled" {
			t.Errorf("etag2 not updated with the matching eTag")
		}
		if _, err := s.Device("del"); !errors.Is(err, ErrNotFound) {
			t.Errorf("del: err = %v, want ErrNotFound", err)
		}
		if _, err := s.Module("del", "m"); !errors.Is(err, ErrModuleNotFound) {
			t.Errorf("del's module: err = %v, want ErrModuleNotFound", err)
		}
		if n := s.Count(); n != 7 {
			t.Errorf("Count = %d, want 7 (etag etag2 etag3 exists new1 new2 upd)", n)
		}
		if n := s.ModuleCount(); n != 1 {
			t.Errorf("ModuleCount = %d, want 1", n)
		}
		ds, _ := s.Devices(0)
		var ids []string
		for _, d := range ds {
			ids = append(ids, d.DeviceID)
		}
		if fmt.Sprint(ids) != "[etag etag2 etag3 exists new1 new2 upd]" {
			t.Errorf("Devices = %v", ids)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path, newClock())
	defer s2.Close()
	check(s2)
}

func TestImportAllSucceed(t *testing.T) {
	s, _ := newStore(t)
	var ops []iothub.ExportImportDevice
	for i := range iothub.MaxBulkDevices {
		ops = append(ops, iothub.ExportImportDevice{ID: fmt.Sprintf("bulk-%03d", i), ImportMode: iothub.ImportCreate})
	}
	tx := lastTxID(t, s)
	res, err := s.Import(ops)
	if err != nil || !res.IsSuccessful || len(res.Errors) != 0 || res.Errors == nil || res.Warnings == nil {
		t.Fatalf("Import = %+v, %v", res, err)
	}
	if got := lastTxID(t, s); got != tx+1 {
		t.Errorf("%d write transactions for 100 creates, want 1", got-tx)
	}
	if n := s.Count(); n != 100 {
		t.Fatalf("Count = %d", n)
	}
	// Twins are new and queryable.
	tw, err := s.Twin("bulk-042")
	if err != nil || tw.Version != 1 || tw.Properties.Desired == nil {
		t.Errorf("twin = %+v, %v", tw, err)
	}
	// Delete them all again in one request.
	for i := range ops {
		ops[i].ImportMode = "delete"
	}
	if res, err := s.Import(ops); err != nil || !res.IsSuccessful {
		t.Fatalf("delete: %+v, %v", res, err)
	}
	if n := s.Count(); n != 0 {
		t.Errorf("Count after delete = %d", n)
	}
}

func TestImportNothingApplied(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "a")
	tx := lastTxID(t, s)
	res, err := s.Import([]iothub.ExportImportDevice{{ID: "a", ImportMode: "create"}, {ID: "b", ImportMode: "delete"}})
	if err != nil || res.IsSuccessful || len(res.Errors) != 2 {
		t.Fatalf("Import = %+v, %v", res, err)
	}
	if got := lastTxID(t, s); got != tx {
		t.Errorf("a request with no applicable entry wrote %d transactions", got-tx)
	}
}

func TestImportKeepsActivity(t *testing.T) {
	s, _ := newStore(t)
	mustCreate(t, s, "a")
	s.Touch("a")
	touched, _ := s.Device("a")
	if res, err := s.Import([]iothub.ExportImportDevice{{ID: "a", ImportMode: "update", Status: "disabled"}}); err != nil || !res.IsSuccessful {
		t.Fatalf("Import = %+v, %v", res, err)
	}
	d, _ := s.Device("a")
	if d.LastActivityTime != touched.LastActivityTime || d.Status != "disabled" {
		t.Errorf("after import: lastActivity %s (want %s), status %s", d.LastActivityTime, touched.LastActivityTime, d.Status)
	}
	s.tmu.Lock()
	pending := len(s.touched)
	s.tmu.Unlock()
	if pending != 0 {
		t.Error("the activity time written by the import is still pending")
	}
}

func TestImportClosed(t *testing.T) {
	s, _ := newStore(t)
	_ = s.Close()
	if _, err := s.Import([]iothub.ExportImportDevice{{ID: "a", ImportMode: "create"}}); !errors.Is(err, ErrClosed) {
		t.Errorf("err = %v, want ErrClosed", err)
	}
}

func TestImportMode(t *testing.T) {
	for in, want := range map[string]string{
		"create": "create", "CREATE": "create", "Update": "update", "UpdateIfMatchETag": "updateIfMatchETag",
		"delete": "delete", "DeleteIfMatchEtag": "deleteIfMatchETag", "": "", "updateTwin": "", "upsert": "",
	} {
		got, ok := ImportMode(in)
		if got != want || ok != (want != "") {
			t.Errorf("ImportMode(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
