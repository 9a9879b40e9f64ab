package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Twin document limits (protocol.md §4.8). Sizes are of the compact JSON of
// a section without "$version" and "$metadata".
const (
	MaxTagsSize       = 8 * 1024
	MaxPropertiesSize = 32 * 1024
	MaxDepth          = 10
	MaxKeyLength      = 1024
	MaxStringLength   = 4 * 1024
	MaxInteger        = 4503599627370495
	MinInteger        = -4503599627370496
	// MaxPatchSize bounds the raw reported patch accepted by PatchReported.
	MaxPatchSize = 64 * 1024
)

// node is one value in a properties section together with its metadata.
// Object nodes have a nil Val; leaves (scalars and arrays) have a non-nil
// Val. Nodes are never modified once part of a published record.
type node struct {
	Kids map[string]*node `json:"k,omitempty"`
	Val  any              `json:"v,omitempty"`
	At   time.Time        `json:"t"`
	Ver  int64            `json:"n,omitempty"` // $lastUpdatedVersion (desired only)
}

func (n *node) isObj() bool { return n.Val == nil }

// build makes a node tree for v, dropping nulls inside objects.
func build(v any, at time.Time, ver int64) *node {
	m, ok := v.(map[string]any)
	if !ok {
		return &node{Val: v, At: at, Ver: ver}
	}
	n := &node{Kids: make(map[string]*node, len(m)), At: at, Ver: ver}
	for k, cv := range m {
		if cv != nil {
			n.Kids[k] = build(cv, at, ver)
		}
	}
	return n
}

// merge applies a JSON merge patch to the object node n and returns the new
// node; n is left unchanged and untouched subtrees are shared. Every node on
// a changed path gets at and ver.
func merge(n *node, patch map[string]any, at time.Time, ver int64) *node {
	out := &node{Kids: make(map[string]*node, len(n.Kids)+len(patch)), At: at, Ver: ver}
	maps.Copy(out.Kids, n.Kids)
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(out.Kids, k)
		case map[string]any:
			if old := out.Kids[k]; old != nil && old.isObj() {
				out.Kids[k] = merge(old, pv, at, ver)
			} else {
				out.Kids[k] = build(pv, at, ver)
			}
		default:
			out.Kids[k] = &node{Val: v, At: at, Ver: ver}
		}
	}
	return out
}

// value renders the plain JSON value of n as a fresh copy.
func (n *node) value() any {
	if !n.isObj() {
		return copyValue(n.Val)
	}
	m := make(map[string]any, len(n.Kids))
	for k, c := range n.Kids {
		m[k] = c.value()
	}
	return m
}

// metadata renders the $metadata tree of n.
func (n *node) metadata(withVersion bool) map[string]any {
	m := make(map[string]any, len(n.Kids)+2)
	m["$lastUpdated"] = iothub.FormatTime(n.At)
	if withVersion {
		m["$lastUpdatedVersion"] = n.Ver
	}
	for k, c := range n.Kids {
		m[k] = c.metadata(withVersion)
	}
	return m
}

// diff returns the merge patch that turns the object node n into want
// (nulls for removed keys), or an empty map when they are equal.
func diff(n *node, want map[string]any) map[string]any {
	out := map[string]any{}
	for k := range n.Kids {
		if _, ok := want[k]; !ok {
			out[k] = nil
		}
	}
	for k, v := range want {
		old := n.Kids[k]
		if m, ok := v.(map[string]any); ok && old != nil && old.isObj() {
			if d := diff(old, m); len(d) > 0 {
				out[k] = d
			}
			continue
		}
		if old != nil && !old.isObj() && reflect.DeepEqual(old.Val, v) {
			continue
		}
		out[k] = v
	}
	return out
}

// mergeMap applies a JSON merge patch to a plain map (tags), sharing
// untouched values.
func mergeMap(cur, patch map[string]any) map[string]any {
	out := make(map[string]any, len(cur)+len(patch))
	maps.Copy(out, cur)
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(out, k)
		case map[string]any:
			if old, ok := out[k].(map[string]any); ok {
				out[k] = mergeMap(old, pv)
			} else {
				out[k] = stripNulls(pv)
			}
		default:
			out[k] = v
		}
	}
	return out
}

// stripNulls copies m without null members (recursively through objects).
func stripNulls(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch cv := v.(type) {
		case nil:
		case map[string]any:
			out[k] = stripNulls(cv)
		default:
			out[k] = v
		}
	}
	return out
}

// copyValue deep-copies a JSON value.
func copyValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, c := range x {
			m[k] = copyValue(c)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, c := range x {
			a[i] = copyValue(c)
		}
		return a
	}
	return v
}

// withoutSystem returns a shallow copy of a properties patch without the
// read-only "$version" and "$metadata" members that clients echo back.
func withoutSystem(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k == "$version" || k == "$metadata" {
			continue
		}
		out[k] = v
	}
	return out
}

// checkObject validates the keys and values of an object at depth level
// (the section itself is level 0).
func checkObject(section string, m map[string]any, level int, path string) error {
	for k, v := range m {
		if err := checkKey(section, k, path); err != nil {
			return err
		}
		if err := checkValue(section, v, level, join(path, k)); err != nil {
			return err
		}
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func checkKey(section, k, path string) error {
	if k == "" {
		return invalid("%s: empty property name under %q", section, path)
	}
	if len(k) > MaxKeyLength {
		return invalid("%s: property name under %q is %d bytes long, over the limit of %d", section, path, len(k), MaxKeyLength)
	}
	if !utf8.ValidString(k) {
		return invalid("%s: property name under %q is not valid UTF-8", section, path)
	}
	for _, r := range k {
		if r == '.' || r == '$' || r == ' ' || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return invalid("%s: property name %q contains %q, which is not allowed (no '.', '$', space or control characters)", section, join(path, k), r)
		}
	}
	return nil
}

func checkValue(section string, v any, level int, path string) error {
	switch x := v.(type) {
	case nil, bool:
		return nil
	case string:
		if len(x) > MaxStringLength {
			return invalid("%s: value of %q is %d bytes long, over the limit of %d", section, path, len(x), MaxStringLength)
		}
		return nil
	case json.Number:
		return checkNumber(section, string(x), path)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return invalid("%s: value of %q is not a finite number", section, path)
		}
		if x == math.Trunc(x) && (x > MaxInteger || x < MinInteger) {
			return invalid("%s: integer value of %q is outside [%d, %d]", section, path, int64(MinInteger), int64(MaxInteger))
		}
		return nil
	case int:
		return checkInt(section, int64(x), path)
	case int64:
		return checkInt(section, x, path)
	case map[string]any:
		if level+1 > MaxDepth {
			return invalid("%s: %q is nested more than %d levels deep", section, path, MaxDepth)
		}
		return checkObject(section, x, level+1, path)
	case []any:
		if level+1 > MaxDepth {
			return invalid("%s: %q is nested more than %d levels deep", section, path, MaxDepth)
		}
		for i, c := range x {
			if err := checkValue(section, c, level+1, path+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
		return nil
	}
	return invalid("%s: value of %q has unsupported type %T", section, path, v)
}

func checkInt(section string, x int64, path string) error {
	if x > MaxInteger || x < MinInteger {
		return invalid("%s: integer value of %q is outside [%d, %d]", section, path, int64(MinInteger), int64(MaxInteger))
	}
	return nil
}

func checkNumber(section, s, path string) error {
	if !json.Valid([]byte(s)) {
		return invalid("%s: value of %q is not a valid number", section, path)
	}
	if strings.ContainsAny(s, ".eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsInf(f, 0) {
			return invalid("%s: value of %q is out of range", section, path)
		}
		return nil
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return invalid("%s: integer value of %q is outside [%d, %d]", section, path, int64(MinInteger), int64(MaxInteger))
	}
	return checkInt(section, i, path)
}

// checkSize rejects a section whose compact JSON exceeds limit bytes.
func checkSize(section string, v any, limit int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return invalid("%s: %v", section, err)
	}
	if len(b) > limit {
		return invalid("%s is %d bytes, over the limit of %d bytes", section, len(b), limit)
	}
	return nil
}

// DecodeObject decodes a JSON object with numbers kept as json.Number.
// Malformed JSON is a ValidationError with iothub.CodeIotHubFormatError;
// valid JSON that is not an object has iothub.CodeArgumentInvalid.
func DecodeObject(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, &ValidationError{Code: iothub.CodeIotHubFormatError, Msg: "malformed JSON: " + err.Error()}
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Code: iothub.CodeIotHubFormatError, Msg: "malformed JSON: data after the top-level value"}
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalid("expected a JSON object")
	}
	return m, nil
}

// DesiredChange is what a desired-properties update must push to the
// device: Patch is the body for $iothub/twin/PATCH/properties/desired/?$version=n
// (the patch as applied, nulls included, plus "$version").
type DesiredChange struct {
	Version int64
	Patch   []byte
}

func desiredChange(patch map[string]any, version int64) (*DesiredChange, error) {
	m := make(map[string]any, len(patch)+1)
	maps.Copy(m, patch)
	m["$version"] = version
	b, err := json.Marshal(m)
	if err != nil {
		return nil, invalid("desired: %v", err)
	}
	return &DesiredChange{Version: version, Patch: b}, nil
}

// section renders desired or reported for the service view.
func section(n *node, version int64, desired bool) map[string]any {
	m := n.value().(map[string]any)
	m["$metadata"] = n.metadata(desired)
	m["$version"] = version
	return m
}

// twin renders the service view of r.
func (s *Store) twin(r *record) iothub.Twin {
	t := iothub.Twin{
		DeviceID:                  r.ID,
		ETag:                      twinETag(r.TwinVersion),
		DeviceETag:                identityETag(r.IdentityVer),
		Version:                   r.TwinVersion,
		Status:                    r.Status,
		StatusUpdateTime:          iothub.FormatTime(r.StatusUpdated),
		ConnectionState:           r.ConnState,
		LastActivityTime:          iothub.FormatTime(s.lastActivity(r)),
		CloudToDeviceMessageCount: r.C2DCount,
		AuthenticationType:        r.AuthType,
		X509Thumbprint:            thumbprints(r),
		Capabilities:              &iothub.Capabilities{IotEdge: r.IotEdge},
		Properties: iothub.TwinProperties{
			Desired:  section(r.Desired, r.DesiredVersion, true),
			Reported: section(r.Reported, r.ReportedVersion, false),
		},
	}
	if r.StatusReason != nil {
		v := *r.StatusReason
		t.StatusReason = &v
	}
	if len(r.Tags) > 0 {
		t.Tags = copyValue(r.Tags).(map[string]any)
	}
	return t
}

// newEntry publishes r with its device-side twin document.
func newEntry(r *record) (*entry, error) {
	desired := r.Desired.value().(map[string]any)
	desired["$version"] = r.DesiredVersion
	reported := r.Reported.value().(map[string]any)
	reported["$version"] = r.ReportedVersion
	b, err := json.Marshal(map[string]any{"desired": desired, "reported": reported})
	if err != nil {
		return nil, fmt.Errorf("store: render twin of %q: %w", r.ID, err)
	}
	return &entry{rec: r, devTwin: b}, nil
}

// Twin returns the service view of id's twin, with $metadata and $version in
// both property sections (ErrNotFound).
func (s *Store) Twin(id string) (iothub.Twin, error) {
	e, err := s.get(id)
	if err != nil {
		return iothub.Twin{}, err
	}
	return s.twin(e.rec), nil
}

// DeviceTwin returns the device-side twin document
// {"desired":{...,"$version":n},"reported":{...,"$version":m}} without
// $metadata. The slice is shared: callers must not modify it.
func (s *Store) DeviceTwin(id string) ([]byte, error) {
	e, err := s.get(id)
	if err != nil {
		return nil, err
	}
	return e.devTwin, nil
}

func checkTwinMatch(r *record, ifMatch string) error {
	if !ETagMatches(ifMatch, twinETag(r.TwinVersion)) {
		return fmt.Errorf("%w: twin of %q has etag %q", ErrPrecondition, r.ID, twinETag(r.TwinVersion))
	}
	return nil
}

// PatchTwin merges patch.Tags and patch.Properties.Desired into id's twin
// (JSON merge patch: null deletes). Reported properties in patch are
// ignored. ifMatch is "", "*" or the twin etag (ErrPrecondition). The
// returned change is nil when the desired properties were not touched.
func (s *Store) PatchTwin(id string, patch iothub.Twin, ifMatch string) (iothub.Twin, *DesiredChange, error) {
	tags := patch.Tags
	desired := withoutSystem(patch.Properties.Desired)
	if err := checkObject("tags", tags, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkObject("desired", desired, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	now := s.now().UTC()
	var change *DesiredChange
	e, err := s.mutate(id, func(r *record) error {
		if err := checkTwinMatch(r, ifMatch); err != nil {
			return err
		}
		if len(tags) == 0 && len(desired) == 0 {
			return errSkip
		}
		if len(tags) > 0 {
			nt := mergeMap(r.Tags, tags)
			if err := checkSize("tags", nt, MaxTagsSize); err != nil {
				return err
			}
			r.Tags = nt
		}
		if len(desired) > 0 {
			r.DesiredVersion++
			nd := merge(r.Desired, desired, now, r.DesiredVersion)
			if err := checkSize("desired properties", nd.value(), MaxPropertiesSize); err != nil {
				return err
			}
			c, err := desiredChange(desired, r.DesiredVersion)
			if err != nil {
				return err
			}
			r.Desired, change = nd, c
		}
		r.TwinVersion++
		return nil
	})
	if err != nil {
		return iothub.Twin{}, nil, err
	}
	return s.twin(e.rec), change, nil
}

// ReplaceTwin replaces the tags and desired properties of id's twin with
// those of twin (missing sections become empty; nulls are dropped). Reported
// properties are ignored. The desired change sent to the device is the
// difference between the old and the new desired properties, with nulls for
// removed members; it is nil when desired did not change.
func (s *Store) ReplaceTwin(id string, twin iothub.Twin, ifMatch string) (iothub.Twin, *DesiredChange, error) {
	tags := stripNulls(twin.Tags)
	desired := stripNulls(withoutSystem(twin.Properties.Desired))
	if err := checkObject("tags", tags, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkObject("desired", desired, 0, ""); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkSize("tags", tags, MaxTagsSize); err != nil {
		return iothub.Twin{}, nil, err
	}
	if err := checkSize("desired properties", desired, MaxPropertiesSize); err != nil {
		return iothub.Twin{}, nil, err
	}
	now := s.now().UTC()
	var change *DesiredChange
	e, err := s.mutate(id, func(r *record) error {
		if err := checkTwinMatch(r, ifMatch); err != nil {
			return err
		}
		r.Tags = tags
		if d := diff(r.Desired, desired); len(d) > 0 {
			r.DesiredVersion++
			c, err := desiredChange(d, r.DesiredVersion)
			if err != nil {
				return err
			}
			r.Desired, change = merge(r.Desired, d, now, r.DesiredVersion), c
		}
		r.TwinVersion++
		return nil
	})
	if err != nil {
		return iothub.Twin{}, nil, err
	}
	return s.twin(e.rec), change, nil
}

// PatchReported merges a reported-properties patch sent by the device (a
// JSON object; null deletes; "$version" and "$metadata" members are
// ignored), bumps the reported $version and returns it. The change is
// committed before PatchReported returns. Invalid patches are
// *ValidationError.
func (s *Store) PatchReported(id string, patch []byte) (int64, error) {
	if len(patch) > MaxPatchSize {
		return 0, invalid("reported patch is %d bytes, over the limit of %d bytes", len(patch), MaxPatchSize)
	}
	m, err := DecodeObject(patch)
	if err != nil {
		return 0, err
	}
	m = withoutSystem(m)
	if err := checkObject("reported", m, 0, ""); err != nil {
		return 0, err
	}
	now := s.now().UTC()
	e, err := s.mutate(id, func(r *record) error {
		nr := merge(r.Reported, m, now, 0)
		if err := checkSize("reported properties", nr.value(), MaxPropertiesSize); err != nil {
			return err
		}
		r.Reported = nr
		r.ReportedVersion++
		r.TwinVersion++
		r.LastActivity = now
		return nil
	})
	if err != nil {
		return 0, err
	}
	return e.rec.ReportedVersion, nil
}

// ForEachTwin calls fn with the service view of every twin in device id
// order until fn returns false. It works on a snapshot taken at the start.
func (s *Store) ForEachTwin(fn func(iothub.Twin) bool) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	recs := make([]*record, 0, len(s.ids))
	for _, id := range s.ids {
		recs = append(recs, s.recs[id].rec)
	}
	s.mu.RUnlock()
	for _, r := range recs {
		if !fn(s.twin(r)) {
			break
		}
	}
	return nil
}
