package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/hub/store"
	"github.com/dmctl/dmctl/internal/iothub"
)

// queryRequest is the body of POST /devices/query.
type queryRequest struct {
	Query *string `json:"query"`
}

// continuation is the opaque paging token: the offset of the next item and a
// digest of the query text, so a token cannot be replayed on another query.
const tokenLen = 8 + 8

func makeToken(q string, offset int) string {
	var b [tokenLen]byte
	binary.BigEndian.PutUint64(b[:8], uint64(offset))
	sum := sha256.Sum256([]byte(q))
	copy(b[8:], sum[:8])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func parseToken(tok, q string) (int, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != tokenLen {
		return 0, errors.New("x-ms-continuation is not a token issued by this hub")
	}
	sum := sha256.Sum256([]byte(q))
	if !bytes.Equal(b[8:], sum[:8]) {
		return 0, errors.New("x-ms-continuation belongs to a different query")
	}
	off := binary.BigEndian.Uint64(b[:8])
	if off > 1<<31 {
		return 0, errors.New("x-ms-continuation is out of range")
	}
	return int(off), nil
}

// query serves POST /devices/query. Results are computed on every page
// request; the continuation token carries the offset into them.
func (s *server) query(w http.ResponseWriter, r *http.Request) {
	var req queryRequest
	if !s.readJSON(w, r, &req) {
		return
	}
	if req.Query == nil || strings.TrimSpace(*req.Query) == "" {
		s.failCode(w, iothub.CodeArgumentInvalid, "query is required")
		return
	}
	text := *req.Query
	pageSize, offset, ok := s.paging(w, r, text)
	if !ok {
		return
	}
	q, err := query.Parse(text)
	if err != nil {
		var se *query.SyntaxError
		if errors.As(err, &se) {
			s.failCode(w, iothub.CodeArgumentInvalid, se.Error())
			return
		}
		s.failCode(w, iothub.CodeArgumentInvalid, "invalid query: "+err.Error())
		return
	}
	// SELECT * rows are the matching documents themselves, so evaluation
	// can stop once this page and one more row (to know whether another
	// page exists) are known.
	limit := 0
	if q.IsSelectAll() {
		limit = offset + pageSize + 1
	}
	rows, err := s.run(q, limit)
	if err != nil {
		s.log.Error().Err(err).Msg("query failed")
		s.failCode(w, iothub.CodeServerError, "the query could not be evaluated")
		return
	}
	if offset > len(rows) {
		offset = len(rows)
	}
	end := min(offset+pageSize, len(rows))
	page := rows[offset:end]
	if page == nil {
		page = []any{}
	}
	w.Header().Set("x-ms-item-type", q.ItemType())
	if end < len(rows) {
		w.Header().Set("x-ms-continuation", makeToken(text, end))
	}
	writeJSON(w, http.StatusOK, page)
}

// run evaluates q over the twins or the device job rows. Modules are not
// kept by the local hub, so that collection is always empty.
// With limit > 0 it stops after that many matching documents.
func (s *server) run(q *query.Query, limit int) ([]any, error) {
	var docs []map[string]any
	switch q.Collection() {
	case query.CollectionJobs:
		var ferr error
		err := s.cfg.Store.ForEachJobRow(func(row store.DeviceJob) bool {
			doc, err := jsonDoc(row)
			if err != nil {
				ferr = fmt.Errorf("render job row %q of %q: %w", row.DeviceID, row.JobID, err)
				return false
			}
			if q.Match(doc) {
				docs = append(docs, doc)
			}
			return limit <= 0 || len(docs) < limit
		})
		if err != nil {
			return nil, err
		}
		if ferr != nil {
			return nil, ferr
		}
	case query.CollectionDevices:
		var ferr error
		err := s.cfg.Store.ForEachTwin(func(t iothub.Twin) bool {
			doc, err := twinDoc(t)
			if err != nil {
				ferr = err
				return false
			}
			if q.Match(doc) {
				docs = append(docs, doc)
			}
			return limit <= 0 || len(docs) < limit
		})
		if err != nil {
			return nil, err
		}
		if ferr != nil {
			return nil, ferr
		}
	}
	return q.Project(docs)
}

// twinDoc turns a twin into the JSON object the query language sees: the
// same document GET /twins/{id} returns.
func twinDoc(t iothub.Twin) (map[string]any, error) {
	m, err := jsonDoc(t)
	if err != nil {
		return nil, fmt.Errorf("render twin %q: %w", t.DeviceID, err)
	}
	return m, nil
}

// jsonDoc renders v as the JSON object a client would receive.
func jsonDoc(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}
