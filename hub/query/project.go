package query

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// group accumulates the aggregates of one GROUP BY value.
type group struct {
	key   any // raw group value (undefined when the path is missing)
	count int
	accs  []acc
}

type acc struct {
	n        int
	sum      float64
	min, max float64
}

func (q *Query) projectGroups(docs []map[string]any) []any {
	var order []*group
	byKey := map[string]*group{}
	newGroup := func(key any) *group {
		g := &group{key: key, accs: make([]acc, len(q.items))}
		order = append(order, g)
		return g
	}
	var single *group
	if q.groupBy == nil {
		single = newGroup(undefined)
	}
	for _, d := range docs {
		g := single
		if g == nil {
			raw := q.groupBy.lookup(d)
			k := canonKey(raw)
			if g = byKey[k]; g == nil {
				g = newGroup(raw)
				byKey[k] = g
			}
		}
		g.count++
		for i, it := range q.items {
			if it.agg == aggNone || it.agg == aggCount {
				continue
			}
			f, ok := it.path.eval(d).(float64)
			if !ok {
				continue
			}
			a := &g.accs[i]
			if a.n == 0 {
				a.min, a.max = f, f
			}
			a.n++
			a.sum += f
			a.min = math.Min(a.min, f)
			a.max = math.Max(a.max, f)
		}
	}
	out := make([]any, 0, len(order))
	for _, g := range order {
		row := make(map[string]any, len(q.items))
		for i, it := range q.items {
			a := g.accs[i]
			switch it.agg {
			case aggNone:
				if g.key != undefined {
					row[it.name] = g.key
				}
			case aggCount:
				row[it.name] = g.count
			case aggSum:
				row[it.name] = a.sum
			case aggAvg:
				if a.n > 0 {
					row[it.name] = a.sum / float64(a.n)
				}
			case aggMin:
				if a.n > 0 {
					row[it.name] = a.min
				}
			case aggMax:
				if a.n > 0 {
					row[it.name] = a.max
				}
			}
		}
		out = append(out, row)
	}
	return out
}

// canonKey renders a JSON value so that equal values (numbers compared by
// value, objects regardless of key order) get equal keys.
func canonKey(v any) string {
	var b strings.Builder
	writeKey(&b, v)
	return b.String()
}

func writeKey(b *strings.Builder, v any) {
	switch x := normalize(v).(type) {
	case undefinedType:
		b.WriteString("u")
	case nil:
		b.WriteString("z")
	case bool:
		if x {
			b.WriteString("t")
		} else {
			b.WriteString("f")
		}
	case float64:
		b.WriteString("n")
		b.WriteString(strconv.FormatFloat(x, 'g', -1, 64))
	case string:
		b.WriteString("s")
		b.WriteString(strconv.Quote(x))
	case []any:
		b.WriteString("[")
		for _, e := range x {
			writeKey(b, e)
			b.WriteString(",")
		}
		b.WriteString("]")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("{")
		for _, k := range keys {
			b.WriteString(strconv.Quote(k))
			b.WriteString(":")
			writeKey(b, x[k])
			b.WriteString(",")
		}
		b.WriteString("}")
	default:
		fmt.Fprintf(b, "?%T:%v", x, x)
	}
}
