// Package query implements the subset of the IoT Hub query language that the
// local hub serves on POST /devices/query: SELECT ... FROM devices |
// devices.modules | devices.jobs [WHERE ...] [GROUP BY ...], evaluated over twin
// (or job-row) documents decoded from JSON.
//
// Evaluation follows the documented IoT Hub rules: a missing path is undefined,
// comparisons are defined only between primitive values of the same type, any
// comparison involving undefined is undefined, and a row is selected only when
// the WHERE condition is exactly true. AND, OR and NOT use three-valued logic
// (false AND undefined = false, true OR undefined = true, NOT undefined =
// undefined).
//
// Grammar (keywords case-insensitive):
//
//	query   = SELECT [TOP n] ( "*" | item {"," item} ) FROM coll [WHERE expr] [GROUP BY path]
//	item    = ( path | COUNT "(" ")" | (AVG|SUM|MIN|MAX) "(" path ")" ) [AS name]
//	coll    = devices | devices.modules | devices.jobs
//	expr    = and {OR and};  and = not {AND not};  not = NOT not | cmp
//	cmp     = sum [ ("="|"!="|"<>"|"<"|">"|"<="|">=") sum | (IN|NIN|NOT IN) array ]
//	sum     = prod {("+"|"-") prod};  prod = unary {("*"|"/"|"%") unary};  unary = ("-"|"+") unary | primary
//	primary = literal | path | IS_DEFINED "(" path ")" | "(" expr ")" | array
//	array   = "[" [sum {"," sum}] "]"
//	path    = name { "." name | "[" string "]" | "[" index "]" }
//	literal = 'string' | "string" | number | 0xHEX | true | false | null | undefined
//
// Identity fields (deviceId, status, connectionState, ...) are matched
// case-insensitively at the top level of a path, as are the desired/reported
// keys under properties; twin property keys are case-sensitive. In
// devices.jobs (and devices.modules) queries a leading "devices.jobs."
// ("devices.modules.") prefix is stripped from paths.
package query

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxLength is the longest accepted query text, in characters.
const MaxLength = 8192

// maxDepth bounds expression nesting so that hostile input cannot exhaust the stack.
const maxDepth = 200

// SyntaxError reports a query that cannot be parsed. Pos is the 1-based
// character position of the offending token in the query text.
type SyntaxError struct {
	Pos int
	Msg string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("syntax error at position %d: %s", e.Pos, e.Msg)
}

// Collection names.
const (
	CollectionDevices = "devices"
	CollectionModules = "devices.modules"
	CollectionJobs    = "devices.jobs"
)

// Query is a parsed query. It is immutable and safe for concurrent use.
type Query struct {
	text       string
	collection string
	top        int
	selectAll  bool
	items      []selectItem
	where      node
	groupBy    *pathExpr
	aggregate  bool // aggregates or GROUP BY present: Project returns grouped rows
}

type aggKind int

const (
	aggNone aggKind = iota
	aggCount
	aggSum
	aggAvg
	aggMin
	aggMax
)

var aggNames = map[string]aggKind{
	"count": aggCount, "sum": aggSum, "avg": aggAvg, "min": aggMin, "max": aggMax,
}

// selectItem is one entry of a projection list.
type selectItem struct {
	pos  int
	name string    // output key
	agg  aggKind   // aggNone for a plain path
	path *pathExpr // projected path, or the aggregate's argument (nil for COUNT())
}

// Parse parses query text. Errors are *SyntaxError.
func Parse(q string) (*Query, error) {
	if n := utf8.RuneCountInString(q); n > MaxLength {
		return nil, &SyntaxError{Pos: MaxLength + 1, Msg: fmt.Sprintf("query is %d characters long, over the limit of %d characters", n, MaxLength)}
	}
	p := &parser{src: q}
	lx := &lexer{src: q, errf: p.errAt}
	toks, err := lx.all()
	if err != nil {
		return nil, err
	}
	p.toks = toks
	query, err := p.parseQuery()
	if err != nil {
		return nil, err
	}
	query.text = q
	return query, nil
}

// String returns the query text as given to Parse.
func (q *Query) String() string { return q.text }

// Collection returns "devices", "devices.modules" or "devices.jobs".
func (q *Query) Collection() string { return q.collection }

// Top returns the n of SELECT TOP n, or 0 when the query has no TOP.
func (q *Query) Top() int { return q.top }

// IsSelectAll reports whether the query is SELECT * (whole documents are returned).
func (q *Query) IsSelectAll() bool { return q.selectAll }

// ItemType returns the x-ms-item-type for the query's results: "twin" for
// SELECT * over devices or devices.modules, "deviceJob" for devices.jobs, and
// "raw" for projections and aggregates.
func (q *Query) ItemType() string {
	switch {
	case q.collection == CollectionJobs:
		return "deviceJob"
	case q.selectAll:
		return "twin"
	}
	return "raw"
}

// Match reports whether doc satisfies the WHERE clause (always true without one).
// doc is a twin (or, for devices.jobs, a job-row) JSON object as decoded by
// encoding/json, with or without UseNumber.
func (q *Query) Match(doc map[string]any) bool {
	if q.where == nil {
		return true
	}
	v := q.where.eval(doc)
	b, ok := v.(bool)
	return ok && b
}

// Project turns the documents selected by Match into result items. The caller
// passes every matching document in result order; Project applies TOP to the
// rows it returns.
//
//   - SELECT *: the documents themselves.
//   - SELECT path [AS alias], ...: one object per document. Keys are the alias
//     or the last path segment (identity fields in canonical casing, e.g.
//     deviceId); undefined values are left out, null values kept.
//   - aggregates (COUNT(), SUM/AVG/MIN/MAX(path)) without GROUP BY: one row over
//     all documents, also when there are none.
//   - GROUP BY path: one row per distinct value of path, in order of first
//     appearance. COUNT is an int; SUM, AVG, MIN and MAX are float64 over the
//     numeric values (SUM of none is 0, AVG/MIN/MAX of none are left out).
//     Unaliased aggregates are named $1, $2, ...
func (q *Query) Project(docs []map[string]any) ([]any, error) {
	var out []any
	switch {
	case q.selectAll:
		out = make([]any, 0, len(docs))
		for _, d := range docs {
			out = append(out, d)
		}
	case q.aggregate:
		out = q.projectGroups(docs)
	default:
		out = make([]any, 0, len(docs))
		for _, d := range docs {
			row := make(map[string]any, len(q.items))
			for _, it := range q.items {
				if v := it.path.lookup(d); v != undefined {
					row[it.name] = v
				}
			}
			out = append(out, row)
		}
	}
	if q.top > 0 && len(out) > q.top {
		out = out[:q.top]
	}
	return out, nil
}

// canonical names of identity (non-property) fields of twins and job rows,
// matched case-insensitively at the top level of a path.
var identityFields = func() map[string]string {
	m := map[string]string{}
	for _, f := range []string{
		"deviceId", "moduleId", "etag", "deviceEtag", "version", "status",
		"statusReason", "statusUpdateTime", "statusUpdatedTime", "connectionState",
		"connectionStateUpdatedTime", "lastActivityTime", "cloudToDeviceMessageCount",
		"authenticationType", "x509Thumbprint", "modelId", "capabilities", "tags",
		"properties", "generationId", "deviceScope", "parentScopes",
		// job rows (devices.jobs)
		"jobId", "type", "queryCondition", "createdDateTimeUtc", "startTimeUtc",
		"endTimeUtc", "lastUpdatedDateTimeUtc", "maxExecutionTimeInSeconds",
		"outcome", "error", "methodName", "parameters", "updateTwin",
	} {
		m[strings.ToLower(f)] = f
	}
	return m
}()
