package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// TokenPrefix starts every SAS token; exactly one space follows it.
const TokenPrefix = "SharedAccessSignature "

// Sign returns a SAS token for resource, the unencoded audience
// ("host/devices/d"), signed with key (padded standard base64) and expiring
// at expiry (whole seconds, rounded down). keyName is the policy name ("" for
// device and module keys); when set the token carries skn. The result is
// "SharedAccessSignature sr=..&sig=..&se=..[&skn=..]" (protocol.md §2.2):
// sr is the whole resource percent-encoded with uppercase hex ('/' and ':'
// included), the string to sign is sr + "\n" + se.
func Sign(key, resource, keyName string, expiry time.Time) (string, error) {
	k, reason := decodeKeyReason(key)
	if reason != "" {
		return "", &keyError{what: "key", reason: reason}
	}
	if resource == "" {
		return "", malformedToken("empty resource")
	}
	se := expiry.Unix()
	if se < 0 {
		return "", malformedToken("expiry before 1970")
	}
	sr := escape(resource)
	rawSe := strconv.FormatInt(se, 10)
	t := &Token{RawResource: sr, Signature: signature(k, sr, rawSe), RawExpiry: rawSe, KeyName: keyName}
	return t.String(), nil
}

// signature computes base64(HMAC-SHA256(key, rawSr + "\n" + rawSe)).
func signature(key []byte, rawSr, rawSe string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(rawSr))
	m.Write([]byte{'\n'})
	m.Write([]byte(rawSe))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Token is a parsed SAS token.
type Token struct {
	Resource    string    // percent-decoded sr
	RawResource string    // sr exactly as received
	Signature   string    // %XX-decoded sig (base64 text)
	Expiry      time.Time // from se (UTC)
	RawExpiry   string    // se exactly as received
	KeyName     string    // skn (percent-decoded), "" if absent
}

// ParseToken parses "SharedAccessSignature sr=..&sig=..&se=..[&skn=..]" with
// the fields in any order. Values are decoded with %XX-only unescaping: a
// '+' stays a '+'. Fields other than sr, sig, se and skn are ignored.
// Refusals (all match ErrMalformed):
//
//   - no "SharedAccessSignature " prefix (case-sensitive, one space);
//   - white space, control or non-ASCII bytes after the prefix;
//   - an empty field (two '&' in a row, leading or trailing '&');
//   - a field without '=' or with an empty name;
//   - sr, sig, se or skn given twice, or given with an empty value;
//   - sr, sig or se missing;
//   - a '%' not followed by two hex digits in sr, sig or skn;
//   - se that is not a decimal number of at most 18 digits.
func ParseToken(s string) (*Token, error) {
	if s == "" {
		return nil, malformedToken("empty")
	}
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok {
		return nil, malformedToken("missing %q prefix", TokenPrefix)
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] <= ' ' || rest[i] >= 0x7f {
			return nil, malformedToken("white space, control or non-ASCII character at offset %d", len(TokenPrefix)+i)
		}
	}
	var t Token
	var sr, sig, se, skn bool
	for field := range strings.SplitSeq(rest, "&") {
		if field == "" {
			return nil, malformedToken("empty field")
		}
		name, value, ok := strings.Cut(field, "=")
		if !ok {
			return nil, malformedToken("field without '='")
		}
		var seen *bool
		switch name {
		case "":
			return nil, malformedToken("field with an empty name")
		case "sr":
			seen = &sr
		case "sig":
			seen = &sig
		case "se":
			seen = &se
		case "skn":
			seen = &skn
		default:
			continue
		}
		if *seen {
			return nil, malformedToken("%s given more than once", name)
		}
		*seen = true
		if value == "" {
			return nil, malformedToken("%s is empty", name)
		}
		var err error
		switch name {
		case "sr":
			t.RawResource = value
			t.Resource, err = unescape(value)
		case "sig":
			t.Signature, err = unescape(value)
		case "skn":
			t.KeyName, err = unescape(value)
		case "se":
			t.RawExpiry = value
			if len(value) > 18 || strings.TrimLeft(value, "0123456789") != "" {
				return nil, malformedToken("se is not a decimal number of seconds")
			}
			n, _ := strconv.ParseInt(value, 10, 64)
			t.Expiry = time.Unix(n, 0).UTC()
		}
		if err != nil {
			return nil, malformedToken("%s has a bad %%-escape", name)
		}
	}
	switch {
	case !sr:
		return nil, malformedToken("missing sr")
	case !sig:
		return nil, malformedToken("missing sig")
	case !se:
		return nil, malformedToken("missing se")
	}
	return &t, nil
}

// String returns the token in canonical form, sr, sig, se[, skn], with sr and
// se exactly as received and sig and skn percent-encoded. It contains the
// signature: it is a secret. ParseToken(t.String()) yields an equal Token.
func (t *Token) String() string { return t.format(escape(t.Signature)) }

// Redacted returns the canonical form with the signature replaced by "***";
// it is safe to print and log.
func (t *Token) Redacted() string { return t.format("***") }

func (t *Token) format(sig string) string {
	var b strings.Builder
	b.WriteString(TokenPrefix)
	b.WriteString("sr=")
	b.WriteString(t.RawResource)
	b.WriteString("&sig=")
	b.WriteString(sig)
	b.WriteString("&se=")
	b.WriteString(t.RawExpiry)
	if t.KeyName != "" {
		b.WriteString("&skn=")
		b.WriteString(escape(t.KeyName))
	}
	return b.String()
}

// escape percent-encodes every byte except ASCII letters, digits and -_.~,
// with uppercase hex (the encoding all IoT Hub SDKs produce). That is
// url.QueryEscape with a space as %20 instead of '+' (a '+' in s is
// escaped to %2B, so every '+' in its output stands for a space).
func escape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

// unescape decodes %XX sequences only; every other byte, '+' included, is
// kept as is (url.PathUnescape). A bad escape is ErrMalformed.
func unescape(s string) (string, error) {
	v, err := url.PathUnescape(s)
	if err != nil {
		return "", ErrMalformed
	}
	return v, nil
}
