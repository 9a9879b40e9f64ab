package query

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

type parser struct {
	src   string
	toks  []token
	i     int
	depth int
}

// errAt builds a SyntaxError at byte offset off.
func (p *parser) errAt(off int, format string, args ...any) error {
	if off > len(p.src) {
		off = len(p.src)
	}
	return &SyntaxError{Pos: utf8.RuneCountInString(p.src[:off]) + 1, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) peekN(n int) token {
	if p.i+n < len(p.toks) {
		return p.toks[p.i+n]
	}
	return p.toks[len(p.toks)-1]
}

func (p *parser) advance() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

// isKw reports whether t is the keyword kw (case-insensitive).
func isKw(t token, kw string) bool { return t.kind == tIdent && strings.EqualFold(t.text, kw) }

func isPunct(t token, s string) bool { return t.kind == tPunct && t.text == s }

func (p *parser) unexpected(t token, expected string) error {
	return p.errAt(t.pos, "unexpected %s, expected %s", t.describe(), expected)
}

func (p *parser) expectKw(kw string) error {
	t := p.peek()
	if !isKw(t, kw) {
		return p.unexpected(t, strings.ToUpper(kw))
	}
	p.advance()
	return nil
}

func (p *parser) expectPunct(s string) error {
	t := p.peek()
	if !isPunct(t, s) {
		return p.unexpected(t, strconv.Quote(s))
	}
	p.advance()
	return nil
}

func (p *parser) parseQuery() (*Query, error) {
	q := &Query{}
	if p.peek().kind == tEOF {
		return nil, p.errAt(0, "empty query, expected SELECT")
	}
	if err := p.expectKw("select"); err != nil {
		return nil, err
	}
	if isKw(p.peek(), "top") {
		p.advance()
		t := p.peek()
		if t.kind != tNumber || t.num != math.Trunc(t.num) || t.num < 1 || t.num > math.MaxInt32 {
			return nil, p.unexpected(t, "a positive integer after TOP")
		}
		p.advance()
		q.top = int(t.num)
	}
	if isPunct(p.peek(), "*") {
		p.advance()
		q.selectAll = true
	} else {
		if err := p.parseSelectList(q); err != nil {
			return nil, err
		}
	}
	if err := p.expectKw("from"); err != nil {
		if t := p.peek(); !q.selectAll && len(q.items) > 0 {
			return nil, p.unexpected(t, `"," or FROM`)
		}
		return nil, err
	}
	if err := p.parseCollection(q); err != nil {
		return nil, err
	}
	if isKw(p.peek(), "where") {
		p.advance()
		w, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		q.where = w
	}
	if t := p.peek(); isKw(t, "group") {
		p.advance()
		if err := p.expectKw("by"); err != nil {
			return nil, err
		}
		pt := p.peek()
		if pt.kind != tIdent || isReserved(pt.text) {
			return nil, p.unexpected(pt, "a property path after GROUP BY")
		}
		g, err := p.parsePath()
		if err != nil {
			return nil, err
		}
		q.groupBy = g
		q.aggregate = true
	}
	if t := p.peek(); isKw(t, "order") {
		return nil, p.errAt(t.pos, "ORDER BY is not supported")
	}
	if t := p.peek(); t.kind != tEOF {
		exp := "end of query"
		switch {
		case q.where == nil && q.groupBy == nil:
			exp = "WHERE, GROUP BY or end of query"
		case q.groupBy == nil:
			exp = "an operator, GROUP BY or end of query"
		}
		return nil, p.unexpected(t, exp)
	}
	return q, p.bind(q)
}

func (p *parser) parseCollection(q *Query) error {
	t := p.peek()
	if t.kind != tIdent {
		return p.unexpected(t, "a collection (devices, devices.modules or devices.jobs)")
	}
	if !strings.EqualFold(t.text, "devices") {
		return p.errAt(t.pos, "unknown collection %q, expected devices, devices.modules or devices.jobs", t.text)
	}
	p.advance()
	q.collection = CollectionDevices
	if !isPunct(p.peek(), ".") {
		return nil
	}
	p.advance()
	s := p.peek()
	switch {
	case isKw(s, "modules"):
		q.collection = CollectionModules
	case isKw(s, "jobs"):
		q.collection = CollectionJobs
	case s.kind == tIdent:
		return p.errAt(t.pos, "unknown collection %q, expected devices, devices.modules or devices.jobs", "devices."+s.text)
	default:
		return p.unexpected(s, "modules or jobs after devices.")
	}
	p.advance()
	return nil
}

func (p *parser) parseSelectList(q *Query) error {
	for {
		it, err := p.parseSelectItem()
		if err != nil {
			return err
		}
		q.items = append(q.items, it)
		if !isPunct(p.peek(), ",") {
			return nil
		}
		p.advance()
	}
}

func (p *parser) parseSelectItem() (selectItem, error) {
	t := p.peek()
	var it selectItem
	it.pos = t.pos
	switch {
	case isPunct(t, "*"):
		return it, p.errAt(t.pos, "* cannot be combined with other select items")
	case t.kind == tIdent && isPunct(p.peekN(1), "("):
		kind, ok := aggNames[strings.ToLower(t.text)]
		if !ok {
			return it, p.errAt(t.pos, "unknown function %s in select list, expected a property path or COUNT(), AVG, SUM, MIN, MAX", t.text)
		}
		p.advance()
		p.advance()
		it.agg = kind
		if kind == aggCount {
			if a := p.peek(); !isPunct(a, ")") {
				return it, p.unexpected(a, `")" (COUNT takes no argument)`)
			}
		} else {
			a := p.peek()
			if a.kind != tIdent || isReserved(a.text) {
				return it, p.unexpected(a, "a property path")
			}
			path, err := p.parsePath()
			if err != nil {
				return it, err
			}
			it.path = path
		}
		if err := p.expectPunct(")"); err != nil {
			return it, err
		}
	case t.kind == tIdent && !isReserved(t.text):
		path, err := p.parsePath()
		if err != nil {
			return it, err
		}
		it.path = path
	default:
		return it, p.unexpected(t, "*, a property path or an aggregate in the select list")
	}
	if isKw(p.peek(), "as") {
		p.advance()
		a := p.peek()
		if a.kind != tIdent || isReserved(a.text) {
			return it, p.unexpected(a, "an alias name after AS")
		}
		p.advance()
		it.name = a.text
	}
	return it, nil
}

// parsePath parses ident ( "." ident | "[" string-or-index "]" )*.
func (p *parser) parsePath() (*pathExpr, error) {
	first := p.advance()
	pe := &pathExpr{pos: first.pos, segs: []pathSeg{{key: first.text}}}
	end := first.pos + len(first.text)
	for {
		t := p.peek()
		switch {
		case isPunct(t, "."):
			p.advance()
			s := p.peek()
			if s.kind != tIdent {
				return nil, p.unexpected(s, "a property name after \".\"")
			}
			p.advance()
			key := s.text
			if s.str != "" { // [[name]]
				key = s.str
			}
			pe.segs = append(pe.segs, pathSeg{key: key})
			end = s.pos + len(s.text)
		case isPunct(t, "["):
			p.advance()
			s := p.peek()
			switch {
			case s.kind == tString:
				pe.segs = append(pe.segs, pathSeg{key: s.str})
			case s.kind == tNumber && s.num == math.Trunc(s.num) && s.num >= 0 && s.num <= math.MaxInt32:
				pe.segs = append(pe.segs, pathSeg{index: int(s.num), isIndex: true})
			default:
				return nil, p.unexpected(s, "a quoted property name or an array index inside [ ]")
			}
			p.advance()
			c := p.peek()
			if !isPunct(c, "]") {
				return nil, p.unexpected(c, `"]"`)
			}
			p.advance()
			end = c.pos + 1
		default:
			pe.text = p.src[pe.pos:end]
			return pe, nil
		}
	}
}

// Expressions, lowest precedence first: OR, AND, NOT, comparison / IN / NIN,
// + -, * / %, unary minus, primary.

func (p *parser) enter(t token) error {
	p.depth++
	if p.depth > maxDepth {
		return p.errAt(t.pos, "expression nested too deeply (more than %d levels)", maxDepth)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

func (p *parser) parseExpr() (node, error) {
	if err := p.enter(p.peek()); err != nil {
		return nil, err
	}
	defer p.leave()
	left, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for isKw(p.peek(), "or") {
		p.advance()
		right, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		left = &orNode{left, right}
	}
	return left, nil
}

func (p *parser) parseAnd() (node, error) {
	left, err := p.parseNot()
	if err != nil {
		return nil, err
	}
	for isKw(p.peek(), "and") {
		p.advance()
		right, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		left = &andNode{left, right}
	}
	return left, nil
}

func (p *parser) parseNot() (node, error) {
	if t := p.peek(); isKw(t, "not") {
		if err := p.enter(t); err != nil {
			return nil, err
		}
		defer p.leave()
		p.advance()
		x, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		return &notNode{x}, nil
	}
	return p.parseCmp()
}

var cmpOps = map[string]cmpOp{
	"=": opEq, "!=": opNe, "<>": opNe, "<": opLt, ">": opGt, "<=": opLe, ">=": opGe,
}

func (p *parser) parseCmp() (node, error) {
	left, err := p.parseAdd()
	if err != nil {
		return nil, err
	}
	t := p.peek()
	if t.kind == tPunct {
		if op, ok := cmpOps[t.text]; ok {
			p.advance()
			right, err := p.parseAdd()
			if err != nil {
				return nil, err
			}
			return &cmpNode{op: op, l: left, r: right}, nil
		}
	}
	negate := false
	switch {
	case isKw(t, "in"):
	case isKw(t, "nin"):
		negate = true
	case isKw(t, "not") && isKw(p.peekN(1), "in"):
		p.advance()
		negate = true
	default:
		return left, nil
	}
	p.advance()
	a := p.peek()
	if !isPunct(a, "[") {
		return nil, p.unexpected(a, "an array such as ['a', 'b'] after "+strings.ToUpper(t.text))
	}
	arr, err := p.parsePrimary()
	if err != nil {
		return nil, err
	}
	return &inNode{x: left, list: arr.(*arrayNode), negate: negate}, nil
}

func (p *parser) parseAdd() (node, error) {
	left, err := p.parseMul()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		if !isPunct(t, "+") && !isPunct(t, "-") {
			return left, nil
		}
		p.advance()
		right, err := p.parseMul()
		if err != nil {
			return nil, err
		}
		left = &arithNode{op: t.text[0], l: left, r: right}
	}
}

func (p *parser) parseMul() (node, error) {
	left, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		if !isPunct(t, "*") && !isPunct(t, "/") && !isPunct(t, "%") {
			return left, nil
		}
		p.advance()
		right, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		left = &arithNode{op: t.text[0], l: left, r: right}
	}
}

func (p *parser) parseUnary() (node, error) {
	t := p.peek()
	if !isPunct(t, "-") && !isPunct(t, "+") {
		return p.parsePrimary()
	}
	if err := p.enter(t); err != nil {
		return nil, err
	}
	defer p.leave()
	p.advance()
	x, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	if t.text == "+" {
		return &arithNode{op: '+', l: literal{0.0}, r: x}, nil
	}
	if l, ok := x.(literal); ok {
		if f, ok := l.v.(float64); ok {
			return literal{-f}, nil
		}
	}
	return &arithNode{op: '-', l: literal{0.0}, r: x}, nil
}

func (p *parser) parsePrimary() (node, error) {
	t := p.peek()
	switch t.kind {
	case tNumber:
		p.advance()
		return literal{t.num}, nil
	case tString:
		p.advance()
		return literal{t.str}, nil
	case tEOF:
		return nil, p.unexpected(t, "a value or property path")
	case tPunct:
		switch t.text {
		case "(":
			p.advance()
			x, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			if c := p.peek(); !isPunct(c, ")") {
				return nil, p.unexpected(c, `")" to close "(" at position `+strconv.Itoa(utf8.RuneCountInString(p.src[:t.pos])+1))
			}
			p.advance()
			return x, nil
		case "[":
			if err := p.enter(t); err != nil {
				return nil, err
			}
			defer p.leave()
			p.advance()
			arr := &arrayNode{}
			if isPunct(p.peek(), "]") {
				p.advance()
				return arr, nil
			}
			for {
				x, err := p.parseAdd()
				if err != nil {
					return nil, err
				}
				arr.elems = append(arr.elems, x)
				c := p.peek()
				if isPunct(c, "]") {
					p.advance()
					return arr, nil
				}
				if !isPunct(c, ",") {
					return nil, p.unexpected(c, `"," or "]" in array`)
				}
				p.advance()
			}
		}
		return nil, p.unexpected(t, "a value or property path")
	}
	// identifier: literal keyword, function call or path
	switch strings.ToLower(t.text) {
	case "true":
		p.advance()
		return literal{true}, nil
	case "false":
		p.advance()
		return literal{false}, nil
	case "null":
		p.advance()
		return literal{nil}, nil
	case "undefined":
		p.advance()
		return literal{undefined}, nil
	}
	if isReserved(t.text) {
		return nil, p.unexpected(t, "a value or property path")
	}
	if isPunct(p.peekN(1), "(") {
		return p.parseCall()
	}
	return p.parsePath()
}

func (p *parser) parseCall() (node, error) {
	t := p.advance()
	name := strings.ToLower(t.text)
	if _, ok := aggNames[name]; ok {
		return nil, p.errAt(t.pos, "aggregate %s is only allowed in the select list", strings.ToUpper(t.text))
	}
	if name != "is_defined" {
		return nil, p.errAt(t.pos, "unknown function %s (twin queries support IS_DEFINED)", t.text)
	}
	p.advance() // "("
	a := p.peek()
	if a.kind != tIdent || isReserved(a.text) {
		return nil, p.unexpected(a, "a property path in IS_DEFINED")
	}
	path, err := p.parsePath()
	if err != nil {
		return nil, err
	}
	if err := p.expectPunct(")"); err != nil {
		return nil, err
	}
	return &isDefinedNode{path}, nil
}

// bind resolves paths against the collection, checks the select list and names
// the output columns.
func (p *parser) bind(q *Query) error {
	var paths []*pathExpr
	collect(q.where, &paths)
	for _, it := range q.items {
		if it.path != nil {
			paths = append(paths, it.path)
		}
	}
	if q.groupBy != nil {
		paths = append(paths, q.groupBy)
	}
	for _, pe := range paths {
		pe.bind(q.collection)
	}
	if q.selectAll {
		if q.groupBy != nil {
			return p.errAt(q.groupBy.pos, "GROUP BY cannot be used with SELECT *")
		}
		return nil
	}
	if q.collection == CollectionJobs {
		return p.errAt(q.items[0].pos, "devices.jobs supports only SELECT *")
	}
	for _, it := range q.items {
		if it.agg != aggNone {
			q.aggregate = true
		}
	}
	seen := map[string]bool{}
	unnamed := 0
	for i := range q.items {
		it := &q.items[i]
		if q.aggregate && it.agg == aggNone {
			if q.groupBy == nil {
				return p.errAt(it.pos, "%s must be in GROUP BY when the select list has aggregates", it.path.text)
			}
			if !it.path.same(q.groupBy) {
				return p.errAt(it.pos, "%s is not the GROUP BY path %s", it.path.text, q.groupBy.text)
			}
		}
		if it.name == "" {
			if it.agg == aggNone {
				it.name = it.path.outputName()
			}
			if it.name == "" {
				unnamed++
				it.name = "$" + strconv.Itoa(unnamed)
			}
		}
		if seen[it.name] {
			return p.errAt(it.pos, "duplicate output name %q in select list (use AS to rename)", it.name)
		}
		seen[it.name] = true
	}
	return nil
}
