package query

import (
	"encoding/json"
	"math"
	"strings"
)

// undefinedType is the value of a missing path and of the undefined literal.
type undefinedType struct{}

var undefined any = undefinedType{}

// node is an expression; eval returns undefined, nil (null), bool, float64,
// string, map[string]any or []any.
type node interface {
	eval(doc map[string]any) any
}

type literal struct{ v any }

func (l literal) eval(map[string]any) any { return l.v }

type pathSeg struct {
	key     string
	alt     string // canonical key tried when key is absent (identity fields)
	index   int
	isIndex bool
}

type pathExpr struct {
	pos  int
	text string
	segs []pathSeg
}

func (pe *pathExpr) eval(doc map[string]any) any { return normalize(pe.lookup(doc)) }

// bind strips a "devices.jobs." / "devices.modules." prefix matching the
// collection and sets the case-insensitive fallbacks for identity fields.
func (pe *pathExpr) bind(collection string) {
	if collection != CollectionDevices && len(pe.segs) > 2 {
		prefix := strings.Split(collection, ".")
		if !pe.segs[0].isIndex && !pe.segs[1].isIndex &&
			strings.EqualFold(pe.segs[0].key, prefix[0]) && strings.EqualFold(pe.segs[1].key, prefix[1]) {
			pe.segs = pe.segs[2:]
		}
	}
	s0 := &pe.segs[0]
	if s0.isIndex {
		return
	}
	if c, ok := identityFields[strings.ToLower(s0.key)]; ok && c != s0.key {
		s0.alt = c
	}
	if len(pe.segs) > 1 && strings.EqualFold(s0.key, "properties") && !pe.segs[1].isIndex {
		s1 := &pe.segs[1]
		for _, c := range []string{"desired", "reported"} {
			if strings.EqualFold(s1.key, c) && s1.key != c {
				s1.alt = c
			}
		}
	}
}

// lookup returns the raw value at the path, or undefined.
func (pe *pathExpr) lookup(doc map[string]any) any {
	var cur any = doc
	for _, s := range pe.segs {
		if s.isIndex {
			arr, ok := cur.([]any)
			if !ok || s.index >= len(arr) {
				return undefined
			}
			cur = arr[s.index]
			continue
		}
		m, ok := cur.(map[string]any)
		if !ok {
			return undefined
		}
		v, ok := m[s.key]
		if !ok && s.alt != "" {
			v, ok = m[s.alt]
		}
		if !ok {
			return undefined
		}
		cur = v
	}
	return cur
}

// segName is the canonical spelling of a key segment.
func (s pathSeg) segName() string {
	if s.alt != "" {
		return s.alt
	}
	return s.key
}

// outputName is the projection key for the path: its last segment, or "" when
// that is an array index.
func (pe *pathExpr) outputName() string {
	last := pe.segs[len(pe.segs)-1]
	if last.isIndex {
		return ""
	}
	return last.segName()
}

// same reports whether two bound paths address the same value.
func (pe *pathExpr) same(o *pathExpr) bool {
	if len(pe.segs) != len(o.segs) {
		return false
	}
	for i, s := range pe.segs {
		t := o.segs[i]
		if s.isIndex != t.isIndex || s.index != t.index || s.segName() != t.segName() {
			return false
		}
	}
	return true
}

// collect gathers the paths used in an expression.
func collect(n node, out *[]*pathExpr) {
	switch x := n.(type) {
	case *pathExpr:
		*out = append(*out, x)
	case *isDefinedNode:
		*out = append(*out, x.path)
	case *andNode:
		collect(x.l, out)
		collect(x.r, out)
	case *orNode:
		collect(x.l, out)
		collect(x.r, out)
	case *notNode:
		collect(x.x, out)
	case *cmpNode:
		collect(x.l, out)
		collect(x.r, out)
	case *arithNode:
		collect(x.l, out)
		collect(x.r, out)
	case *inNode:
		collect(x.x, out)
		collect(x.list, out)
	case *arrayNode:
		for _, e := range x.elems {
			collect(e, out)
		}
	}
}

// normalize turns any numeric representation into float64.
func normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		if err != nil && !math.IsInf(f, 0) {
			return undefined
		}
		return f
	case float32:
		return float64(x)
	case int:
		return float64(x)
	case int8:
		return float64(x)
	case int16:
		return float64(x)
	case int32:
		return float64(x)
	case int64:
		return float64(x)
	case uint:
		return float64(x)
	case uint8:
		return float64(x)
	case uint16:
		return float64(x)
	case uint32:
		return float64(x)
	case uint64:
		return float64(x)
	}
	return v
}

// truth maps a value to three-valued logic: true, false or undefined.
func truth(v any) any {
	if b, ok := v.(bool); ok {
		return b
	}
	return undefined
}

type andNode struct{ l, r node }

func (n *andNode) eval(doc map[string]any) any {
	l := truth(n.l.eval(doc))
	if l == false {
		return false
	}
	r := truth(n.r.eval(doc))
	if r == false {
		return false
	}
	if l == true && r == true {
		return true
	}
	return undefined
}

type orNode struct{ l, r node }

func (n *orNode) eval(doc map[string]any) any {
	l := truth(n.l.eval(doc))
	if l == true {
		return true
	}
	r := truth(n.r.eval(doc))
	if r == true {
		return true
	}
	if l == false && r == false {
		return false
	}
	return undefined
}

type notNode struct{ x node }

func (n *notNode) eval(doc map[string]any) any {
	if b, ok := truth(n.x.eval(doc)).(bool); ok {
		return !b
	}
	return undefined
}

type cmpOp int

const (
	opEq cmpOp = iota
	opNe
	opLt
	opGt
	opLe
	opGe
)

type cmpNode struct {
	op   cmpOp
	l, r node
}

func (n *cmpNode) eval(doc map[string]any) any {
	return compare(n.op, n.l.eval(doc), n.r.eval(doc))
}

// compare applies op to two normalized values: defined only for primitives of
// the same type; booleans and null support only = and !=.
func compare(op cmpOp, a, b any) any {
	switch x := a.(type) {
	case nil:
		if b != nil {
			return undefined
		}
		switch op {
		case opEq:
			return true
		case opNe:
			return false
		}
	case bool:
		y, ok := b.(bool)
		if !ok {
			return undefined
		}
		switch op {
		case opEq:
			return x == y
		case opNe:
			return x != y
		}
	case float64:
		y, ok := b.(float64)
		if !ok {
			return undefined
		}
		return order(op, x, y)
	case string:
		y, ok := b.(string)
		if !ok {
			return undefined
		}
		return order(op, x, y)
	}
	return undefined
}

func order[T float64 | string](op cmpOp, x, y T) any {
	switch op {
	case opEq:
		return x == y
	case opNe:
		return x != y
	case opLt:
		return x < y
	case opGt:
		return x > y
	case opLe:
		return x <= y
	case opGe:
		return x >= y
	}
	return undefined
}

type arithNode struct {
	op   byte
	l, r node
}

func (n *arithNode) eval(doc map[string]any) any {
	x, ok1 := n.l.eval(doc).(float64)
	y, ok2 := n.r.eval(doc).(float64)
	if !ok1 || !ok2 {
		return undefined
	}
	var v float64
	switch n.op {
	case '+':
		v = x + y
	case '-':
		v = x - y
	case '*':
		v = x * y
	case '/':
		if y == 0 {
			return undefined
		}
		v = x / y
	case '%':
		if y == 0 {
			return undefined
		}
		v = math.Mod(x, y)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return undefined
	}
	return v
}

type arrayNode struct{ elems []node }

func (n *arrayNode) eval(doc map[string]any) any {
	out := make([]any, len(n.elems))
	for i, e := range n.elems {
		out[i] = e.eval(doc)
	}
	return out
}

// inNode is x IN [...] (or NIN / NOT IN when negate): true when x equals an
// element, false otherwise; undefined when x is undefined or not a primitive.
type inNode struct {
	x      node
	list   *arrayNode
	negate bool
}

func (n *inNode) eval(doc map[string]any) any {
	x := n.x.eval(doc)
	switch x.(type) {
	case nil, bool, float64, string:
	default:
		return undefined
	}
	found := false
	for _, e := range n.list.elems {
		if compare(opEq, x, e.eval(doc)) == true {
			found = true
			break
		}
	}
	return found != n.negate
}

// isDefinedNode is IS_DEFINED(path): true when the path exists, also if its value is null.
type isDefinedNode struct{ path *pathExpr }

func (n *isDefinedNode) eval(doc map[string]any) any {
	return n.path.lookup(doc) != undefined
}
