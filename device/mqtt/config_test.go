package mqtt_test

import (
	"testing"

	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/sas"
)

func TestNewTargets(t *testing.T) {
	const key = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MDEyMzQ="
	for _, tt := range []struct {
		cs        string
		transport mqtt.Transport
		want      string
	}{
		{"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=" + key, "", "h.azure-devices.net:8883"},
		{"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=" + key, mqtt.TransportWebSockets, "h.azure-devices.net:443"},
		{"HostName=localhost:9000;DeviceId=d;SharedAccessKey=" + key, mqtt.TransportMQTT, "localhost:9000"},
		{"HostName=localhost:9000;DeviceId=d;SharedAccessKey=" + key, mqtt.TransportWebSockets, "localhost:9000"},
		{"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=" + key + ";GatewayHostName=edge", mqtt.TransportMQTT, "edge:8883"},
		{"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=" + key + ";GatewayHostName=localhost:1234", mqtt.TransportWebSockets, "localhost:1234"},
	} {
		cs, err := sas.ParseDevice(tt.cs)
		if err != nil {
			t.Fatal(err)
		}
		c, err := mqtt.New(mqtt.Config{ConnectionString: cs, Transport: tt.transport})
		if err != nil {
			t.Fatalf("New(%s): %v", cs, err)
		}
		if got := c.Target(); got != tt.want {
			t.Errorf("%s over %q: target %s, want %s", cs, tt.transport, got, tt.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	cs, err := sas.ParseDevice("HostName=h;DeviceId=d;x509=true")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mqtt.New(mqtt.Config{ConnectionString: cs}); err == nil {
		t.Error("x509 identity accepted")
	}
	if _, err := mqtt.New(mqtt.Config{}); err == nil {
		t.Error("missing connection string accepted")
	}
	good, _ := sas.ParseDevice("HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0")
	if _, err := mqtt.New(mqtt.Config{ConnectionString: good, Transport: "amqp"}); err == nil {
		t.Error("unknown transport accepted")
	}
	c, _ := mqtt.New(mqtt.Config{ConnectionString: good})
	if err := c.Report(t.Context(), []byte(`[1]`)); err == nil {
		t.Error("a patch that is not an object was accepted")
	}
}
