package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/dmctl/dmctl/internal/iothub"
)

// APIError is a failed REST call: the HTTP status and IoT Hub's own error
// code, from either error envelope the hub uses. Compare with errors.Is
// against the sentinels below; Is matches on the IoT Hub code, and on the HTTP
// status where the sentinel or the error carries no code.
type APIError struct {
	Status  int    // HTTP status
	Code    int    // IoT Hub errorCode (e.g. 404103), 0 when the hub sent none
	Name    string // IoT Hub error name (e.g. "DeviceNotOnline"), "" when unknown
	Message string // the hub's text, trimmed and bounded

	retryAfter string // the response's Retry-After header, for the retry loop
}

// Sentinels for errors.Is. Each is an *APIError holding only what it matches.
var (
	// ErrUnauthorized matches any 401 (bad key, expired token, missing rights).
	ErrUnauthorized = &APIError{Status: 401}
	// ErrDeviceNotFound matches IoT Hub error 404001.
	ErrDeviceNotFound = &APIError{Code: iothub.CodeDeviceNotFound}
	// ErrDeviceNotOnline matches 404103: the device is not connected or has
	// not subscribed to direct methods within the connect timeout.
	ErrDeviceNotOnline = &APIError{Code: iothub.CodeDeviceNotOnline}
	// ErrMethodTimeout matches 504101, or a 504 without a code: the device did
	// not answer within the response timeout.
	ErrMethodTimeout = &APIError{Status: 504, Code: iothub.CodeGatewayTimeout}
	// ErrPreconditionFailed matches 412001, or a 412 without a code (etag mismatch).
	ErrPreconditionFailed = &APIError{Status: 412, Code: iothub.CodePreconditionFailed}
	// ErrThrottled matches any 429.
	ErrThrottled = &APIError{Status: 429}
	// ErrDeviceAlreadyExists matches 409001 (create of an existing id).
	ErrDeviceAlreadyExists = &APIError{Code: iothub.CodeDeviceAlreadyExists}
	// ErrModuleNotFound matches IoT Hub error 404010.
	ErrModuleNotFound = &APIError{Code: iothub.CodeModuleNotFound}
	// ErrModuleAlreadyExists matches 409301 (create of an existing module).
	ErrModuleAlreadyExists = &APIError{Code: iothub.CodeModuleAlreadyExists}
	// ErrConfigurationNotFound matches a 404 from a configuration call
	// (IoT Hub's ConfigurationNotFound).
	ErrConfigurationNotFound = &APIError{Status: 404, Name: nameConfigurationNotFound}
	// ErrConfigurationExists matches a 409 from a configuration create.
	ErrConfigurationExists = &APIError{Status: 409, Name: nameConfigurationExists}
)

// Error names of the configuration sentinels, which Is matches by name:
// IoT Hub documents no numeric code for them.
const (
	nameConfigurationNotFound = "ConfigurationNotFound"
	nameConfigurationExists   = "ConfigurationAlreadyExists"
)

// ErrRebootNotConfirmed: the device did not report a new rebootTime before
// the wait deadline.
var ErrRebootNotConfirmed = errors.New("service: reboot not confirmed: the device did not report a new rebootTime in time")

// ErrStopQuery, returned by a Query callback, ends the query early; Query then
// returns nil.
var ErrStopQuery = errors.New("service: stop query")

// Is reports whether target is an *APIError that e matches: equal IoT Hub
// codes when both carry one, otherwise equal HTTP status if target names one.
func (e *APIError) Is(target error) bool {
	t, ok := target.(*APIError)
	if !ok {
		return false
	}
	if t.Name != "" && t.Code == 0 {
		return e.Name == t.Name && (t.Status == 0 || e.Status == t.Status)
	}
	if t.Code != 0 && e.Code != 0 {
		return t.Code == e.Code
	}
	if t.Status != 0 {
		return t.Status == e.Status
	}
	return false
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("service: ")
	if what := describe(e); what != "" {
		b.WriteString(what)
		b.WriteString(" (")
	}
	fmt.Fprintf(&b, "HTTP %d", e.Status)
	if e.Name != "" || e.Code != 0 {
		b.WriteString(", ")
		b.WriteString(e.Name)
		if e.Code != 0 {
			if e.Name != "" {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%d", e.Code)
		}
	}
	if describe(e) != "" {
		b.WriteByte(')')
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// describe names the failure in words for the common cases.
func describe(e *APIError) string {
	switch {
	case e.Is(ErrConfigurationNotFound):
		return "configuration not found"
	case e.Is(ErrConfigurationExists):
		return "configuration already exists"
	case e.Is(ErrDeviceNotFound):
		return "device not found"
	case e.Is(ErrDeviceNotOnline):
		return "device not online"
	case e.Is(ErrMethodTimeout):
		return "device did not answer in time"
	case e.Is(ErrUnauthorized):
		return "unauthorized"
	case e.Is(ErrPreconditionFailed):
		return "etag does not match"
	case e.Is(ErrThrottled):
		return "throttled"
	case e.Is(ErrDeviceAlreadyExists):
		return "device already exists"
	case e.Is(ErrModuleNotFound):
		return "module not found"
	case e.Is(ErrModuleAlreadyExists):
		return "module already exists"
	}
	return ""
}

// DeviceStatusError: the device answered a direct method with a status of
// 400 or more. Payload is the device's answer as received.
type DeviceStatusError struct {
	Status  int
	Payload json.RawMessage
}

func (e *DeviceStatusError) Error() string {
	p := strings.TrimSpace(string(e.Payload))
	if p == "" {
		return fmt.Sprintf("service: device answered with status %d", e.Status)
	}
	return fmt.Sprintf("service: device answered with status %d: %s", e.Status, Excerpt(p))
}

const (
	maxErrorBody  = 64 << 10 // error bodies read at most
	maxMessageLen = 512      // bytes of hub text kept in an APIError
)

// newAPIError builds the error for a non-2xx response from its status, body
// and iothub-errorcode header.
func newAPIError(status int, body []byte, headerName string) *APIError {
	e := &APIError{Status: status}
	if he := iothub.ParseErrorBody(status, body); he != nil {
		e.Code, e.Name, e.Message = he.Code, he.Name, he.Message
		if he.Status != 0 && e.Status == 0 {
			e.Status = he.Status
		}
	}
	if e.Name == "" && headerName != "" {
		e.Name = headerName
	}
	if e.Code == 0 && e.Name != "" {
		e.Code, _ = iothub.ErrorCodeByName(e.Name)
	}
	if e.Name == "" && e.Code != 0 {
		e.Name = iothub.ErrorName(e.Code)
	}
	e.Message = Excerpt(strings.TrimSpace(strings.ToValidUTF8(e.Message, "\uFFFD")))
	return e
}

// Excerpt bounds text quoted from the hub or a device (an error message, a
// device's answer) to the length an APIError keeps, cutting on a rune
// boundary and marking the cut with "…".
func Excerpt(s string) string {
	if len(s) <= maxMessageLen {
		return s
	}
	cut := maxMessageLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
