package api

import (
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
)

// checkPathIDs wraps the handler of a route pattern so that ids in the path
// that no identity or job can have (bytes that are not UTF-8 once
// unescaped, NUL and other control characters) are answered 400
// ArgumentInvalid naming the id, before any lookup: such a request is bad
// input, not a missing device.
func (s *server) checkPathIDs(pattern string, next http.Handler) http.Handler {
	idName := "deviceId"
	if strings.Contains(pattern, "/jobs/") {
		idName = "jobId"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, v := range []struct{ wildcard, name string }{{"id", idName}, {"mid", "moduleId"}} {
			if err := pathID(v.name, r.PathValue(v.wildcard)); err != nil {
				s.failCode(w, iothub.CodeArgumentInvalid, err.Error())
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// pathID checks one unescaped path value; %q shows the bad bytes as escapes.
func pathID(name, v string) error {
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s %q in the request path is not valid UTF-8", name, v)
	}
	for _, c := range v {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%s %q in the request path contains the control character %U, which no id may contain", name, v, c)
		}
	}
	return nil
}
