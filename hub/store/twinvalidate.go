package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
)

// Twin document limits (protocol.md §4.8). Sizes are of the compact JSON of
// a section without "$version" and "$metadata".
const (
	MaxTagsSize       = 8 * 1024
	MaxPropertiesSize = 32 * 1024
	MaxDepth          = 10
	MaxKeyLength      = 1024
	MaxStringLength   = 4 * 1024
	MaxInteger        = 4503599627370495
	MinInteger        = -4503599627370496
	// MaxPatchSize bounds the raw reported patch accepted by PatchReported.
	MaxPatchSize = 64 * 1024
)

// checkObject validates the keys and values of an object at depth level
// (the section itself is level 0).
func checkObject(section string, m map[string]any, level int, path string) error {
	for k, v := range m {
		if err := checkKey(section, k, path); err != nil {
			return err
		}
		if err := checkValue(section, v, level, join(path, k)); err != nil {
			return err
		}
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func checkKey(section, k, path string) error {
	if k == "" {
		return invalid("%s: empty property name under %q", section, path)
	}
	if len(k) > MaxKeyLength {
		return invalid("%s: property name under %q is %d bytes long, over the limit of %d", section, path, len(k), MaxKeyLength)
	}
	if !utf8.ValidString(k) {
		return invalid("%s: property name under %q is not valid UTF-8", section, path)
	}
	for _, r := range k {
		if r == '.' || r == '$' || r == ' ' || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return invalid("%s: property name %q contains %q, which is not allowed (no '.', '$', space or control characters)", section, join(path, k), r)
		}
	}
	return nil
}

func checkValue(section string, v any, level int, path string) error {
	switch x := v.(type) {
	case nil, bool:
		return nil
	case string:
		if len(x) > MaxStringLength {
			return invalid("%s: value of %q is %d bytes long, over the limit of %d", section, path, len(x), MaxStringLength)
		}
		return nil
	case json.Number:
		return checkNumber(section, string(x), path)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return invalid("%s: value of %q is not a finite number", section, path)
		}
		if x == math.Trunc(x) && (x > MaxInteger || x < MinInteger) {
			return invalid("%s: integer value of %q is outside [%d, %d]", section, path, int64(MinInteger), int64(MaxInteger))
		}
		return nil
	case int:
		return checkInt(section, int64(x), path)
	case int64:
		return checkInt(section, x, path)
	case map[string]any:
		if level+1 > MaxDepth {
			return invalid("%s: %q is nested more than %d levels deep", section, path, MaxDepth)
		}
		return checkObject(section, x, level+1, path)
	case []any:
		if level+1 > MaxDepth {
			return invalid("%s: %q is nested more than %d levels deep", section, path, MaxDepth)
		}
		for i, c := range x {
			if err := checkValue(section, c, level+1, path+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
		return nil
	}
	return invalid("%s: value of %q has unsupported type %T", section, path, v)
}

func checkInt(section string, x int64, path string) error {
	if x > MaxInteger || x < MinInteger {
		return invalid("%s: integer value of %q is outside [%d, %d]", section, path, int64(MinInteger), int64(MaxInteger))
	}
	return nil
}

func checkNumber(section, s, path string) error {
	if !json.Valid([]byte(s)) {
		return invalid("%s: value of %q is not a valid number", section, path)
	}
	if strings.ContainsAny(s, ".eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsInf(f, 0) {
			return invalid("%s: value of %q is out of range", section, path)
		}
		return nil
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return invalid("%s: integer value of %q is outside [%d, %d]", section, path, int64(MinInteger), int64(MaxInteger))
	}
	return checkInt(section, i, path)
}

// checkSize rejects a section whose compact JSON exceeds limit bytes.
func checkSize(section string, v any, limit int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return invalid("%s: %v", section, err)
	}
	if len(b) > limit {
		return invalid("%s is %d bytes, over the limit of %d bytes", section, len(b), limit)
	}
	return nil
}

// DecodeObject decodes a JSON object with numbers kept as json.Number.
// Malformed JSON is a ValidationError with iothub.CodeIotHubFormatError;
// valid JSON that is not an object has iothub.CodeArgumentInvalid. Text
// that is not UTF-8 is malformed (CheckJSONText).
func DecodeObject(b []byte) (map[string]any, error) {
	if err := CheckJSONText(b); err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, &ValidationError{Code: iothub.CodeIotHubFormatError, Msg: "malformed JSON: " + err.Error()}
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Code: iothub.CodeIotHubFormatError, Msg: "malformed JSON: data after the top-level value"}
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalid("expected a JSON object")
	}
	return m, nil
}

// ValidateTwinPatch checks the tags and desired properties of patch
// against the twin rules PatchTwin applies (names, values, depth, section
// sizes). Errors are *ValidationError.
func ValidateTwinPatch(patch iothub.Twin) error {
	desired := withoutSystem(patch.Properties.Desired)
	if err := checkObject("tags", patch.Tags, 0, ""); err != nil {
		return err
	}
	if err := checkObject("desired", desired, 0, ""); err != nil {
		return err
	}
	if err := checkSize("tags", patch.Tags, MaxTagsSize); err != nil {
		return err
	}
	return checkSize("desired properties", desired, MaxPropertiesSize)
}
