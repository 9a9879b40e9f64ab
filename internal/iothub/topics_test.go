package iothub

import (
	"strings"
	"testing"
)

// Known answers are topic strings quoted in public IoT Hub transcripts and
// docs (protocol.md §3), not produced by this package.
func TestMethodTopics(t *testing.T) {
	if got, want := MethodRequestTopic("ping", "1"), "$iothub/methods/POST/ping/?$rid=1"; got != want {
		t.Fatalf("MethodRequestTopic = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		topic, name, rid string
		ok               bool
	}{
		{"$iothub/methods/POST/ping/?$rid=1", "ping", "1", true},
		{"$iothub/methods/POST/rebootDevice?$rid=abc", "rebootDevice", "abc", true},
		{"$iothub/methods/POST/reboot%20now/?$rid=7", "reboot%20now", "7", true},
		{"$iothub/methods/POST//?$rid=1", "", "", false},
		{"$iothub/methods/POST/ping/", "", "", false},
		{"$iothub/methods/POST/a/b/?$rid=1", "", "", false},
		{"$iothub/methods/res/200/?$rid=1", "", "", false},
	} {
		name, rid, ok := ParseMethodRequestTopic(tc.topic)
		if name != tc.name || rid != tc.rid || ok != tc.ok {
			t.Errorf("ParseMethodRequestTopic(%q) = %q, %q, %v; want %q, %q, %v", tc.topic, name, rid, ok, tc.name, tc.rid, tc.ok)
		}
	}
	if got, want := MethodResponseTopic(200, "1"), "$iothub/methods/res/200/?$rid=1"; got != want {
		t.Fatalf("MethodResponseTopic = %q, want %q", got, want)
	}
	st, rid, ok := ParseMethodResponseTopic("$iothub/methods/res/404/?$rid=ab-1")
	if st != 404 || rid != "ab-1" || !ok {
		t.Fatalf("ParseMethodResponseTopic = %d %q %v", st, rid, ok)
	}
	if _, _, ok := ParseMethodResponseTopic("$iothub/methods/res/x/?$rid=1"); ok {
		t.Fatal("non-numeric status accepted")
	}
}

func TestTwinTopics(t *testing.T) {
	if got, want := TwinResponseTopic(204, "reported_prop", 2), "$iothub/twin/res/204/?$rid=reported_prop&$version=2"; got != want {
		t.Fatalf("TwinResponseTopic = %q, want %q", got, want)
	}
	if got, want := TwinResponseTopic(200, "r1", 0), "$iothub/twin/res/200/?$rid=r1"; got != want {
		t.Fatalf("TwinResponseTopic = %q, want %q", got, want)
	}
	st, rid, v, ok := ParseTwinResponseTopic("$iothub/twin/res/204/?$rid=reported_prop&$version=2")
	if st != 204 || rid != "reported_prop" || v != 2 || !ok {
		t.Fatalf("ParseTwinResponseTopic = %d %q %d %v", st, rid, v, ok)
	}
	for _, tc := range []struct {
		topic string
		op    TwinOp
		rid   string
		ok    bool
	}{
		{"$iothub/twin/GET/?$rid=0", TwinGet, "0", true},
		{"$iothub/twin/PATCH/properties/reported/?$rid=1", TwinPatchReported, "1", true},
		{"$iothub/twin/GET/", 0, "", false},
		{"$iothub/twin/GET/x/?$rid=1", 0, "", false},
		{"$iothub/twin/PATCH/properties/desired/?$rid=1", 0, "", false},
	} {
		op, rid, ok := ParseTwinRequestTopic(tc.topic)
		if op != tc.op || rid != tc.rid || ok != tc.ok {
			t.Errorf("ParseTwinRequestTopic(%q) = %v %q %v", tc.topic, op, rid, ok)
		}
	}
	if TwinGetTopic("r") != "$iothub/twin/GET/?$rid=r" || TwinPatchReportedTopic("r") != "$iothub/twin/PATCH/properties/reported/?$rid=r" {
		t.Fatal("twin request topics")
	}
	if got := DesiredPatchTopic(3); got != "$iothub/twin/PATCH/properties/desired/?$version=3" {
		t.Fatalf("DesiredPatchTopic = %q", got)
	}
	if v, ok := ParseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/?$version=3"); v != 3 || !ok {
		t.Fatalf("ParseDesiredPatchTopic = %d %v", v, ok)
	}
}

func TestParseUsername(t *testing.T) {
	for _, tc := range []struct {
		u, host, dev, mod string
		ok                bool
	}{
		{"myhub.azure-devices.net/dev1/?api-version=2021-04-12", "myhub.azure-devices.net", "dev1", "", true},
		{"myhub.azure-devices.net/dev1/api-version=2016-11-14", "myhub.azure-devices.net", "dev1", "", true},
		{"myhub.azure-devices.net/dev1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4%20(node%20v20.20.2%3B%20Debian%2012%3B%20x64)", "myhub.azure-devices.net", "dev1", "", true},
		{"h/dev1/?api-version=2020-09-30&DeviceClientType=x&model-id=dtmi:a;1", "h", "dev1", "", true},
		{"localhost:8883/dev1/mod1/?api-version=2020-09-30&DeviceClientType=iothubclient%2F1", "localhost:8883", "dev1", "mod1", true},
		{"h/dev1/api-version=2016-11-14&DeviceClientType=c", "h", "dev1", "", true},
		{"h/dev1/api-version=2020-09-30", "h", "dev1", "", true},
		{"h/dev1", "h", "dev1", "", true},
		{"h", "", "", "", false},
		{"", "", "", "", false},
		{"/dev1/", "", "", "", false},
		{"h/a/b/c/", "", "", "", false},
	} {
		host, dev, mod, ok := ParseUsername(tc.u)
		if host != tc.host || dev != tc.dev || mod != tc.mod || ok != tc.ok {
			t.Errorf("ParseUsername(%q) = %q %q %q %v", tc.u, host, dev, mod, ok)
		}
	}
	u := Username("localhost:8883", "d1", "", "dmctl/1.0")
	if u != "localhost:8883/d1/?api-version=2021-04-12&DeviceClientType=dmctl%2F1.0" {
		t.Fatalf("Username = %q", u)
	}
	if h, d, _, ok := ParseUsername(u); h != "localhost:8883" || d != "d1" || !ok {
		t.Fatal("Username does not parse back")
	}
}

func FuzzParseMethodRequestTopic(f *testing.F) {
	f.Add("ping", "1")
	f.Add("reboot%20now", "a&b")
	f.Fuzz(func(t *testing.T, name, rid string) {
		if name == "" || rid == "" || strings.ContainsAny(name, "/?") || strings.ContainsAny(rid, "&") {
			return
		}
		n, r, ok := ParseMethodRequestTopic(MethodRequestTopic(name, rid))
		if !ok || n != name || r != rid {
			t.Fatalf("round trip %q %q -> %q %q %v", name, rid, n, r, ok)
		}
	})
}

func TestUsernameModelID(t *testing.T) {
	u := WithModelID(Username("h.example", "d1", "m1", "dmctl/1"), "dtmi:com:example:Thermostat;1")
	if got := UsernameModelID(u); got != "dtmi:com:example:Thermostat;1" {
		t.Fatalf("UsernameModelID(%q) = %q", u, got)
	}
	if _, dev, mod, ok := ParseUsername(u); !ok || dev != "d1" || mod != "m1" {
		t.Fatalf("ParseUsername(%q) = %q %q %v", u, dev, mod, ok)
	}
	// The form the Python SDK sends: model-id after api-version, unescaped.
	if got := UsernameModelID("h/d1/?api-version=2021-04-12&model-id=dtmi:a:b;1"); got != "dtmi:a:b;1" {
		t.Fatalf("got %q", got)
	}
	if got := UsernameModelID("h/d1/?api-version=2021-04-12"); got != "" {
		t.Fatalf("no model-id: got %q", got)
	}
}
