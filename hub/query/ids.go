package query

import (
	"slices"
)

// DeviceIDs reports whether the WHERE clause limits the result to a finite
// set of device ids, and returns that set sorted and without duplicates.
// It recognises, at the top level of the condition, deviceId = 'x' (either
// side), deviceId IN ['a', 'b', ...], and AND chains in which at least one
// side is such a constraint (both sides: their intersection). The deviceId
// field name is matched case-insensitively, as in evaluation.
//
// The set is only a superset of the matching documents: callers must still
// apply Match to the documents they look up.
func (q *Query) DeviceIDs() (ids []string, ok bool) {
	if q.where == nil {
		return nil, false
	}
	set, ok := deviceIDSet(q.where)
	if !ok {
		return nil, false
	}
	slices.Sort(set)
	return slices.Compact(set), true
}

// deviceIDSet returns the ids that n can be true for, or ok=false when n does
// not constrain deviceId to a finite set.
func deviceIDSet(n node) ([]string, bool) {
	switch x := n.(type) {
	case *cmpNode:
		if x.op != opEq {
			return nil, false
		}
		if isDeviceIDPath(x.l) {
			return literalIDs(x.r)
		}
		if isDeviceIDPath(x.r) {
			return literalIDs(x.l)
		}
	case *inNode:
		if x.negate || !isDeviceIDPath(x.x) {
			return nil, false
		}
		var out []string
		for _, e := range x.list.elems {
			ids, ok := literalIDs(e)
			if !ok {
				return nil, false
			}
			out = append(out, ids...)
		}
		if out == nil {
			out = []string{}
		}
		return out, true
	case *andNode:
		l, lok := deviceIDSet(x.l)
		r, rok := deviceIDSet(x.r)
		switch {
		case lok && rok:
			out := []string{}
			for _, id := range l {
				if slices.Contains(r, id) {
					out = append(out, id)
				}
			}
			return out, true
		case lok:
			return l, true
		case rok:
			return r, true
		}
	}
	return nil, false
}

// isDeviceIDPath reports whether n is the bare top-level deviceId path.
func isDeviceIDPath(n node) bool {
	pe, ok := n.(*pathExpr)
	return ok && len(pe.segs) == 1 && !pe.segs[0].isIndex && pe.segs[0].segName() == "deviceId"
}

// literalIDs returns the id a literal can equal: a string literal is one id;
// any other literal (number, bool, null, undefined) can never equal a device
// id, so it contributes none. A non-literal is not a finite constraint.
func literalIDs(n node) ([]string, bool) {
	l, ok := n.(literal)
	if !ok {
		return nil, false
	}
	if s, ok := l.v.(string); ok {
		return []string{s}, true
	}
	return []string{}, true
}
