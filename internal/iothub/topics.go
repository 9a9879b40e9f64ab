// Package iothub holds the Azure IoT Hub wire contract that dmctl's device,
// service and local hub share: MQTT topic names, the MQTT username, REST JSON
// shapes, error codes and error envelopes. It has no dependencies beyond the
// standard library and performs no I/O.
package iothub

import (
	"net/url"
	"strconv"
	"strings"
)

// APIVersion is the IoT Hub api-version dmctl speaks on MQTT and REST.
const APIVersion = "2021-04-12"

// Subscription filters a device uses.
const (
	MethodsFilter = "$iothub/methods/POST/#"
	TwinResFilter = "$iothub/twin/res/#"
	DesiredFilter = "$iothub/twin/PATCH/properties/desired/#"
)

const (
	methodsPOST    = "$iothub/methods/POST/"
	methodsRes     = "$iothub/methods/res/"
	twinGET        = "$iothub/twin/GET/"
	twinPatchRep   = "$iothub/twin/PATCH/properties/reported/"
	twinRes        = "$iothub/twin/res/"
	twinPatchDes   = "$iothub/twin/PATCH/properties/desired/"
	ridParam       = "$rid"
	versionParam   = "$version"
	apiVersionPara = "api-version"
	modelIDParam   = "model-id"
)

// MethodRequestTopic is the hub-to-device topic of a direct method call:
// "$iothub/methods/POST/{name}/?$rid={rid}". The slash before '?' matters:
// the Python SDK takes the method name as the fourth path segment.
func MethodRequestTopic(name, rid string) string {
	return methodsPOST + name + "/?" + ridParam + "=" + rid
}

// ParseMethodRequestTopic extracts the method name and request id. It accepts
// the topic with or without the slash before '?'.
func ParseMethodRequestTopic(t string) (name, rid string, ok bool) {
	rest, found := strings.CutPrefix(t, methodsPOST)
	if !found {
		return "", "", false
	}
	path, query := splitQuery(rest)
	name = strings.TrimSuffix(path, "/")
	if name == "" || strings.Contains(name, "/") {
		return "", "", false
	}
	rid, ok = queryValue(query, ridParam)
	if !ok || rid == "" {
		return "", "", false
	}
	return name, rid, true
}

// MethodResponseTopic is the device-to-hub topic carrying a method's answer:
// "$iothub/methods/res/{status}/?$rid={rid}".
func MethodResponseTopic(status int, rid string) string {
	return methodsRes + strconv.Itoa(status) + "/?" + ridParam + "=" + rid
}

// ParseMethodResponseTopic extracts the device's status and the request id.
func ParseMethodResponseTopic(t string) (status int, rid string, ok bool) {
	rest, found := strings.CutPrefix(t, methodsRes)
	if !found {
		return 0, "", false
	}
	path, query := splitQuery(rest)
	status, err := strconv.Atoi(strings.TrimSuffix(path, "/"))
	if err != nil {
		return 0, "", false
	}
	rid, ok = queryValue(query, ridParam)
	if !ok || rid == "" {
		return 0, "", false
	}
	return status, rid, true
}

// TwinGetTopic is the device-to-hub topic that asks for the twin.
func TwinGetTopic(rid string) string { return twinGET + "?" + ridParam + "=" + rid }

// TwinPatchReportedTopic is the device-to-hub topic that patches reported properties.
func TwinPatchReportedTopic(rid string) string {
	return twinPatchRep + "?" + ridParam + "=" + rid
}

// TwinOp is a device-side twin request kind.
type TwinOp int

// Twin request kinds.
const (
	TwinGet TwinOp = iota + 1
	TwinPatchReported
)

// ParseTwinRequestTopic recognises a twin GET or reported PATCH request.
func ParseTwinRequestTopic(t string) (op TwinOp, rid string, ok bool) {
	var rest string
	switch {
	case strings.HasPrefix(t, twinGET):
		op, rest = TwinGet, t[len(twinGET):]
	case strings.HasPrefix(t, twinPatchRep):
		op, rest = TwinPatchReported, t[len(twinPatchRep):]
	default:
		return 0, "", false
	}
	path, query := splitQuery(rest)
	if path != "" {
		return 0, "", false
	}
	rid, ok = queryValue(query, ridParam)
	if !ok || rid == "" {
		return 0, "", false
	}
	return op, rid, true
}

// TwinResponseTopic is the hub-to-device answer to a twin request:
// "$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]"; version <= 0 omits it.
func TwinResponseTopic(status int, rid string, version int64) string {
	t := twinRes + strconv.Itoa(status) + "/?" + ridParam + "=" + rid
	if version > 0 {
		t += "&" + versionParam + "=" + strconv.FormatInt(version, 10)
	}
	return t
}

// ParseTwinResponseTopic extracts status, request id and the optional version.
func ParseTwinResponseTopic(t string) (status int, rid string, version int64, ok bool) {
	rest, found := strings.CutPrefix(t, twinRes)
	if !found {
		return 0, "", 0, false
	}
	path, query := splitQuery(rest)
	status, err := strconv.Atoi(strings.TrimSuffix(path, "/"))
	if err != nil {
		return 0, "", 0, false
	}
	rid, ok = queryValue(query, ridParam)
	if !ok || rid == "" {
		return 0, "", 0, false
	}
	if v, has := queryValue(query, versionParam); has {
		version, err = strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, "", 0, false
		}
	}
	return status, rid, version, true
}

// DesiredPatchTopic is the hub-to-device desired-property notification topic.
func DesiredPatchTopic(version int64) string {
	return twinPatchDes + "?" + versionParam + "=" + strconv.FormatInt(version, 10)
}

// ParseDesiredPatchTopic extracts the desired version of a notification.
func ParseDesiredPatchTopic(t string) (version int64, ok bool) {
	rest, found := strings.CutPrefix(t, twinPatchDes)
	if !found {
		return 0, false
	}
	path, query := splitQuery(rest)
	if path != "" {
		return 0, false
	}
	v, has := queryValue(query, versionParam)
	if !has {
		return 0, false
	}
	version, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, false
	}
	return version, true
}

// ClientID is the MQTT client id of a device or module identity.
func ClientID(deviceID, moduleID string) string {
	if moduleID != "" {
		return deviceID + "/" + moduleID
	}
	return deviceID
}

// Username is the MQTT username IoT Hub expects:
// "{host}/{deviceId}[/{moduleId}]/?api-version=...&DeviceClientType=...".
func Username(host, deviceID, moduleID, clientType string) string {
	u := host + "/" + ClientID(deviceID, moduleID) + "/?" + apiVersionPara + "=" + APIVersion
	if clientType != "" {
		u += "&DeviceClientType=" + url.QueryEscape(clientType)
	}
	return u
}

// ParseUsername reads the host and identity from any username form the SDKs
// send: with or without '?', any api-version, any extra parameters.
func ParseUsername(u string) (host, deviceID, moduleID string, ok bool) {
	path := u
	if i := strings.IndexByte(u, '?'); i >= 0 {
		path = u[:i]
	}
	parts := strings.Split(path, "/")
	// Drop a trailing empty segment ("host/dev/") and a query-less
	// "api-version=..." segment used by older clients.
	for len(parts) > 0 {
		last := parts[len(parts)-1]
		if last == "" || strings.HasPrefix(last, apiVersionPara+"=") {
			parts = parts[:len(parts)-1]
			continue
		}
		break
	}
	switch len(parts) {
	case 2:
		host, deviceID = parts[0], parts[1]
	case 3:
		host, deviceID, moduleID = parts[0], parts[1], parts[2]
	default:
		return "", "", "", false
	}
	if host == "" || deviceID == "" {
		return "", "", "", false
	}
	return host, deviceID, moduleID, true
}

// UsernameModelID returns the "model-id" parameter of an MQTT username (an
// IoT Plug and Play device announcing its model), decoded, or "".
func UsernameModelID(u string) string {
	_, q := splitQuery(u)
	v, ok := queryValue(q, modelIDParam)
	if !ok {
		return ""
	}
	if d, err := url.QueryUnescape(v); err == nil {
		return d
	}
	return v
}

// WithModelID appends the "model-id" parameter to an MQTT username built by
// Username; an empty modelID leaves it unchanged.
func WithModelID(username, modelID string) string {
	if modelID == "" {
		return username
	}
	return username + "&" + modelIDParam + "=" + url.QueryEscape(modelID)
}

// splitQuery splits "path/?a=b" into "path/" and "a=b".
func splitQuery(s string) (path, query string) {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}

// queryValue finds key in an '&'-separated query without decoding values:
// request ids are opaque and echoed byte for byte.
func queryValue(query, key string) (string, bool) {
	for query != "" {
		var kv string
		kv, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}
