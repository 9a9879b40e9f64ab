package sas

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func FuzzParseConnectionString(f *testing.F) {
	for _, s := range []string{
		"HostName=myhub.azure-devices.net;DeviceId=myDevice;SharedAccessKey=" + testKey,
		"HostName=myhub.azure-devices.net;DeviceId=myDevice;ModuleId=myModule;SharedAccessKey=" + testKey,
		"HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey,
		"HostName=localhost:8883;DeviceId=d;SharedAccessSignature=" + vectorA,
		"HostName=[::1]:8883;DeviceId=d;x509=true;GatewayHostName=gw:443",
		";;HostName=h;;DeviceId=a=b;Unknown=1;SharedAccessKey=QQ==;",
		"HostName=h;DeviceId=d;SharedAccessKey=" + testKey + ";SharedAccessKey=" + testKey,
		"DeviceId=d", "x509=true", "=", ";", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse error %v does not match ErrMalformed", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse error %T is not a *FieldError", err)
			}
			return
		}
		again, err := Parse(c.Secret())
		if err != nil {
			t.Fatalf("Parse(Secret()) of %q: %v", s, err)
		}
		if *again != *c {
			t.Fatalf("round trip changed %#v into %#v", c.Secret(), again.Secret())
		}
		red := c.String()
		if c.SharedAccessKey != "" && !strings.Contains(red, "SharedAccessKey=***") ||
			c.SharedAccessSignature != "" && !strings.Contains(red, "SharedAccessSignature=***") ||
			strings.Contains(red, "sig=") {
			t.Fatalf("String() = %q is not redacted", red)
		}
		switch c.Kind() {
		case KindDevice, KindModule:
			if _, err := ParseDevice(c.Secret()); err != nil {
				t.Fatalf("ParseDevice: %v", err)
			}
		case KindService:
			if _, err := ParseService(c.Secret()); err != nil {
				t.Fatalf("ParseService: %v", err)
			}
		default:
			t.Fatalf("kind %v", c.Kind())
		}
		if c.SharedAccessKey != "" {
			tok, err := c.Token(time.Unix(testSe, 0))
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			aud := Audience{Hosts: []string{c.HostName}, Path: strings.TrimPrefix(strings.TrimPrefix(c.Resource(), c.HostName), "/")}
			if _, err := Verify(tok, aud, time.Unix(testSe, 0), c.SharedAccessKey); err != nil {
				t.Fatalf("Verify of own token: %v", err)
			}
		}
	})
}

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{
		vectorA, vectorB, vectorC, vectorCNode, vectorD, vectorE,
		"SharedAccessSignature sr=a%2fb&sig=" + sigA + "&se=00017&foo=x%zz",
		"SharedAccessSignature sig=%41&se=1&sr=%00&skn=%2B+",
		"SharedAccessSignature sr=&sig=&se=",
		"SharedAccessSignature ", "sr=x&sig=y&se=1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseToken error %v does not match ErrMalformed", err)
			}
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil {
			t.Fatalf("ParseToken(String()) of %q: %v", s, err)
		}
		if *again != *tok {
			t.Fatalf("round trip changed %+v into %+v", *tok, *again)
		}
		if again.String() != tok.String() {
			t.Fatalf("String() not stable")
		}
		red, err := ParseToken(tok.Redacted())
		if err != nil || red.Signature != "***" || red.Resource != tok.Resource || red.RawExpiry != tok.RawExpiry || red.KeyName != tok.KeyName {
			t.Fatalf("Redacted() = %q does not re-parse with only the signature elided: %v", tok.Redacted(), err)
		}
		if !strings.HasPrefix(tok.String(), TokenPrefix+"sr=") {
			t.Fatalf("String() = %q not canonical", tok.String())
		}
		// Verification never panics and classifies every failure.
		_, err = Verify(s, Audience{Hosts: []string{"myhub.azure-devices.net"}, Path: "devices/myDevice"}, time.Unix(testSe, 0), testKey)
		if err != nil && !errors.Is(err, ErrAudience) && !errors.Is(err, ErrSignature) && !errors.Is(err, ErrExpired) {
			t.Fatalf("Verify error %v has no sentinel", err)
		}
	})
}

// FuzzParseDeviceService checks that ParseDevice and ParseService split
// what Parse accepts by kind, and refuse everything else with a
// *FieldError matching ErrMalformed.
func FuzzParseDeviceService(f *testing.F) {
	for _, s := range []string{
		"HostName=myhub.azure-devices.net;DeviceId=myDevice;SharedAccessKey=" + testKey,
		"HostName=myhub.azure-devices.net;DeviceId=d;ModuleId=m;SharedAccessKey=" + testKey,
		"HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey,
		"HostName=h;DeviceId=d;SharedAccessKeyName=p;SharedAccessKey=" + testKey,
		"HostName=h;DeviceId=caf\xe9;SharedAccessKey=" + testKey,
		"HostName=h\x00;SharedAccessKeyName=p;SharedAccessKey=" + testKey,
		"HostName=h;SharedAccessKeyName=p", "",
	} {
		f.Add(s)
	}
	malformed := func(t *testing.T, what, s string, err error) {
		t.Helper()
		var fe *FieldError
		if !errors.Is(err, ErrMalformed) || !errors.As(err, &fe) {
			t.Fatalf("%s(%q): error %T %v is not a *FieldError matching ErrMalformed", what, s, err, err)
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, perr := Parse(s)
		d, derr := ParseDevice(s)
		v, serr := ParseService(s)
		if perr != nil {
			malformed(t, "Parse", s, perr)
			malformed(t, "ParseDevice", s, derr)
			malformed(t, "ParseService", s, serr)
			return
		}
		switch c.Kind() {
		case KindService:
			malformed(t, "ParseDevice", s, derr)
			if serr != nil || *v != *c {
				t.Fatalf("ParseService(%q) = %v, %v; Parse gave a service string", s, v, serr)
			}
		default:
			malformed(t, "ParseService", s, serr)
			if derr != nil || *d != *c {
				t.Fatalf("ParseDevice(%q) = %v, %v; Parse gave a device string", s, d, derr)
			}
		}
	})
}

// FuzzSignVerify signs arbitrary resources with arbitrary keys: Sign never
// panics, refuses only with an error matching ErrMalformed, and a token it
// makes parses and verifies for its own resource and key.
func FuzzSignVerify(f *testing.F) {
	f.Add(testKey, "myhub.azure-devices.net/devices/myDevice", "", int64(testSe))
	f.Add(testKey, "myhub.azure-devices.net", "iothubowner", int64(testSe))
	f.Add(testKey, "h:8883/devices/a%2Fb", "p&q=r", int64(1))
	f.Add("not base64!", "h", "", int64(0))
	f.Add("", "", "", int64(-1))
	f.Fuzz(func(t *testing.T, key, resource, keyName string, se int64) {
		if se < 0 || se > 1<<40 {
			return // not an expiry a client can send
		}
		exp := time.Unix(se, 0)
		tok, err := Sign(key, resource, keyName, exp)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Sign(%q, %q, %q): error %v does not match ErrMalformed", key, resource, keyName, err)
			}
			return
		}
		p, err := ParseToken(tok)
		if err != nil {
			t.Fatalf("ParseToken of Sign's token %q: %v", tok, err)
		}
		if p.KeyName != keyName {
			t.Fatalf("skn %q, signed as %q", p.KeyName, keyName)
		}
		host, path, _ := strings.Cut(p.Resource, "/")
		if stripPort(host) == "" {
			return // no host (":" is a port alone): no audience can accept it
		}
		if path != strings.Trim(path, "/") || strings.Contains(path, "//") {
			return // a path no hub resource has
		}
		if _, err := Verify(tok, Audience{Hosts: []string{host}, Path: path}, exp, key); err != nil {
			t.Fatalf("Verify of Sign(%q, %q, %q): %v", key, resource, keyName, err)
		}
	})
}
