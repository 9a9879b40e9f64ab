package iothub

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// MethodRequest is the body of POST /twins/{id}/methods (CloudToDeviceMethod).
type MethodRequest struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload,omitempty"`
	ResponseTimeoutInSeconds *int            `json:"responseTimeoutInSeconds,omitempty"`
	ConnectTimeoutInSeconds  *int            `json:"connectTimeoutInSeconds,omitempty"`
}

// Direct-method limits (protocol.md §4.1), in seconds where they are times.
const (
	// MaxMethodPayload is the largest direct-method payload IoT Hub
	// accepts, in either direction (128 KB).
	MaxMethodPayload = 128 * 1024
	// DefaultMethodResponseTimeout, MinMethodResponseTimeout and
	// MaxMethodResponseTimeout are the bounds of responseTimeoutInSeconds.
	DefaultMethodResponseTimeout = 30
	MinMethodResponseTimeout     = 5
	MaxMethodResponseTimeout     = 300
	// MaxMethodConnectTimeout bounds connectTimeoutInSeconds (default 0).
	MaxMethodConnectTimeout = 300
)

// MethodResult is the hub's answer to a direct method call: the device's
// status and JSON payload. The HTTP status is 200 whatever the device said.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// IoT Hub error codes.
const (
	CodeArgumentInvalid     = 400004
	CodeIotHubFormatError   = 400006
	CodeUnauthorized        = 401002
	CodeQuotaExceeded       = 403002
	CodeDeviceNotFound      = 404001
	CodeJobNotFound         = 404002
	CodeModuleNotFound      = 404010
	CodeDeviceNotOnline     = 404103
	CodeDeviceAlreadyExists = 409001
	CodeJobAlreadyExists    = 409104
	CodeModuleAlreadyExists = 409301
	CodePreconditionFailed  = 412001
	CodeMessageTooLarge     = 413001
	CodeThrottled           = 429001
	CodeServerError         = 500001
	CodeServiceUnavailable  = 503001
	CodeGatewayTimeout      = 504101
)

var codeNames = map[int]string{
	CodeArgumentInvalid:     "ArgumentInvalid",
	CodeIotHubFormatError:   "IotHubFormatError",
	CodeUnauthorized:        "IotHubUnauthorizedAccess",
	CodeQuotaExceeded:       "IotHubQuotaExceeded",
	CodeDeviceNotFound:      "DeviceNotFound",
	CodeJobNotFound:         "JobNotFound",
	CodeModuleNotFound:      "ModuleNotFound",
	CodeDeviceNotOnline:     "DeviceNotOnline",
	CodeDeviceAlreadyExists: "DeviceAlreadyExists",
	CodeJobAlreadyExists:    "JobAlreadyExists",
	CodeModuleAlreadyExists: "ModuleAlreadyExistsOnDevice",
	CodePreconditionFailed:  "PreconditionFailed",
	CodeMessageTooLarge:     "MessageTooLarge",
	CodeThrottled:           "ThrottlingException",
	CodeServerError:         "ServerError",
	CodeServiceUnavailable:  "ServiceUnavailable",
	CodeGatewayTimeout:      "GatewayTimeout",
}

// Aliases seen in registry error bodies that name the same condition.
var nameAliases = map[string]int{
	"IotHubUnauthorized":                        CodeUnauthorized,
	"ThrottleBacklogLimitExceeded":              CodeThrottled,
	"ThrottlingBacklogTimeout":                  CodeThrottled,
	"DeviceMaximumQueueDepthExceeded":           CodeQuotaExceeded,
	"InvalidProtocolVersion":                    CodeArgumentInvalid,
	"DeviceConnectionClosedRemotely":            CodeDeviceNotOnline,
	"ConnectionForcefullyClosedOnNewConnection": CodeDeviceNotOnline,
}

// ErrorName returns IoT Hub's symbolic name for code ("DeviceNotFound"), or
// "" when the code is unknown.
func ErrorName(code int) string { return codeNames[code] }

// ErrorCodeByName maps a symbolic name from a registry error body to its code.
func ErrorCodeByName(name string) (int, bool) {
	for c, n := range codeNames {
		if n == name {
			return c, true
		}
	}
	c, ok := nameAliases[name]
	return c, ok
}

// HTTPStatus is the HTTP status that carries code (404103 → 404).
func HTTPStatus(code int) int { return code / 1000 }

func trackingID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

type envelope struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// RegistryErrorBody renders IoT Hub's registry/twin error envelope
// (protocol.md's Style A):
// {"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:..."}.
// The Node service SDK raises typed errors only for this shape.
func RegistryErrorBody(code int, msg string, now time.Time) []byte {
	name := ErrorName(code)
	if name == "" {
		name = strconv.Itoa(code)
	}
	return NamedRegistryErrorBody(name, msg, now)
}

// NamedRegistryErrorBody is RegistryErrorBody for a condition that has a
// symbolic name but no numeric code (an unknown route, a wrong method).
func NamedRegistryErrorBody(name, msg string, now time.Time) []byte {
	b, _ := json.Marshal(envelope{
		Message: "ErrorCode:" + name + ";" + msg,
		ExceptionMessage: "Tracking ID:" + trackingID() + "-G:0-TimeStamp:" +
			now.UTC().Format("01/02/2006 15:04:05"),
	})
	return b
}

type innerError struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId"`
	Message      string            `json:"message"`
	Info         map[string]string `json:"info"`
	TimestampUTC string            `json:"timestampUtc"`
}

// MethodErrorBody renders the envelope used on the direct-method path
// (protocol.md's Style B): Message is a JSON string holding errorCode,
// trackingId, message, info and timestampUtc.
func MethodErrorBody(code int, msg string, now time.Time) []byte {
	inner, _ := json.Marshal(innerError{
		ErrorCode:    code,
		TrackingID:   trackingID(),
		Message:      msg,
		Info:         map[string]string{},
		TimestampUTC: FormatTime(now),
	})
	b, _ := json.Marshal(envelope{Message: string(inner)})
	return b
}

// HubError is an IoT Hub error as read from a REST response.
type HubError struct {
	Status  int    // HTTP status
	Code    int    // IoT Hub errorCode, 0 when the body named none
	Name    string // symbolic name, "" when unknown
	Message string // human text, never the raw body when it is JSON
}

// maxErrorText bounds the text kept from a non-JSON error body.
const maxErrorText = 512

// ParseErrorBody reads either error envelope, or keeps a bounded, trimmed
// copy of any other body as the message.
func ParseErrorBody(status int, body []byte) *HubError {
	e := &HubError{Status: status}
	// Some paths answer with a bare {"errorCode":...,"message":...}.
	var bare innerError
	if err := json.Unmarshal(body, &bare); err == nil && bare.ErrorCode != 0 {
		e.Code, e.Message, e.Name = bare.ErrorCode, bare.Message, ErrorName(bare.ErrorCode)
		return e
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err == nil && env.Message != "" {
		msg := strings.TrimSpace(env.Message)
		var inner innerError
		if strings.HasPrefix(msg, "{") && json.Unmarshal([]byte(msg), &inner) == nil {
			e.Code, e.Message = inner.ErrorCode, inner.Message
			e.Name = ErrorName(inner.ErrorCode)
			return e
		}
		if rest, ok := strings.CutPrefix(msg, "ErrorCode:"); ok {
			name, text, _ := strings.Cut(rest, ";")
			e.Name, e.Message = name, text
			if c, ok := ErrorCodeByName(name); ok {
				e.Code = c
			}
			return e
		}
		e.Message = msg
		return e
	}
	text := strings.TrimSpace(string(body))
	if len(text) > maxErrorText {
		text = text[:maxErrorText] + "..."
	}
	e.Message = text
	return e
}

// SymmetricKey holds an identity's base64 keys.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds certificate thumbprints of an identity.
type X509Thumbprint struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

// Authentication is an identity's authentication mechanism.
type Authentication struct {
	Type           string          `json:"type"`
	SymmetricKey   *SymmetricKey   `json:"symmetricKey,omitempty"`
	X509Thumbprint *X509Thumbprint `json:"x509Thumbprint,omitempty"`
}

// Capabilities of a device identity.
type Capabilities struct {
	IotEdge bool `json:"iotEdge"`
}

// Device is an identity registry entry as the REST API renders it.
type Device struct {
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId"`
	ETag                       string          `json:"etag"`
	ConnectionState            string          `json:"connectionState"`
	Status                     string          `json:"status"`
	StatusReason               *string         `json:"statusReason"`
	ConnectionStateUpdatedTime string          `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          string          `json:"statusUpdatedTime"`
	LastActivityTime           string          `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount"`
	Authentication             *Authentication `json:"authentication,omitempty"`
	Capabilities               *Capabilities   `json:"capabilities,omitempty"`
	// DeviceScope is an edge device's own scope, or the scope of a
	// non-edge device's parent; ParentScopes names an edge device's parents.
	DeviceScope  string   `json:"deviceScope,omitempty"`
	ParentScopes []string `json:"parentScopes,omitempty"`
}

// Twin is a device twin as the REST API renders it.
type Twin struct {
	DeviceID                  string          `json:"deviceId"`
	ModuleID                  string          `json:"moduleId,omitempty"`
	ETag                      string          `json:"etag"`
	DeviceETag                string          `json:"deviceEtag,omitempty"`
	Version                   int64           `json:"version"`
	Status                    string          `json:"status"`
	StatusReason              *string         `json:"statusReason"`
	StatusUpdateTime          string          `json:"statusUpdateTime"`
	ConnectionState           string          `json:"connectionState"`
	LastActivityTime          string          `json:"lastActivityTime"`
	CloudToDeviceMessageCount int             `json:"cloudToDeviceMessageCount"`
	AuthenticationType        string          `json:"authenticationType"`
	X509Thumbprint            *X509Thumbprint `json:"x509Thumbprint"`
	ModelID                   string          `json:"modelId"`
	Capabilities              *Capabilities   `json:"capabilities,omitempty"`
	DeviceScope               string          `json:"deviceScope,omitempty"`
	ParentScopes              []string        `json:"parentScopes,omitempty"`
	Tags                      map[string]any  `json:"tags,omitempty"`
	Properties                TwinProperties  `json:"properties"`
	// Configurations holds the automatic configurations that target the
	// twin, by configuration id.
	Configurations map[string]TwinConfiguration `json:"configurations,omitempty"`
}

// TwinConfiguration is a twin's state for one configuration.
type TwinConfiguration struct {
	Status string `json:"status"` // ConfigurationTargeted or ConfigurationApplied
}

// TwinProperties holds the desired and reported sections; each carries
// "$version" and "$metadata".
type TwinProperties struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

// TimeLayout is IoT Hub's timestamp layout: RFC 3339 UTC, 7 fractional digits.
const TimeLayout = "2006-01-02T15:04:05.0000000Z"

// NeverTime is how IoT Hub renders a timestamp that was never set.
const NeverTime = "0001-01-01T00:00:00Z"

// FormatTime renders t in IoT Hub's layout; the zero time is NeverTime.
func FormatTime(t time.Time) string {
	if t.IsZero() {
		return NeverTime
	}
	return t.UTC().Format(TimeLayout)
}
