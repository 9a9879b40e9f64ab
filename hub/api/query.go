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
	"slices"
	"strings"

	"github.com/dmctl/dmctl/hub/query"
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

// keyset tokens continue SELECT * FROM devices after a device id:
// version byte, rows returned so far (for TOP), query digest, device id.
const keysetVersion = 2

var errForeignToken = errors.New("x-ms-continuation belongs to a different query")

func makeKeysetToken(q string, emitted int, after string) string {
	b := make([]byte, 0, 1+8+8+len(after))
	b = append(b, keysetVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(emitted))
	sum := sha256.Sum256([]byte(q))
	b = append(b, sum[:8]...)
	b = append(b, after...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// parseKeysetToken reads a keyset token for query q. keyset is false (and
// err nil) when tok is empty or not of that form, for the offset token
// parser to judge.
func parseKeysetToken(tok, q string) (emitted int, after string, keyset bool, err error) {
	if tok == "" {
		return 0, "", false, nil
	}
	b, derr := base64.RawURLEncoding.DecodeString(tok)
	if derr != nil || len(b) < 1+8+8+1 || b[0] != keysetVersion {
		return 0, "", false, nil
	}
	sum := sha256.Sum256([]byte(q))
	if !bytes.Equal(b[9:17], sum[:8]) {
		return 0, "", false, errForeignToken
	}
	n := binary.BigEndian.Uint64(b[1:9])
	if n > 1<<31 {
		return 0, "", false, errors.New("x-ms-continuation is out of range")
	}
	return int(n), string(b[17:]), true, nil
}

// query serves POST /devices/query. SELECT * FROM devices pages resume
// after the last device id of the previous page (keyset token); other
// queries are computed on every page request and their token carries the
// offset into the results.
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
	emitted, after, keyset, kerr := parseKeysetToken(r.Header.Get("x-ms-continuation"), text)
	pr := r
	if keyset || kerr != nil {
		// paging only knows offset tokens; a keyset one is judged here,
		// after the page size (the order the checks have always had).
		pr = r.Clone(r.Context())
		pr.Header.Del("x-ms-continuation")
	}
	pageSize, offset, ok := s.paging(w, pr, text)
	if !ok {
		return
	}
	if kerr != nil {
		s.failCode(w, iothub.CodeArgumentInvalid, kerr.Error())
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
	if q.IsSelectAll() && q.Collection() == query.CollectionDevices && offset == 0 {
		s.queryPage(w, q, text, pageSize, emitted, after)
		return
	}
	if keyset {
		s.failCode(w, iothub.CodeArgumentInvalid, errForeignToken.Error())
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

// queryPage serves one page of SELECT * FROM devices: the twins after the
// device id after (the last one of the previous page; "" on the first page),
// emitted being the number of rows on earlier pages (for TOP). Later pages
// resume from that id instead of evaluating everything before them.
func (s *server) queryPage(w http.ResponseWriter, q *query.Query, text string, pageSize, emitted int, after string) {
	docs, err := s.deviceDocs(q, after, pageSize+1)
	if err != nil {
		s.log.Error().Err(err).Msg("query failed")
		s.failCode(w, iothub.CodeServerError, "the query could not be evaluated")
		return
	}
	if top := q.Top(); top > 0 {
		left := max(top-emitted, 0)
		if len(docs) > left {
			docs = docs[:left]
		}
	}
	n := min(pageSize, len(docs))
	page := make([]any, n)
	for i, d := range docs[:n] {
		page[i] = d
	}
	w.Header().Set("x-ms-item-type", q.ItemType())
	if len(docs) > n {
		last, _ := docs[n-1]["deviceId"].(string)
		w.Header().Set("x-ms-continuation", makeKeysetToken(text, emitted+n, last))
	}
	writeJSON(w, http.StatusOK, page)
}

// run evaluates q over the device twins, the module twins or the device
// job rows. With limit > 0 it stops after that many matching documents.
func (s *server) run(q *query.Query, limit int) ([]any, error) {
	var docs []map[string]any
	switch q.Collection() {
	case query.CollectionJobs:
		var ferr error
		err := s.cfg.Store.ForEachJobRow(func(row iothub.DeviceJob) bool {
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
	case query.CollectionModules:
		err := s.cfg.Store.ForEachModuleTwinDoc(func(doc map[string]any) bool {
			if q.Match(doc) {
				docs = append(docs, doc)
			}
			return limit <= 0 || len(docs) < limit
		})
		if err != nil {
			return nil, err
		}
	case query.CollectionDevices:
		var err error
		if docs, err = s.deviceDocs(q, "", limit); err != nil {
			return nil, err
		}
	}
	return q.Project(docs)
}

// deviceDocs returns the twin documents matching q's condition whose device
// id sorts after after ("" for all), in device id order, at most limit of
// them when limit > 0. When the condition names its devices they are looked
// up instead of scanned.
func (s *server) deviceDocs(q *query.Query, after string, limit int) ([]map[string]any, error) {
	if ids, ok := q.DeviceIDs(); ok {
		if after != "" {
			i, found := slices.BinarySearch(ids, after)
			if found {
				i++
			}
			ids = ids[i:]
		}
		return s.lookupTwins(q, ids, limit)
	}
	return s.scanTwins(q, after, limit)
}

// scanTwins evaluates q's condition over every twin whose device id sorts
// after after ("" for all), in deviceId order.
// The documents come from the store's cache and are shared: nothing here
// or in Project modifies them.
func (s *server) scanTwins(q *query.Query, after string, limit int) ([]map[string]any, error) {
	var docs []map[string]any
	err := s.cfg.Store.ForEachTwinDocAfter(after, func(doc map[string]any) bool {
		if q.Match(doc) {
			docs = append(docs, doc)
		}
		return limit <= 0 || len(docs) < limit
	})
	if err != nil {
		return nil, err
	}
	return docs, nil
}

// lookupTwins evaluates q's condition over the twins of ids only (the
// devices q.DeviceIDs says the condition can hold for). ids is sorted, so
// the result is in the scan's deviceId order; unknown ids are skipped.
func (s *server) lookupTwins(q *query.Query, ids []string, limit int) ([]map[string]any, error) {
	all, err := s.cfg.Store.TwinDocs(ids)
	if err != nil {
		return nil, err
	}
	var docs []map[string]any
	for _, doc := range all {
		if q.Match(doc) {
			docs = append(docs, doc)
			if limit > 0 && len(docs) >= limit {
				break
			}
		}
	}
	return docs, nil
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
