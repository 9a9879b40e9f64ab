// Package configs applies the hub's automatic device and module
// configurations: every interval it evaluates each configuration's target
// condition over the device twins (module twins for moduleContent), picks
// for each twin the configuration that wins (highest priority; among equal
// priorities the one created last), writes that configuration's content
// into the twin's desired properties once, records the twin's status for
// every configuration that targets it (configurations.[[id]].status,
// Targeted or Applied) and counts the system and custom metrics.
//
// A twin that leaves a configuration's target, and every twin of a deleted
// configuration, loses that status; the desired properties the
// configuration wrote stay, as in IoT Hub.
package configs

import (
	"errors"
	"regexp"
	"strings"

	"github.com/dmctl/dmctl/hub/query"
	"github.com/dmctl/dmctl/internal/iothub"
)

// moduleTargetLead is the "from devices.modules where" that module
// configurations' target conditions start with in IoT Hub's documentation
// and the Azure CLI's examples.
var moduleTargetLead = regexp.MustCompile(`(?i)^from\s+devices\.modules\s+where\s+`)

// TargetQuery parses a target condition as the WHERE clause of a query
// over device twins (module twins when modules is set). "*" targets every
// twin. Errors are *query.SyntaxError with positions in cond.
func TargetQuery(cond string, modules bool) (*query.Query, error) {
	from := query.CollectionDevices
	if modules {
		from = query.CollectionModules
	}
	cond = strings.TrimSpace(cond)
	if modules {
		// IoT Hub documents module targets as "from devices.modules where COND".
		if m := moduleTargetLead.FindString(cond); m != "" {
			cond = strings.TrimSpace(cond[len(m):])
		}
	}
	if cond == "" {
		return nil, &query.SyntaxError{Pos: 1, Msg: "the target condition is empty (\"*\" targets every twin)"}
	}
	if cond == "*" {
		return query.Parse("SELECT * FROM " + from)
	}
	prefix := "SELECT * FROM " + from + " WHERE "
	q, err := query.Parse(prefix + cond)
	var se *query.SyntaxError
	if errors.As(err, &se) {
		pos := se.Pos - len(prefix)
		if pos < 1 {
			pos = 1
		}
		return nil, &query.SyntaxError{Pos: pos, Msg: se.Msg}
	}
	return q, err
}

// MetricQuery parses a custom metric query: a whole query over devices or
// devices.modules ("SELECT deviceId FROM devices WHERE ..."); its metric
// is the number of twins it selects.
func MetricQuery(text string) (*query.Query, error) {
	q, err := query.Parse(text)
	if err != nil {
		return nil, err
	}
	if c := q.Collection(); c != query.CollectionDevices && c != query.CollectionModules {
		return nil, &query.SyntaxError{Pos: 1, Msg: "a metric query selects FROM devices or devices.modules, not " + c}
	}
	return q, nil
}

// TestQueries checks a target condition and custom metric queries as POST
// /configurations/testQueries does: errors are reported in the answer, an
// empty string (and no metric entry) meaning valid.
func TestQueries(in iothub.ConfigurationQueriesTestInput) iothub.ConfigurationQueriesTestResponse {
	out := iothub.ConfigurationQueriesTestResponse{CustomMetricQueryErrors: map[string]string{}}
	if in.TargetCondition != "" {
		if _, err := TargetQuery(in.TargetCondition, false); err != nil {
			out.TargetConditionError = err.Error()
		}
	}
	for name, q := range in.CustomMetricQueries {
		if _, err := MetricQuery(q); err != nil {
			out.CustomMetricQueryErrors[name] = err.Error()
		}
	}
	return out
}

// Check validates the queries of a configuration before it is stored; the
// error names the query at fault.
func Check(c iothub.Configuration) error {
	if _, err := TargetQuery(c.TargetCondition, len(c.Content.ModuleContent) > 0); err != nil {
		return &QueryError{What: "targetCondition", Err: err}
	}
	if c.Metrics != nil {
		for name, q := range c.Metrics.Queries {
			if _, err := MetricQuery(q); err != nil {
				return &QueryError{What: "metric " + name, Err: err}
			}
		}
	}
	return nil
}

// QueryError is a configuration query that does not parse.
type QueryError struct {
	What string
	Err  error
}

func (e *QueryError) Error() string { return "configuration " + e.What + ": " + e.Err.Error() }
func (e *QueryError) Unwrap() error { return e.Err }
