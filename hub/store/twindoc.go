package store

import (
	"maps"
	"reflect"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
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

// section renders desired or reported for the service view.
func section(n *node, version int64, desired bool) map[string]any {
	m := n.value().(map[string]any)
	m["$metadata"] = n.metadata(desired)
	m["$version"] = version
	return m
}
