package sas

import (
	"errors"
	"testing"
	"time"
)

// Known-answer vectors of protocol.md §2.3. Every expected string below is
// copied from the document (or assembled by hand from its signature by
// percent-encoding '/', '+' and '='), never produced by this package.
const (
	testKey = "dGhpcyBpcyBhIHRlc3Qga2V5IGZvciBkbWN0bCEhIQ==" // "this is a test key for dmctl!!!"
	testSe  = 1700000000

	vectorA = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%2BpBJv3UEk%3D&se=1700000000"
	vectorB = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice%2Fmodules%2FmyModule&sig=JYqeWOoNxNTCwZsPl7SKDWzqEWpNX9ex2h%2FultmX3EY%3D&se=1700000000"
	// C in dmctl's canonical order (sr, sig, se, skn) and in Node's order.
	vectorC     = "SharedAccessSignature sr=myhub.azure-devices.net&sig=DwoKjclnBythPhAc6HZHd61odhEJXQEMvOQZIgMb8nY%3D&se=1700000000&skn=iothubowner"
	vectorCNode = "SharedAccessSignature sr=myhub.azure-devices.net&sig=DwoKjclnBythPhAc6HZHd61odhEJXQEMvOQZIgMb8nY%3D&skn=iothubowner&se=1700000000"
	vectorE     = "SharedAccessSignature sr=localhost%3A8883%2Fdevices%2FmyDevice&sig=vsLIQPgvsoqmomhos0M1oBVt8Or45%2FjWK2RL2NoTSjc%3D&se=1700000000"
	// D: amenzhinsky/iothub common/sas_test.go as reproduced in protocol.md.
	vectorD = "SharedAccessSignature sr=test.azure-devices.net&sig=uux4PSAK1s9efNcBHin0pm7O5oENedTWkhqGp8JAyFY%3D&se=1546308061&skn=owner"

	sigA          = "dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI/+pBJv3UEk="
	sigALowercase = "RUaktpBXjOAil6JF3vgqQJetk5jCRxgaTEWNLtEYvvk=" // A's resource signed as "...%2fdevices%2fmyDevice"
	sigAUnencoded = "P9jYVTU0/IM4e4R31NDg0ZfWMs2Tdrfr2lAyg53A5QY=" // A's resource signed unencoded
)

var (
	hubHosts   = []string{"myhub.azure-devices.net"}
	beforeTest = time.Unix(testSe-60, 0)
)

func TestSignKnownAnswers(t *testing.T) {
	tests := []struct {
		name, key, resource, keyName string
		se                           int64
		want                         string
	}{
		{"A device", testKey, "myhub.azure-devices.net/devices/myDevice", "", testSe, vectorA},
		{"B module", testKey, "myhub.azure-devices.net/devices/myDevice/modules/myModule", "", testSe, vectorB},
		{"C policy", testKey, "myhub.azure-devices.net", "iothubowner", testSe, vectorC},
		{"D amenzhinsky cross-check", "c2VjcmV0", "test.azure-devices.net", "owner", 1546308061, vectorD},
		{"E host with port", testKey, "localhost:8883/devices/myDevice", "", testSe, vectorE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Sign(tt.key, tt.resource, tt.keyName, time.Unix(tt.se, 0))
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if got != tt.want {
				t.Errorf("Sign =\n  %s\nwant\n  %s", got, tt.want)
			}
		})
	}
}

func TestSignFractionalExpiryRoundsDown(t *testing.T) {
	got, err := Sign(testKey, "myhub.azure-devices.net/devices/myDevice", "", time.Unix(testSe, 999_999_999))
	if err != nil || got != vectorA {
		t.Fatalf("Sign = %q, %v; want vector A", got, err)
	}
}

func TestConnectionStringTokenKnownAnswers(t *testing.T) {
	tests := []struct{ name, cs, want string }{
		{"A device", "HostName=myhub.azure-devices.net;DeviceId=myDevice;SharedAccessKey=" + testKey, vectorA},
		{"B module", "HostName=myhub.azure-devices.net;DeviceId=myDevice;ModuleId=myModule;SharedAccessKey=" + testKey, vectorB},
		{"C policy", "HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey, vectorC},
		{"E port", "HostName=localhost:8883;DeviceId=myDevice;SharedAccessKey=" + testKey, vectorE},
		{"SAS passthrough", "HostName=myhub.azure-devices.net;DeviceId=myDevice;SharedAccessSignature=" + vectorA, vectorA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.cs)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			// The passthrough token is returned even long after it expired.
			got, err := c.Token(time.Unix(testSe, 0))
			if err != nil || got != tt.want {
				t.Fatalf("Token = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestVerifyKnownAnswers(t *testing.T) {
	tests := []struct {
		name, token string
		aud         Audience
		key         string
		resource    string
		keyName     string
	}{
		{"A", vectorA, Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"B", vectorB, Audience{hubHosts, "devices/myDevice/modules/myModule"}, testKey, "myhub.azure-devices.net/devices/myDevice/modules/myModule", ""},
		{"C", vectorC, Audience{hubHosts, ""}, testKey, "myhub.azure-devices.net", "iothubowner"},
		{"C in Node order", vectorCNode, Audience{hubHosts, "devices/anything"}, testKey, "myhub.azure-devices.net", "iothubowner"},
		{"D", vectorD, Audience{[]string{"TEST.azure-devices.net"}, ""}, "c2VjcmV0", "test.azure-devices.net", "owner"},
		{"E host with port", vectorE, Audience{[]string{"localhost"}, "devices/myDevice"}, testKey, "localhost:8883/devices/myDevice", ""},
		{"E audience with other port", vectorE, Audience{[]string{"LocalHost:443"}, "devices/myDevice"}, testKey, "localhost:8883/devices/myDevice", ""},
		{"A old MQTT doc order sig,se,sr",
			"SharedAccessSignature sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%2BpBJv3UEk%3D&se=1700000000&sr=myhub.azure-devices.net%2Fdevices%2FmyDevice",
			Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"A signature fully raw (+ / = unescaped)",
			"SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice&sig=" + sigA + "&se=1700000000",
			Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"A signature with only + raw",
			"SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F+pBJv3UEk%3D&se=1700000000",
			Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"A signature with lowercase escapes",
			"SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2f%2bpBJv3UEk%3d&se=1700000000",
			Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		// The raw sr is hashed: a client that lowercases the escapes, or
		// signs the unencoded resource, is accepted with its own signature.
		{"lowercase-escaped sr with its signature",
			"SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fmyDevice&sig=RUaktpBXjOAil6JF3vgqQJetk5jCRxgaTEWNLtEYvvk%3D&se=1700000000",
			Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"unencoded sr with its signature",
			"SharedAccessSignature sr=myhub.azure-devices.net/devices/myDevice&sig=P9jYVTU0%2FIM4e4R31NDg0ZfWMs2Tdrfr2lAyg53A5QY%3D&se=1700000000",
			Audience{hubHosts, "devices/myDevice"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"device token covers its module", vectorA, Audience{hubHosts, "devices/myDevice/modules/m1"}, testKey, "myhub.azure-devices.net/devices/myDevice", ""},
		{"secondary key matches", vectorA, Audience{hubHosts, "devices/myDevice"}, "", "myhub.azure-devices.net/devices/myDevice", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := []string{tt.key}
			if tt.key == "" { // primary is another key, secondary is the right one
				keys = []string{"c2VjcmV0", "", testKey}
			}
			now := beforeTest
			if tt.name == "D" {
				now = time.Unix(1546308061, 0)
			}
			tok, err := Verify(tt.token, tt.aud, now, keys...)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if tok.Resource != tt.resource || tok.KeyName != tt.keyName {
				t.Errorf("token resource %q skn %q; want %q %q", tok.Resource, tok.KeyName, tt.resource, tt.keyName)
			}
		})
	}
}

// TestVerifyNegativeVectors uses the signatures protocol.md lists for the
// wrong encodings of A's resource: with A's canonical sr they must not verify,
// and Sign must never produce them.
func TestVerifyNegativeVectors(t *testing.T) {
	for name, sig := range map[string]string{
		"lowercase escapes":    "RUaktpBXjOAil6JF3vgqQJetk5jCRxgaTEWNLtEYvvk%3D",
		"unencoded resource":   "P9jYVTU0%2FIM4e4R31NDg0ZfWMs2Tdrfr2lAyg53A5QY%3D",
		"form-decoded + (%20)": "dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%20pBJv3UEk%3D",
	} {
		t.Run(name, func(t *testing.T) {
			token := "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FmyDevice&sig=" + sig + "&se=1700000000"
			_, err := Verify(token, Audience{hubHosts, "devices/myDevice"}, beforeTest, testKey)
			if !errors.Is(err, ErrSignature) {
				t.Fatalf("Verify = %v; want ErrSignature", err)
			}
		})
	}
	got, err := Sign(testKey, "myhub.azure-devices.net/devices/myDevice", "", time.Unix(testSe, 0))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(got)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Signature != sigA || tok.Signature == sigALowercase || tok.Signature == sigAUnencoded {
		t.Errorf("signature %q; want %q", tok.Signature, sigA)
	}
}

func TestVerifyExpiryBoundary(t *testing.T) {
	aud := Audience{hubHosts, "devices/myDevice"}
	if _, err := Verify(vectorA, aud, time.Unix(testSe, 0), testKey); err != nil {
		t.Errorf("at se: %v; want valid", err)
	}
	if _, err := Verify(vectorA, aud, time.Unix(testSe, 1), testKey); !errors.Is(err, ErrExpired) {
		t.Errorf("just after se: %v; want ErrExpired", err)
	}
}

func TestVerifyReturnsTokenOnFailure(t *testing.T) {
	tok, err := Verify(vectorA, Audience{hubHosts, "devices/other"}, beforeTest, testKey)
	if !errors.Is(err, ErrAudience) || tok == nil || tok.Resource != "myhub.azure-devices.net/devices/myDevice" {
		t.Fatalf("Verify = %+v, %v", tok, err)
	}
}
