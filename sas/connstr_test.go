package sas

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     ConnectionString
		kind     Kind
		resource string
		host     string
		port     int
	}{
		{
			name: "device",
			in:   "HostName=myhub.azure-devices.net;DeviceId=myDevice;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "myhub.azure-devices.net", DeviceID: "myDevice", SharedAccessKey: testKey},
			kind: KindDevice, resource: "myhub.azure-devices.net/devices/myDevice", host: "myhub.azure-devices.net", port: 8883,
		},
		{
			name: "module, keys in another order, trailing and empty elements",
			in:   ";ModuleId=myModule;;SharedAccessKey=" + testKey + ";DeviceId=myDevice;HostName=myhub.azure-devices.net;",
			want: ConnectionString{HostName: "myhub.azure-devices.net", DeviceID: "myDevice", ModuleID: "myModule", SharedAccessKey: testKey},
			kind: KindModule, resource: "myhub.azure-devices.net/devices/myDevice/modules/myModule", host: "myhub.azure-devices.net", port: 8883,
		},
		{
			name: "service policy",
			in:   "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "myhub.azure-devices.net", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey},
			kind: KindService, resource: "myhub.azure-devices.net", host: "myhub.azure-devices.net", port: 8883,
		},
		{
			name: "device with policy key and port",
			in:   "HostName=localhost:8883;DeviceId=d1;SharedAccessKeyName=device;SharedAccessKey=" + testKey,
			want: ConnectionString{HostName: "localhost:8883", DeviceID: "d1", SharedAccessKeyName: "device", SharedAccessKey: testKey},
			kind: KindDevice, resource: "localhost:8883/devices/d1", host: "localhost", port: 8883,
		},
		{
			name: "SAS value keeps = and & and unknown keys are ignored",
			in:   "HostName=myhub.azure-devices.net;DeviceId=myDevice;Foo=bar;SharedAccessSignature=" + vectorA,
			want: ConnectionString{HostName: "myhub.azure-devices.net", DeviceID: "myDevice", SharedAccessSignature: vectorA},
			kind: KindDevice, resource: "myhub.azure-devices.net/devices/myDevice", host: "myhub.azure-devices.net", port: 8883,
		},
		{
			name: "x509 with gateway and IPv6 host",
			in:   "HostName=[::1]:9000;DeviceId=dev-1;x509=TRUE;GatewayHostName=edge.local",
			want: ConnectionString{HostName: "[::1]:9000", DeviceID: "dev-1", X509: true, GatewayHostName: "edge.local"},
			kind: KindDevice, resource: "[::1]:9000/devices/dev-1", host: "::1", port: 9000,
		},
		{
			name: "id with every allowed punctuation, surrounding white space",
			in:   " \tHostName=h;DeviceId=a-:.+%_#*?!(),=@$'z;SharedAccessKey=" + testKey + "\n",
			want: ConnectionString{HostName: "h", DeviceID: "a-:.+%_#*?!(),=@$'z", SharedAccessKey: testKey},
			kind: KindDevice, resource: "h/devices/a-:.+%_#*?!(),=@$'z", host: "h", port: 8883,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if *c != tt.want {
				t.Fatalf("Parse =\n  %#v\nwant\n  %#v", c.Secret(), tt.want.Secret())
			}
			if c.Kind() != tt.kind || c.Resource() != tt.resource || c.Host() != tt.host || c.Port(8883) != tt.port {
				t.Errorf("kind %v resource %q host %q port %d; want %v %q %q %d",
					c.Kind(), c.Resource(), c.Host(), c.Port(8883), tt.kind, tt.resource, tt.host, tt.port)
			}
			again, err := Parse(c.Secret())
			if err != nil || *again != *c {
				t.Errorf("Parse(Secret()) = %v, %v", again, err)
			}
		})
	}
}

func TestParseDeviceAndService(t *testing.T) {
	device := "HostName=h;DeviceId=d;SharedAccessKey=" + testKey
	module := device + ";ModuleId=m"
	service := "HostName=h;SharedAccessKeyName=service;SharedAccessKey=" + testKey
	for _, s := range []string{device, module} {
		if _, err := ParseDevice(s); err != nil {
			t.Errorf("ParseDevice(%s): %v", s, err)
		}
	}
	if _, err := ParseService(service); err != nil {
		t.Errorf("ParseService: %v", err)
	}
	var fe *FieldError
	if _, err := ParseDevice(service); !errors.As(err, &fe) || fe.Key != "DeviceId" {
		t.Errorf("ParseDevice(service) = %v; want FieldError DeviceId", err)
	}
	if _, err := ParseService(module); !errors.As(err, &fe) || fe.Key != "DeviceId" {
		t.Errorf("ParseService(module) = %v; want FieldError DeviceId", err)
	}
}

func TestConnectionStringRedaction(t *testing.T) {
	for _, in := range []string{
		"HostName=h;DeviceId=d;SharedAccessKey=" + testKey,
		"HostName=h;DeviceId=d;SharedAccessSignature=" + vectorA,
	} {
		c, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		secrets := []string{testKey, sigA, "dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%2BpBJv3UEk%3D"}
		outputs := []string{
			c.String(), fmt.Sprint(c), fmt.Sprintf("%v|%+v|%s|%q|%#v", c, c, c, c, c),
			fmt.Sprintf("%v|%+v|%#v", *c, *c, *c), fmt.Sprint([]*ConnectionString{c}),
			fmt.Sprintf("%v", struct{ C *ConnectionString }{c}),
		}
		for _, out := range outputs {
			for _, sec := range secrets {
				if strings.Contains(out, sec) {
					t.Errorf("output %q leaks a secret", out)
				}
			}
			if !strings.Contains(out, "=***") {
				t.Errorf("output %q does not show the redaction", out)
			}
		}
		if !strings.Contains(c.Secret(), testKey) && !strings.Contains(c.Secret(), vectorA) {
			t.Errorf("Secret() = %q lacks the secret", c.Secret())
		}
	}
	c, _ := Parse("HostName=h;DeviceId=d;SharedAccessKey=" + testKey)
	if got, want := c.String(), "HostName=h;DeviceId=d;SharedAccessKey=***"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
	if got, want := c.Secret(), "HostName=h;DeviceId=d;SharedAccessKey="+testKey; got != want {
		t.Errorf("Secret() = %q; want %q", got, want)
	}
}

func TestPortDefault(t *testing.T) {
	c, err := Parse("HostName=myhub.azure-devices.net;DeviceId=d;x509=true")
	if err != nil {
		t.Fatal(err)
	}
	if c.Port(443) != 443 || c.Host() != "myhub.azure-devices.net" {
		t.Errorf("Port %d Host %q", c.Port(443), c.Host())
	}
}

func TestKeyLengthBounds(t *testing.T) {
	// 1 and 64 decoded bytes are accepted, 65 refused.
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"QQ==", true},
		{strings.Repeat("QUFB", 21) + "QQ==", true},  // 64 bytes
		{strings.Repeat("QUFB", 21) + "QUE=", false}, // 65 bytes
	} {
		_, err := Parse("HostName=h;DeviceId=d;SharedAccessKey=" + tc.key)
		if (err == nil) != tc.ok {
			t.Errorf("key of %d chars: err = %v; want ok=%v", len(tc.key), err, tc.ok)
		}
		_, err = Sign(tc.key, "h", "", time.Unix(1, 0))
		if (err == nil) != tc.ok {
			t.Errorf("Sign with key of %d chars: err = %v; want ok=%v", len(tc.key), err, tc.ok)
		}
	}
}

func TestTokenRoundTripAndRedacted(t *testing.T) {
	tok, err := ParseToken(vectorCNode)
	if err != nil {
		t.Fatal(err)
	}
	want := Token{
		Resource: "myhub.azure-devices.net", RawResource: "myhub.azure-devices.net",
		Signature: "DwoKjclnBythPhAc6HZHd61odhEJXQEMvOQZIgMb8nY=", Expiry: time.Unix(testSe, 0).UTC(),
		RawExpiry: "1700000000", KeyName: "iothubowner",
	}
	if *tok != want {
		t.Fatalf("ParseToken = %+v; want %+v", *tok, want)
	}
	if tok.String() != vectorC {
		t.Errorf("String() = %q; want %q", tok.String(), vectorC)
	}
	if got := tok.Redacted(); got != "SharedAccessSignature sr=myhub.azure-devices.net&sig=***&se=1700000000&skn=iothubowner" {
		t.Errorf("Redacted() = %q", got)
	}
	if tok.Expiry.Location() != time.UTC {
		t.Errorf("expiry not UTC")
	}
	// Unknown fields are ignored and dropped by String.
	tok2, err := ParseToken(vectorA + "&foo=bar")
	if err != nil || tok2.String() != vectorA {
		t.Errorf("with unknown field: %v, %v", tok2, err)
	}
}

func TestKindString(t *testing.T) {
	if KindDevice.String() != "device" || KindModule.String() != "module" || KindService.String() != "service" || Kind(9).String() != "Kind(9)" {
		t.Error("Kind.String")
	}
}
