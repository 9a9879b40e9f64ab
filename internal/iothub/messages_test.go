package iothub

import (
	"maps"
	"testing"
)

func TestParseMessageTopic(t *testing.T) {
	for _, tc := range []struct {
		topic    string
		dev, mod string
		props    map[string]string
		ok, bad  bool
	}{
		{topic: "devices/d1/messages/events", dev: "d1", ok: true},
		{topic: "devices/d1/messages/events/", dev: "d1", ok: true},
		{topic: "devices/d1/messages/events/a=1&b=two", dev: "d1", props: map[string]string{"a": "1", "b": "two"}, ok: true},
		{topic: "devices/d1/messages/events/$.ct=application%2Fjson&$.ce=utf-8/", dev: "d1",
			props: map[string]string{"$.ct": "application/json", "$.ce": "utf-8"}, ok: true},
		{topic: "devices/d1/messages/events/msg=hello%20world%26more&plus=a+b", dev: "d1",
			props: map[string]string{"msg": "hello world&more", "plus": "a+b"}, ok: true},
		{topic: "devices/d1/modules/m1/messages/events/$.mid=42", dev: "d1", mod: "m1", props: map[string]string{"$.mid": "42"}, ok: true},
		{topic: "devices/d1/messages/events/flag", dev: "d1", props: map[string]string{"flag": ""}, ok: true},
		// Malformed pairs are skipped, the rest kept.
		{topic: "devices/d1/messages/events/good=1&bad=%zz&=x&also=2", dev: "d1",
			props: map[string]string{"good": "1", "also": "2"}, ok: true, bad: true},
		{topic: "devices/d1/messages/eventsX"},
		{topic: "devices/d1/messages/devicebound/a=1"},
		{topic: "devices//messages/events"},
		{topic: "devices/d1/modules//messages/events"},
		{topic: "$iothub/twin/GET/?$rid=1"},
	} {
		dev, mod, props, ok, err := ParseMessageTopic(tc.topic)
		if dev != tc.dev || mod != tc.mod || ok != tc.ok || !maps.Equal(props, tc.props) || (err != nil) != tc.bad {
			t.Errorf("ParseMessageTopic(%q) = %q, %q, %v, %v, %v; want %q, %q, %v, %v, malformed %v",
				tc.topic, dev, mod, props, ok, err, tc.dev, tc.mod, tc.props, tc.ok, tc.bad)
		}
	}
}

func TestMessageTopicRoundTrip(t *testing.T) {
	props := map[string]string{"$.ct": "application/json", "k y": "a&b=c/d+e#f%", "ünï": "çödé"}
	topic := MessageTopic("d1", "m1", props)
	if want := "devices/d1/modules/m1/messages/events/"; topic[:len(want)] != want {
		t.Fatalf("MessageTopic = %q, want prefix %q", topic, want)
	}
	dev, mod, got, ok, err := ParseMessageTopic(topic)
	if dev != "d1" || mod != "m1" || !ok || err != nil || !maps.Equal(got, props) {
		t.Fatalf("round trip of %q = %q %q %v %v %v; want %v", topic, dev, mod, got, ok, err, props)
	}
	if got, want := MessageTopic("d1", "", nil), "devices/d1/messages/events/"; got != want {
		t.Fatalf("MessageTopic without properties = %q, want %q", got, want)
	}
	if got, want := FormatMessageProperties(map[string]string{"b": "2", "a": "x y"}), "a=x%20y&b=2"; got != want {
		t.Fatalf("FormatMessageProperties = %q, want %q", got, want)
	}
}
