package firmware

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dmctl/dmctl/service"
)

// Campaign limits.
const (
	// MaxIDsPerConfiguration is the most device ids one configuration's
	// targetCondition names; a larger wave gets several configurations.
	MaxIDsPerConfiguration = 1000
	// MaxConditionLength bounds one targetCondition: IoT Hub caps a query
	// at 8192 characters, and a target condition is evaluated as the WHERE
	// clause of one.
	MaxConditionLength = 8000
	// MaxIDLength is the longest configuration id IoT Hub accepts.
	MaxIDLength = 128
	// PollBatch is the most device ids one progress query names.
	PollBatch = 100
)

// configIDSpecials are the characters IoT Hub accepts in a configuration id
// besides lowercase ASCII letters and digits.
const configIDSpecials = "-:+%_#*?!(),=@;$'"

// ValidIDPrefix checks that prefix followed by a wave suffix ("-w12-3") is
// a configuration id IoT Hub accepts: up to 128 lowercase ASCII letters,
// digits and -:+%_#*?!(),=@;$'.
func ValidIDPrefix(prefix string) error {
	if prefix == "" {
		return errors.New("is empty")
	}
	if n := len(prefix) + len("-w999-999"); n > MaxIDLength {
		return fmt.Errorf("is %d characters long; with the wave suffix it must fit %d", len(prefix), MaxIDLength)
	}
	for _, r := range prefix {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', strings.ContainsRune(configIDSpecials, r):
		default:
			return fmt.Errorf("has %q: configuration ids take only lowercase letters, digits and %s", r, configIDSpecials)
		}
	}
	return nil
}

// DefaultIDPrefix is the configuration id prefix for a campaign started at t:
// "fw-" and the UTC time with milliseconds (fw-20261201t131500123z).
func DefaultIDPrefix(t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("fw-%s%03dz", strings.ToLower(t.Format("20060102T150405")), t.Nanosecond()/int(time.Millisecond))
}

// ParseChecksum checks a SHA-256 written as 64 hex digits and returns it in
// lowercase.
func ParseChecksum(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%q is not a SHA-256 (64 hexadecimal digits)", s)
	}
	return s, nil
}

// FileChecksum is the SHA-256 of a file, in lowercase hex.
func FileChecksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// splitIDs cuts a wave's ids into the parts one configuration each
// targets: at most MaxIDsPerConfiguration ids and a condition of at most
// limit characters.
func splitIDs(ids []string, limit int) [][]string {
	var parts [][]string
	base := len("deviceId IN []")
	lo, size := 0, base
	for i, id := range ids {
		n := len(service.QuoteString(id)) + 2 // ", "
		if i > lo && (size+n > limit || i-lo >= MaxIDsPerConfiguration) {
			parts = append(parts, ids[lo:i])
			lo, size = i, base
		}
		size += n
	}
	if lo < len(ids) {
		parts = append(parts, ids[lo:])
	}
	return parts
}

// chunk cuts ids into slices of at most n.
func chunk(ids []string, n int) [][]string {
	var out [][]string
	for len(ids) > n {
		out = append(out, ids[:n])
		ids = ids[n:]
	}
	if len(ids) > 0 {
		out = append(out, ids)
	}
	return out
}
