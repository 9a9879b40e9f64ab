package service

import (
	"net/url"
	"testing"

	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

// TestRequestURL: the URL of a request without query parameters is what
// the general construction (url.URL with RawPath and an encoded query)
// gives, for ids that need escaping too.
func TestRequestURL(t *testing.T) {
	for _, host := range []string{"hub.example", "localhost:8883", "[::1]:8883"} {
		cs, err := sas.ParseService("HostName=" + host + ";SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA")
		if err != nil {
			t.Fatal(err)
		}
		c, err := New(cs)
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{twinPath("d1", "") + "/methods", twinPath("a b/c%d?é", "m#1") + "/methods", "/devices", "/twins/%zz"} {
			u := c.base
			u.Path = path
			u.RawQuery = url.Values{"api-version": {iothub.APIVersion}}.Encode()
			u.RawPath = path
			if p, err := url.PathUnescape(path); err == nil {
				u.Path = p
			}
			if got, want := c.url(request{path: path}), u.String(); got != want {
				t.Errorf("host %s, path %q: url %q, want %q", host, path, got, want)
			}
		}
	}
}
