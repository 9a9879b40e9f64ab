package sas

import (
	"crypto/hmac"
	"fmt"
	"strings"
	"time"
)

// Audience describes what the caller wants to access.
type Audience struct {
	Hosts []string // accepted host names, with or without port; compared case-insensitively, ports ignored
	Path  string   // e.g. "devices/d1" or "devices/d1/modules/m" or "" for hub-level
}

// Verify checks token as protocol.md §2.4 describes, in this order:
//
//  1. syntax (ParseToken) → ErrMalformed;
//  2. audience: the decoded sr is "host[:port][/path]"; host must equal one
//     of aud.Hosts ignoring case and ports, and path must be a segment prefix
//     of aud.Path ("devices/a" covers "devices/a/modules/m" but not
//     "devices/ab"; an sr without path covers everything) → ErrAudience;
//  3. signature: HMAC-SHA256 over the raw sr + "\n" + raw se with each
//     non-empty key in order (base64; primary then secondary), compared in
//     constant time against the %XX-decoded sig → ErrSignature. A key that is
//     not valid base64 is an error matching ErrMalformed;
//  4. expiry: se before now → ErrExpired (se equal to now is still valid).
//
// The parsed token is returned whenever the syntax is valid, also together
// with an audience, signature or expiry error, so callers can log
// t.Redacted().
func Verify(token string, aud Audience, now time.Time, keys ...string) (*Token, error) {
	t, err := ParseToken(token)
	if err != nil {
		return nil, err
	}
	if err := checkAudience(t.Resource, aud); err != nil {
		return t, err
	}
	tried := 0
	for i, key := range keys {
		if key == "" {
			continue
		}
		k, reason := decodeKeyReason(key)
		if reason != "" {
			return t, &keyError{what: fmt.Sprintf("verification key %d", i+1), reason: reason}
		}
		tried++
		want := signature(k, t.RawResource, t.RawExpiry)
		if hmac.Equal([]byte(want), []byte(t.Signature)) {
			if t.Expiry.Before(now) {
				return t, fmt.Errorf("%w at %s", ErrExpired, t.Expiry.Format(time.RFC3339))
			}
			return t, nil
		}
	}
	if tried == 0 {
		return t, fmt.Errorf("%w: no key to verify with", ErrSignature)
	}
	return t, ErrSignature
}

// checkAudience applies the host and segment-prefix rules.
func checkAudience(resource string, aud Audience) error {
	host, path, _ := strings.Cut(resource, "/")
	host = stripPort(host)
	ok := false
	for _, h := range aud.Hosts {
		if host != "" && strings.EqualFold(host, stripPort(h)) {
			ok = true
			break
		}
	}
	if !ok {
		return fmt.Errorf("%w: token host %q is not served here", ErrAudience, host)
	}
	path = strings.TrimSuffix(path, "/")
	want := strings.Trim(aud.Path, "/")
	if path == "" || path == want || strings.HasPrefix(want, path+"/") {
		return nil
	}
	return fmt.Errorf("%w: token is for %q, not for %q", ErrAudience, path, want)
}

// stripPort removes a ":port" suffix and IPv6 brackets.
func stripPort(h string) string {
	if strings.HasPrefix(h, "[") {
		if end := strings.IndexByte(h, ']'); end > 0 {
			return h[1:end]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.Count(h, ":") == 1 {
		return h[:i]
	}
	return h
}
