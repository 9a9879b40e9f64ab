package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// bulkDevices serves POST /devices, IoT Hub's bulk registry operation: a
// JSON array of 1 to iothub.MaxBulkDevices ExportImportDevice entries, each
// with its own importMode (create, update, updateIfMatchETag, delete,
// deleteIfMatchETag, matched case-insensitively as the Node SDK sends
// "Update"/"Delete"). Entries with a moduleId act on that module, as on IoT
// Hub.
//
// A request that is not such an array, or that names an unknown import
// mode, fails as a whole with 400 ArgumentInvalid and changes nothing
// (importMode is an enum in IoT Hub's API, so the real hub cannot read
// such a body either). updateTwin and updateTwinIfMatchETag, and entries
// carrying tags, properties or twinETag, are refused the same way: the
// local hub does not import twins in bulk, and says so rather than drop
// them.
//
// Otherwise every entry that can be applied is applied and the answer is a
// BulkRegistryOperationResult: 200 when all entries were applied, 400 with
// the same body (isSuccessful false, errors naming each failed entry) when
// some were not, as IoT Hub's API definition states. The Python service
// SDK deserialises both; the Node SDK reports the 400 as an ArgumentError
// whose responseBody is the result.
func (s *server) bulkDevices(w http.ResponseWriter, r *http.Request) {
	var entries []bulkEntry
	if !s.readJSON(w, r, &entries) {
		return
	}
	ops := make([]iothub.ExportImportDevice, len(entries))
	for i, e := range entries {
		if present(e.Tags) || present(e.Properties) || present(e.TwinETag) {
			s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("entry %d (id %q): tags, properties and twinETag in bulk entries are not supported by the local hub (set them with PATCH /twins/{id})", i, e.ID))
			return
		}
		ops[i] = e.ExportImportDevice
	}
	if len(ops) == 0 {
		s.failCode(w, iothub.CodeArgumentInvalid, "the request must be a JSON array of 1 to 100 devices")
		return
	}
	if len(ops) > iothub.MaxBulkDevices {
		s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("the request names %d devices, over the limit of %d per bulk registry operation", len(ops), iothub.MaxBulkDevices))
		return
	}
	for i, op := range ops {
		if _, ok := store.ImportMode(op.ImportMode); ok {
			continue
		}
		switch {
		case op.ImportMode == "":
			s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("entry %d (id %q) has no importMode", i, op.ID))
		case strings.EqualFold(op.ImportMode, "updateTwin"), strings.EqualFold(op.ImportMode, "updateTwinIfMatchETag"):
			s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("entry %d (id %q): importMode %s is not supported by the local hub (use PATCH /twins/{id})", i, op.ID, op.ImportMode))
		default:
			s.failCode(w, iothub.CodeArgumentInvalid, fmt.Sprintf("entry %d (id %q): importMode %q is not one of create, update, updateIfMatchETag, delete, deleteIfMatchETag", i, op.ID, op.ImportMode))
		}
		return
	}
	// Identities deleted or disabled by the import lose their connections
	// afterwards (revoking a device id covers its connected modules).
	var revoke []string
	for _, op := range ops {
		if mode, _ := store.ImportMode(op.ImportMode); mode == iothub.ImportCreate {
			continue
		}
		key := op.ID
		if op.ModuleID != "" {
			key = store.ModuleKey(op.ID, op.ModuleID)
		}
		revoke = append(revoke, key)
	}
	res, err := s.cfg.Store.Import(ops)
	if err != nil {
		s.storeError(w, r, "", err)
		return
	}
	for _, k := range revoke {
		s.revoke(k)
	}
	status := http.StatusOK
	if !res.IsSuccessful {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, res)
}

// bulkEntry is an ExportImportDevice as it arrives, with the twin members
// the local hub refuses.
type bulkEntry struct {
	iothub.ExportImportDevice
	Tags       json.RawMessage `json:"tags"`
	Properties json.RawMessage `json:"properties"`
	TwinETag   json.RawMessage `json:"twinETag"`
}

// present reports whether a member was given with a value other than null.
func present(v json.RawMessage) bool {
	return len(v) > 0 && string(v) != "null"
}
