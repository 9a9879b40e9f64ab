package iothub

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Device-to-cloud messages go to "devices/{id}/messages/events/{bag}" (a
// module's to "devices/{id}/modules/{mid}/messages/events/{bag}"). The
// property bag is "k1=v1&k2=v2" with keys and values percent-encoded;
// system properties such as "$.ct" (content type), "$.ce" (content
// encoding), "$.mid" (message id) and "$.cid" (correlation id) travel in it
// next to the application properties.

const messagesEvents = "messages/events"

// MessageTopic is the device-to-cloud topic of a device (moduleID "") or a
// module, carrying props as its property bag (FormatMessageProperties).
func MessageTopic(deviceID, moduleID string, props map[string]string) string {
	t := "devices/" + deviceID + "/"
	if moduleID != "" {
		t += "modules/" + moduleID + "/"
	}
	return t + messagesEvents + "/" + FormatMessageProperties(props)
}

// FormatMessageProperties encodes props as a property bag, keys sorted so
// that the same properties always give the same topic; "" for none.
func FormatMessageProperties(props map[string]string) string {
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(escapeProperty(k))
		b.WriteByte('=')
		b.WriteString(escapeProperty(props[k]))
	}
	return b.String()
}

// escapeProperty percent-encodes everything but unreserved characters and
// '$' (system property names start with "$."), so that '&', '=', '/', '+',
// '#' and spaces survive the trip.
func escapeProperty(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~', c == '$':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ParseMessageTopic splits a device-to-cloud topic into its identity and
// properties. ok is false when topic is not such a topic. A malformed
// property bag does not lose the message: props holds every pair that
// decodes, and err says what was skipped.
func ParseMessageTopic(topic string) (deviceID, moduleID string, props map[string]string, ok bool, err error) {
	rest, found := strings.CutPrefix(topic, "devices/")
	if !found {
		return "", "", nil, false, nil
	}
	deviceID, rest, found = strings.Cut(rest, "/")
	if !found || deviceID == "" {
		return "", "", nil, false, nil
	}
	if r, isModule := strings.CutPrefix(rest, "modules/"); isModule {
		moduleID, rest, found = strings.Cut(r, "/")
		if !found || moduleID == "" {
			return "", "", nil, false, nil
		}
	}
	bag, found := strings.CutPrefix(rest, messagesEvents)
	switch {
	case !found:
		return "", "", nil, false, nil
	case bag == "":
	case bag[0] != '/':
		return "", "", nil, false, nil
	default:
		bag = bag[1:]
	}
	props, err = ParseMessageProperties(bag)
	return deviceID, moduleID, props, true, err
}

// ParseMessageProperties decodes a property bag "k1=v1&k2=v2" (one trailing
// '/' allowed), keeping names as sent. Pairs with an empty or undecodable
// name or an undecodable value are skipped; the error names the first
// (nil when every pair decoded). A pair without '=' is a property with an
// empty value. props is nil for an empty bag.
func ParseMessageProperties(bag string) (props map[string]string, err error) {
	bag = strings.TrimSuffix(bag, "/")
	for bag != "" {
		var pair string
		pair, bag, _ = strings.Cut(bag, "&")
		if pair == "" {
			continue
		}
		rawK, rawV, _ := strings.Cut(pair, "=")
		k, kerr := url.PathUnescape(rawK)
		v, verr := url.PathUnescape(rawV)
		if kerr != nil || verr != nil || k == "" {
			if err == nil {
				err = fmt.Errorf("message property %q is malformed", pair)
			}
			continue
		}
		if props == nil {
			props = make(map[string]string)
		}
		props[k] = v
	}
	return props, err
}
