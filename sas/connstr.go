package sas

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/editdist"
	"github.com/dmctl/dmctl/internal/iothub"
)

// Kind tells which identity a connection string describes.
type Kind int

// Connection-string kinds.
const (
	KindDevice  Kind = iota + 1 // HostName + DeviceId
	KindModule                  // HostName + DeviceId + ModuleId
	KindService                 // HostName + SharedAccessKeyName + SharedAccessKey, no DeviceId
)

func (k Kind) String() string {
	switch k {
	case KindDevice:
		return "device"
	case KindModule:
		return "module"
	case KindService:
		return "service"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Connection-string key names (case-sensitive, as IoT Hub spells them).
const (
	keyHostName              = "HostName"
	keyDeviceID              = "DeviceId"
	keyModuleID              = "ModuleId"
	keySharedAccessKeyName   = "SharedAccessKeyName"
	keySharedAccessKey       = "SharedAccessKey"
	keySharedAccessSignature = "SharedAccessSignature"
	keyGatewayHostName       = "GatewayHostName"
	keyX509                  = "x509"
)

var knownKeys = []string{
	keyHostName, keyDeviceID, keyModuleID, keySharedAccessKeyName, keySharedAccessKey,
	keySharedAccessSignature, keyGatewayHostName, keyX509,
}

// MaxKeyBytes is the largest decoded symmetric key accepted. IoT Hub accepts
// keys of 16 to 64 decoded bytes; shorter keys are accepted here because
// emulators and test vectors use them.
const MaxKeyBytes = 64

// maxIDLen is IoT Hub's limit for device and module ids.
const maxIDLen = 128

// ConnectionString is a parsed and validated IoT Hub connection string.
//
// Printing it with the fmt verbs (%v, %+v, %s, %q, %#v) shows the redacted
// form; Secret returns the full string.
type ConnectionString struct {
	HostName              string // may carry ":port"
	DeviceID              string
	ModuleID              string
	SharedAccessKeyName   string
	SharedAccessKey       string // base64, validated
	SharedAccessSignature string // a whole "SharedAccessSignature sr=..." token
	GatewayHostName       string
	X509                  bool
}

// Parse parses a device, module or service connection string and validates
// it for its kind.
//
// Syntax: the string (surrounding white space removed) is split on ';',
// empty elements are skipped, each element is split at its first '=' (so a
// SharedAccessSignature value keeps its '=' and '&'). Key names are
// case-sensitive; unknown keys are ignored, but named in a refusal (see
// below). Every refusal is a *FieldError naming the key:
//
//   - the whole string in quotes ('...' or "...", as pasted from a shell
//     line): no key is named;
//   - an element without '=' or with an empty key name (no key is named: the
//     element may be a pasted secret);
//   - a known key name spelled in another case ("hostname", "X509");
//   - a known key given twice;
//   - a known key with an empty value;
//   - HostName that is not host or host:port (port 1-65535);
//   - GatewayHostName that is not host or host:port;
//   - DeviceId / ModuleId longer than 128 characters or with characters
//     outside ASCII letters, digits and -:.+%_#*?!(),=@$';
//   - SharedAccessKeyName with characters outside ASCII letters, digits and -._~;
//   - SharedAccessKey that is not padded standard base64 or decodes to more
//     than 64 bytes;
//   - SharedAccessSignature that is not a well-formed token (see ParseToken);
//   - x509 with a value other than "true" (any case);
//   - missing HostName;
//   - ModuleId without DeviceId;
//   - neither DeviceId nor SharedAccessKeyName (no kind);
//   - SharedAccessKey together with x509 or SharedAccessSignature, or
//     SharedAccessSignature together with x509;
//   - a device or module string with none of SharedAccessKey,
//     SharedAccessSignature and x509;
//   - SharedAccessKeyName without SharedAccessKey;
//   - a service string (no DeviceId) without SharedAccessKey, or with
//     SharedAccessSignature or x509.
//
// When the string also has unknown keys, the refusal names them: by name
// (with the known key it resembles) when the name is within two edits of a
// known key name, otherwise by element number only. When the refusal is a
// missing key, the unknown keys lead and the FieldError's Key is the known
// key the first of them resembles ("" when none does).
func Parse(s string) (*ConnectionString, error) {
	c := new(ConnectionString)
	seen := make(map[string]bool)
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, &FieldError{Key: keyHostName, Reason: "missing (connection string is empty)"}
	}
	if q := s[0]; (q == '\'' || q == '"') && len(s) > 1 && s[len(s)-1] == q {
		return nil, &FieldError{Reason: fmt.Sprintf("the whole string is quoted (it starts and ends with %c): remove the quotes", q)}
	}
	var unknown []unknownKey
	n := 0
	for elem := range strings.SplitSeq(s, ";") {
		if elem == "" {
			continue
		}
		n++
		k, v, ok := strings.Cut(elem, "=")
		if !ok {
			// The element may be a pasted secret: never echo it.
			return nil, &FieldError{Reason: fmt.Sprintf("element %d has no '='", n)}
		}
		if k == "" {
			return nil, &FieldError{Reason: fmt.Sprintf("element %d has an empty key name", n)}
		}
		var dst *string
		switch k {
		case keyHostName:
			dst = &c.HostName
		case keyDeviceID:
			dst = &c.DeviceID
		case keyModuleID:
			dst = &c.ModuleID
		case keySharedAccessKeyName:
			dst = &c.SharedAccessKeyName
		case keySharedAccessKey:
			dst = &c.SharedAccessKey
		case keySharedAccessSignature:
			dst = &c.SharedAccessSignature
		case keyGatewayHostName:
			dst = &c.GatewayHostName
		case keyX509:
		default:
			for _, known := range knownKeys {
				if strings.EqualFold(k, known) {
					// Only a known name is echoed, never the element.
					return nil, &FieldError{Key: known, Reason: fmt.Sprintf("spelled %q; key names are case-sensitive", k)}
				}
			}
			// Unknown keys are kept by the SDKs and ignored; they are
			// named only if a refusal follows.
			unknown = append(unknown, unknownKey{n, k})
			continue
		}
		if seen[k] {
			return nil, &FieldError{Key: k, Reason: "given more than once"}
		}
		seen[k] = true
		if v == "" {
			return nil, &FieldError{Key: k, Reason: "empty value"}
		}
		if dst != nil {
			*dst = v
			continue
		}
		if !strings.EqualFold(v, "true") {
			return nil, &FieldError{Key: k, Reason: `value must be "true"`}
		}
		c.X509 = true
	}
	if err := c.validate(); err != nil {
		return nil, explainUnknown(err, unknown)
	}
	return c, nil
}

// unknownKey is an element whose key name Parse does not know.
type unknownKey struct {
	elem int
	name string
}

// explainUnknown tells, on a refusal, about the unknown keys of the string.
// A key reported missing is most often one of them misspelled, so then the
// unknown key leads: the FieldError names the known key it resembles (or no
// key), and the missing key follows. A name is echoed only when it is within
// two edits of a known key name (so it is not a pasted secret); otherwise
// only its element number is given.
func explainUnknown(err error, unknown []unknownKey) error {
	var fe *FieldError
	if len(unknown) == 0 || !errors.As(err, &fe) {
		return err
	}
	key := ""
	var notes []string
	for _, u := range unknown {
		if known := nearKey(u.name); known != "" {
			notes = append(notes, fmt.Sprintf("element %d has the unknown key %q (did you mean %s?)", u.elem, u.name, known))
			if key == "" {
				key = known
			}
		} else {
			notes = append(notes, fmt.Sprintf("element %d has an unknown key name (known: %s)", u.elem, strings.Join(knownKeys, ", ")))
		}
	}
	if !strings.HasPrefix(fe.Reason, "missing") {
		return &FieldError{Key: fe.Key, Reason: fe.Reason + "; " + strings.Join(notes, "; ")}
	}
	return &FieldError{Key: key, Reason: strings.Join(notes, "; ") + "; so " + fe.Key + " is " + fe.Reason}
}

// nearKey returns the known key name within two edits of name, or "".
func nearKey(name string) string {
	for _, k := range knownKeys {
		if editdist.Distance(strings.ToLower(name), strings.ToLower(k)) <= 2 {
			return k
		}
	}
	return ""
}

// ParseDevice parses a device or module connection string.
func ParseDevice(s string) (*ConnectionString, error) {
	c, err := Parse(s)
	if err != nil {
		return nil, err
	}
	if c.Kind() == KindService {
		return nil, &FieldError{Key: keyDeviceID, Reason: "missing (this is a service connection string; a device connection string is needed)"}
	}
	return c, nil
}

// ParseService parses a service (shared access policy) connection string:
// HostName, SharedAccessKeyName and SharedAccessKey, and no DeviceId.
func ParseService(s string) (*ConnectionString, error) {
	c, err := Parse(s)
	if err != nil {
		return nil, err
	}
	if c.Kind() != KindService {
		return nil, &FieldError{Key: keyDeviceID, Reason: "not allowed in a service connection string (this is a device connection string)"}
	}
	return c, nil
}

// validate checks every value and the combination of keys.
func (c *ConnectionString) validate() error {
	if c.HostName == "" {
		return &FieldError{Key: keyHostName, Reason: "missing"}
	}
	if _, _, err := splitHostPort(c.HostName); err != nil {
		return &FieldError{Key: keyHostName, Reason: err.Error()}
	}
	if c.GatewayHostName != "" {
		if _, _, err := splitHostPort(c.GatewayHostName); err != nil {
			return &FieldError{Key: keyGatewayHostName, Reason: err.Error()}
		}
	}
	if c.DeviceID != "" {
		if err := checkID(c.DeviceID); err != nil {
			return &FieldError{Key: keyDeviceID, Reason: err.Error()}
		}
	}
	if c.ModuleID != "" {
		if err := checkID(c.ModuleID); err != nil {
			return &FieldError{Key: keyModuleID, Reason: err.Error()}
		}
	}
	if c.SharedAccessKeyName != "" && !isUnreservedString(c.SharedAccessKeyName) {
		return &FieldError{Key: keySharedAccessKeyName, Reason: "only ASCII letters, digits and -._~ are allowed"}
	}
	if c.SharedAccessKey != "" {
		if _, err := decodeKey(c.SharedAccessKey); err != nil {
			return err
		}
	}
	if c.SharedAccessSignature != "" {
		if _, err := ParseToken(c.SharedAccessSignature); err != nil {
			reason := "not a valid token"
			var te *tokenError
			if errors.As(err, &te) {
				reason = "not a valid token: " + te.reason
			}
			return &FieldError{Key: keySharedAccessSignature, Reason: reason}
		}
	}

	// Combinations, as the Node SDK rejects them.
	switch {
	case c.SharedAccessKey != "" && c.X509:
		return &FieldError{Key: keyX509, Reason: "cannot be combined with SharedAccessKey"}
	case c.SharedAccessKey != "" && c.SharedAccessSignature != "":
		return &FieldError{Key: keySharedAccessSignature, Reason: "cannot be combined with SharedAccessKey"}
	case c.SharedAccessSignature != "" && c.X509:
		return &FieldError{Key: keyX509, Reason: "cannot be combined with SharedAccessSignature"}
	}
	if c.ModuleID != "" && c.DeviceID == "" {
		return &FieldError{Key: keyDeviceID, Reason: "missing (required with ModuleId)"}
	}
	if c.DeviceID == "" {
		// Service (policy) connection string.
		switch {
		case c.SharedAccessKeyName == "":
			return &FieldError{Key: keyDeviceID, Reason: "missing (a device connection string needs DeviceId, a service connection string needs SharedAccessKeyName)"}
		case c.X509:
			return &FieldError{Key: keyX509, Reason: "not allowed in a service connection string"}
		case c.SharedAccessSignature != "":
			return &FieldError{Key: keySharedAccessSignature, Reason: "not allowed in a service connection string"}
		case c.SharedAccessKey == "":
			return &FieldError{Key: keySharedAccessKey, Reason: "missing (required with SharedAccessKeyName)"}
		}
		return nil
	}
	if c.SharedAccessKeyName != "" && c.SharedAccessKey == "" {
		return &FieldError{Key: keySharedAccessKey, Reason: "missing (required with SharedAccessKeyName)"}
	}
	if c.SharedAccessKey == "" && c.SharedAccessSignature == "" && !c.X509 {
		return &FieldError{Key: keySharedAccessKey, Reason: "missing (one of SharedAccessKey, SharedAccessSignature or x509=true is required)"}
	}
	return nil
}

// Kind reports the identity the connection string describes.
func (c *ConnectionString) Kind() Kind {
	switch {
	case c.DeviceID == "":
		return KindService
	case c.ModuleID != "":
		return KindModule
	}
	return KindDevice
}

// format renders the connection string in canonical key order; secrets are
// replaced with "***" when redact is set.
func (c ConnectionString) format(redact bool) string {
	var b strings.Builder
	add := func(k, v string, secret bool) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k)
		b.WriteByte('=')
		if secret && redact {
			b.WriteString("***")
		} else {
			b.WriteString(v)
		}
	}
	add(keyHostName, c.HostName, false)
	add(keyDeviceID, c.DeviceID, false)
	add(keyModuleID, c.ModuleID, false)
	add(keySharedAccessKeyName, c.SharedAccessKeyName, false)
	add(keySharedAccessKey, c.SharedAccessKey, true)
	add(keySharedAccessSignature, c.SharedAccessSignature, true)
	add(keyGatewayHostName, c.GatewayHostName, false)
	if c.X509 {
		add(keyX509, "true", false)
	}
	return b.String()
}

// String returns the redacted connection string: SharedAccessKey and
// SharedAccessSignature values are shown as "***". It is safe for logs and
// errors. (Value receiver, so a ConnectionString value prints redacted too.)
func (c ConnectionString) String() string { return c.format(true) }

// GoString makes %#v print the redacted form as well.
func (c ConnectionString) GoString() string {
	return "sas.ConnectionString(" + strconv.Quote(c.format(true)) + ")"
}

// Secret returns the full connection string, secrets included. Parse(Secret())
// yields an equal ConnectionString.
func (c *ConnectionString) Secret() string { return c.format(false) }

// Resource returns the SAS audience of the identity, unencoded:
// "host", "host/devices/d" or "host/devices/d/modules/m". HostName is used
// verbatim, port included.
func (c *ConnectionString) Resource() string {
	switch c.Kind() {
	case KindService:
		return c.HostName
	case KindModule:
		return c.HostName + "/devices/" + c.DeviceID + "/modules/" + c.ModuleID
	}
	return c.HostName + "/devices/" + c.DeviceID
}

// Host returns HostName without its port (IPv6 literals without brackets).
func (c *ConnectionString) Host() string {
	h, _, err := splitHostPort(c.HostName)
	if err != nil {
		return c.HostName
	}
	return h
}

// Port returns the port carried by HostName, or def when there is none.
func (c *ConnectionString) Port(def int) int {
	_, p, err := splitHostPort(c.HostName)
	if err != nil || p == 0 {
		return def
	}
	return p
}

// Token returns a SAS token for the identity. With SharedAccessKey it signs
// a new token expiring at expiry (skn = SharedAccessKeyName when set). With
// SharedAccessSignature it returns that token as is, even when it has
// expired. An x509 identity has no token: the error is a *FieldError.
func (c *ConnectionString) Token(expiry time.Time) (string, error) {
	switch {
	case c.SharedAccessKey != "":
		return Sign(c.SharedAccessKey, c.Resource(), c.SharedAccessKeyName, expiry)
	case c.SharedAccessSignature != "":
		return c.SharedAccessSignature, nil
	}
	return "", &FieldError{Key: keySharedAccessKey, Reason: "missing (an x509 identity has no key to sign a token with)"}
}

// decodeKey validates and decodes a symmetric key: padded standard base64
// without line breaks, 1 to MaxKeyBytes bytes. The error is a *FieldError
// for SharedAccessKey.
func decodeKey(key string) ([]byte, error) {
	b, reason := decodeKeyReason(key)
	if reason != "" {
		return nil, &FieldError{Key: keySharedAccessKey, Reason: reason}
	}
	return b, nil
}

// decodeKeyReason is decodeKey with the refusal as text (never containing
// the key).
func decodeKeyReason(key string) ([]byte, string) {
	if key == "" {
		return nil, "empty"
	}
	if strings.ContainsAny(key, "\r\n") || len(key) > base64.StdEncoding.EncodedLen(MaxKeyBytes) {
		return nil, fmt.Sprintf("not padded standard base64 of at most %d bytes", MaxKeyBytes)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(key)
	if err != nil {
		return nil, "not padded standard base64"
	}
	if len(b) == 0 || len(b) > MaxKeyBytes {
		return nil, fmt.Sprintf("decodes to %d bytes; 1 to %d are allowed", len(b), MaxKeyBytes)
	}
	return b, ""
}

// splitHostPort splits "host", "host:port", "[v6]" or "[v6]:port". port is
// 0 when absent.
func splitHostPort(hp string) (host string, port int, err error) {
	var ps string
	switch {
	case strings.HasPrefix(hp, "["):
		end := strings.IndexByte(hp, ']')
		if end < 0 {
			return "", 0, fmt.Errorf("unclosed '[' in IPv6 address")
		}
		host, rest := hp[1:end], hp[end+1:]
		if net.ParseIP(host) == nil || !strings.Contains(host, ":") {
			return "", 0, fmt.Errorf("not a valid IPv6 address in brackets")
		}
		if rest != "" {
			if rest[0] != ':' {
				return "", 0, fmt.Errorf("unexpected text after ']'")
			}
			ps = rest[1:]
			if ps == "" {
				return "", 0, fmt.Errorf("empty port")
			}
		}
		if ps == "" {
			return host, 0, nil
		}
		p, err := parsePort(ps)
		return host, p, err
	case strings.Count(hp, ":") > 1:
		return "", 0, fmt.Errorf("more than one ':' (put IPv6 addresses in brackets)")
	}
	host, ps, hasPort := strings.Cut(hp, ":")
	if err := checkHost(host); err != nil {
		return "", 0, err
	}
	if !hasPort {
		return host, 0, nil
	}
	p, err := parsePort(ps)
	return host, p, err
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("port is not a number")
	}
	p, _ := strconv.Atoi(s)
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("port out of range 1-65535")
	}
	return p, nil
}

// checkHost accepts DNS names and IPv4 addresses: ASCII letters, digits, '-',
// '_' and '.', at most 253 characters.
func checkHost(h string) error {
	if h == "" {
		return fmt.Errorf("empty host name")
	}
	if len(h) > 253 {
		return fmt.Errorf("host name longer than 253 characters")
	}
	for i := 0; i < len(h); i++ {
		ch := h[i]
		if !isAlnum(ch) && ch != '-' && ch != '_' && ch != '.' {
			return fmt.Errorf("host name may contain only ASCII letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}

// checkID applies IoT Hub's device and module id rules.
func checkID(id string) error { return iothub.CheckID(id) }

func isAlnum(ch byte) bool {
	return 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9'
}

func isUnreserved(ch byte) bool {
	return isAlnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~'
}

func isUnreservedString(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isUnreserved(s[i]) {
			return false
		}
	}
	return true
}
