package sas

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestRefusals is the table of malformed and rejected inputs. Every case
// checks the sentinel with errors.Is, that no other sentinel matches, the
// FieldError key where there is one, and that the error text carries none of
// the secrets involved.
func TestRefusals(t *testing.T) {
	const (
		host = "HostName=myhub.azure-devices.net"
		dev  = host + ";DeviceId=myDevice"
		key  = "SharedAccessKey=" + testKey
	)
	badKey := "bm90IGEga2V5IGF0IGFsbA" // unpadded base64
	longKey := strings.Repeat("QUFB", 21) + "QUE="
	parse := func(s string) func() error { return func() error { _, err := Parse(s); return err } }
	parseToken := func(s string) func() error { return func() error { _, err := ParseToken(s); return err } }
	verify := func(token, path string, now time.Time, keys ...string) func() error {
		return func() error { _, err := Verify(token, Audience{hubHosts, path}, now, keys...); return err }
	}
	const sigPart = "&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%2BpBJv3UEk%3D"
	const srPart = "sr=myhub.azure-devices.net%2Fdevices%2FmyDevice"

	tests := []struct {
		name  string
		run   func() error
		want  error
		field string // FieldError.Key, or "" when no FieldError is expected
	}{
		// Connection strings.
		{"cs empty", parse(""), ErrMalformed, "HostName"},
		{"cs only separators and blanks", parse(" ;; "), ErrMalformed, "HostName"},
		{"cs element without =", parse(dev + ";" + key + ";" + "justtext"), ErrMalformed, ""},
		{"cs element that is a bare key", parse(dev + ";QUFB"), ErrMalformed, ""},
		{"cs empty key name", parse(dev + ";=" + testKey), ErrMalformed, ""},
		{"cs duplicate HostName", parse(dev + ";" + key + ";HostName=other"), ErrMalformed, "HostName"},
		{"cs duplicate SharedAccessKey", parse(dev + ";" + key + ";" + key), ErrMalformed, "SharedAccessKey"},
		{"cs empty DeviceId value", parse(host + ";DeviceId=;" + key), ErrMalformed, "DeviceId"},
		{"cs key not base64", parse(dev + ";SharedAccessKey=not*base64*" + testKey), ErrMalformed, "SharedAccessKey"},
		{"cs key unpadded base64", parse(dev + ";SharedAccessKey=" + badKey), ErrMalformed, "SharedAccessKey"},
		{"cs key url-safe base64", parse(dev + ";SharedAccessKey=ab-_"), ErrMalformed, "SharedAccessKey"},
		{"cs key longer than 64 bytes", parse(dev + ";SharedAccessKey=" + longKey), ErrMalformed, "SharedAccessKey"},
		{"cs key with line break", parse(dev + ";SharedAccessKey=dGhpcyBpcyBhIHRlc3Qga2V5IGZv\ncjBkbWN0bCEhIQ=="), ErrMalformed, "SharedAccessKey"},
		{"cs missing HostName", parse("DeviceId=myDevice;" + key), ErrMalformed, "HostName"},
		{"cs key name in wrong case", parse("hostname=myhub.azure-devices.net;DeviceId=myDevice;" + key), ErrMalformed, "HostName"},
		{"cs x509 in wrong case", parse(dev + ";X509=true"), ErrMalformed, "x509"},
		{"cs misspelled key is unknown, so the key is missing", parse(dev + ";SharedAccesKey=" + testKey), ErrMalformed, "SharedAccessKey"},
		{"cs HostName port not a number", parse("HostName=h:https;DeviceId=d;" + key), ErrMalformed, "HostName"},
		{"cs HostName port out of range", parse("HostName=h:65536;DeviceId=d;" + key), ErrMalformed, "HostName"},
		{"cs HostName is a URL", parse("HostName=https://h/;DeviceId=d;" + key), ErrMalformed, "HostName"},
		{"cs GatewayHostName with space", parse(dev + ";" + key + ";GatewayHostName=a b"), ErrMalformed, "GatewayHostName"},
		{"cs DeviceId with slash", parse(host + ";DeviceId=a/b;" + key), ErrMalformed, "DeviceId"},
		{"cs ModuleId too long", parse(dev + ";ModuleId=" + strings.Repeat("m", 129) + ";" + key), ErrMalformed, "ModuleId"},
		{"cs policy name with space", parse(host + ";SharedAccessKeyName=my policy;" + key), ErrMalformed, "SharedAccessKeyName"},
		{"cs neither DeviceId nor policy", parse(host + ";" + key), ErrMalformed, "DeviceId"},
		{"cs ModuleId without DeviceId", parse(host + ";ModuleId=m;" + key), ErrMalformed, "DeviceId"},
		{"cs device without credential", parse(dev), ErrMalformed, "SharedAccessKey"},
		{"cs key and x509", parse(dev + ";" + key + ";x509=true"), ErrMalformed, "x509"},
		{"cs key and SAS", parse(dev + ";" + key + ";SharedAccessSignature=" + vectorA), ErrMalformed, "SharedAccessSignature"},
		{"cs SAS and x509", parse(dev + ";x509=true;SharedAccessSignature=" + vectorA), ErrMalformed, "x509"},
		{"cs x509 not true", parse(dev + ";x509=false"), ErrMalformed, "x509"},
		{"cs malformed SAS value", parse(dev + ";SharedAccessSignature=SharedAccessSignature sr=x&sig=" + sigA), ErrMalformed, "SharedAccessSignature"},
		{"cs policy name without key", parse(dev + ";SharedAccessKeyName=device;x509=true"), ErrMalformed, "SharedAccessKey"},
		{"cs service without key", parse(host + ";SharedAccessKeyName=iothubowner"), ErrMalformed, "SharedAccessKey"},
		{"cs service with x509", parse(host + ";SharedAccessKeyName=iothubowner;x509=true"), ErrMalformed, "x509"},
		{"cs service with SAS", parse(host + ";SharedAccessKeyName=iothubowner;SharedAccessSignature=" + vectorC), ErrMalformed, "SharedAccessSignature"},
		{"cs quoted in single quotes", parse("'" + dev + ";" + key + "'"), ErrMalformed, ""},
		{"cs quoted in double quotes", parse(`"` + dev + ";" + key + `"`), ErrMalformed, ""},
		{"cs misspelled policy key is named, not a missing DeviceId", parse(host + ";SharedAccessKeyNam=iothubowner;" + key), ErrMalformed, "SharedAccessKeyName"},
		{"cs unknown key names no known key", parse(host + ";Policy=iothubowner;" + key), ErrMalformed, ""},
		{"cs unknown key that is a pasted secret", parse(dev + ";" + key + ";" + testKey[:len(testKey)-1] + "=;x509=false"), ErrMalformed, "x509"},
		{"ParseService of device", func() error { _, err := ParseService(dev + ";" + key); return err }, ErrMalformed, "DeviceId"},
		{"ParseDevice of service", func() error {
			_, err := ParseDevice(host + ";SharedAccessKeyName=iothubowner;" + key)
			return err
		}, ErrMalformed, "DeviceId"},
		{"Token of x509 identity", func() error {
			c, err := Parse(dev + ";x509=true")
			if err != nil {
				return err
			}
			_, err = c.Token(time.Unix(testSe, 0))
			return err
		}, ErrMalformed, "SharedAccessKey"},

		// Tokens: syntax.
		{"token empty", parseToken(""), ErrMalformed, ""},
		{"token without prefix", parseToken(srPart + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token lowercase prefix", parseToken(strings.ToLower("SharedAccessSignature ") + srPart + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token two spaces after prefix", parseToken("SharedAccessSignature  " + srPart + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token missing sr", parseToken("SharedAccessSignature " + sigPart[1:] + "&se=1700000000"), ErrMalformed, ""},
		{"token missing sig", parseToken("SharedAccessSignature " + srPart + "&se=1700000000"), ErrMalformed, ""},
		{"token missing se", parseToken("SharedAccessSignature " + srPart + sigPart), ErrMalformed, ""},
		{"token empty se", parseToken("SharedAccessSignature " + srPart + sigPart + "&se="), ErrMalformed, ""},
		{"token non-numeric se", parseToken("SharedAccessSignature " + srPart + sigPart + "&se=tomorrow"), ErrMalformed, ""},
		{"token negative se", parseToken("SharedAccessSignature " + srPart + sigPart + "&se=-1"), ErrMalformed, ""},
		{"token fractional se", parseToken("SharedAccessSignature " + srPart + sigPart + "&se=1700000000.5"), ErrMalformed, ""},
		{"token se overflows", parseToken("SharedAccessSignature " + srPart + sigPart + "&se=99999999999999999999"), ErrMalformed, ""},
		{"token duplicate sig", parseToken("SharedAccessSignature " + srPart + sigPart + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token duplicate sr", parseToken("SharedAccessSignature " + srPart + "&" + srPart + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token empty field", parseToken("SharedAccessSignature " + srPart + "&" + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token trailing &", parseToken(vectorA + "&"), ErrMalformed, ""},
		{"token field without =", parseToken(vectorA + "&skn"), ErrMalformed, ""},
		{"token empty skn", parseToken(vectorA + "&skn="), ErrMalformed, ""},
		{"token bad escape in sig", parseToken("SharedAccessSignature " + srPart + "&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI%2F%2BpBJv3UEk%3&se=1700000000"), ErrMalformed, ""},
		{"token bad escape in sr", parseToken("SharedAccessSignature sr=myhub%zz" + sigPart + "&se=1700000000"), ErrMalformed, ""},
		{"token signature with form-decoded space for +", parseToken("SharedAccessSignature " + srPart + "&sig=dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI/ pBJv3UEk=&se=1700000000"), ErrMalformed, ""},
		{"token with newline", parseToken(vectorA + "\n"), ErrMalformed, ""},

		// Tokens: verification.
		{"verify expired", verify(vectorA, "devices/myDevice", time.Unix(testSe+1, 0), testKey), ErrExpired, ""},
		{"verify wrong host", verify(vectorE, "devices/myDevice", beforeTest, testKey), ErrAudience, ""},
		{"verify wrong device", verify(vectorA, "devices/otherDevice", beforeTest, testKey), ErrAudience, ""},
		{"verify segment prefix /a/bc is not under /a/b", verify(vectorA, "devices/myDeviceX", beforeTest, testKey), ErrAudience, ""},
		{"verify module token for its device", verify(vectorB, "devices/myDevice", beforeTest, testKey), ErrAudience, ""},
		{"verify wrong key", verify(vectorA, "devices/myDevice", beforeTest, "c2VjcmV0", "c2VjcmV0Mg=="), ErrSignature, ""},
		{"verify tampered se", verify(strings.Replace(vectorA, "se=1700000000", "se=1800000000", 1), "devices/myDevice", beforeTest, testKey), ErrSignature, ""},
		{"verify re-encoded sr (lowercase escapes) with canonical signature", verify(strings.ReplaceAll(vectorA, "%2Fdevices%2F", "%2fdevices%2f"), "devices/myDevice", beforeTest, testKey), ErrSignature, ""},
		{"verify no keys", verify(vectorA, "devices/myDevice", beforeTest, "", ""), ErrSignature, ""},
		{"verify malformed key", verify(vectorA, "devices/myDevice", beforeTest, badKey), ErrMalformed, ""},
		{"verify malformed token", verify(strings.TrimPrefix(vectorA, "SharedAccessSignature "), "devices/myDevice", beforeTest, testKey), ErrMalformed, ""},
		{"sign malformed key", func() error { _, err := Sign(badKey, "h", "", time.Unix(testSe, 0)); return err }, ErrMalformed, ""},
		{"sign empty resource", func() error { _, err := Sign(testKey, "", "", time.Unix(testSe, 0)); return err }, ErrMalformed, ""},
		{"sign expiry before 1970", func() error { _, err := Sign(testKey, "h", "", time.Unix(-1, 0)); return err }, ErrMalformed, ""},
	}
	sentinels := []error{ErrMalformed, ErrExpired, ErrSignature, ErrAudience}
	secrets := []string{testKey, "dGhpcyBpcyBhIHRlc3Qga2V5", sigA, "dH0EX05rxsKTU2k6fSqZxZy9ecDU6lydI", badKey, longKey[:40], "QUFB", "c2VjcmV0"}
	seen := map[string]bool{}
	for _, tt := range tests {
		if seen[tt.name] {
			t.Fatalf("duplicate case name %q", tt.name)
		}
		seen[tt.name] = true
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range sentinels {
				if got := errors.Is(err, s); got != (s == tt.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, s, got)
				}
			}
			var fe *FieldError
			isField := errors.As(err, &fe)
			switch {
			case tt.field == "" && isField && fe.Key != "":
				t.Errorf("FieldError key %q; want none", fe.Key)
			case tt.field != "" && !isField:
				t.Errorf("error %v is not a FieldError; want key %s", err, tt.field)
			case tt.field != "" && fe.Key != tt.field:
				t.Errorf("FieldError key %q; want %q (%v)", fe.Key, tt.field, err)
			}
			if tt.field != "" && !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name %s", err, tt.field)
			}
			for _, sec := range secrets {
				if strings.Contains(err.Error(), sec) {
					t.Errorf("error %q leaks secret %q", err, sec)
				}
			}
		})
	}
	if len(tests) < 25 {
		t.Fatalf("only %d cases", len(tests))
	}
}

// TestRefusalMessages checks what the refusals that are easy to misread say:
// a quoted string is reported as quoted, an unknown key is named (when it
// resembles a known one) ahead of the key it leaves missing, and an unknown
// key that resembles none is reported by position only.
func TestRefusalMessages(t *testing.T) {
	const host = "HostName=myhub.azure-devices.net"
	key := "SharedAccessKey=" + testKey
	tests := []struct {
		in        string
		want, not []string
	}{
		{"'" + host + ";DeviceId=d;" + key + "'", []string{"quoted", "remove the quotes"}, []string{"HostName", testKey}},
		{`"` + host + ";DeviceId=d;" + key + `"`, []string{"quoted"}, []string{"HostName", testKey}},
		{host + ";SharedAccessKeyNam=iothubowner;" + key,
			[]string{`SharedAccessKeyName: element 2 has the unknown key "SharedAccessKeyNam" (did you mean SharedAccessKeyName?)`, "so DeviceId is missing"}, []string{testKey}},
		{host + ";DeviceId=d;SharedAccesKey=" + testKey, []string{`"SharedAccesKey" (did you mean SharedAccessKey?)`}, []string{testKey}},
		{host + ";Policy=iothubowner;" + key, []string{"element 2 has an unknown key name (known: HostName, ", "so DeviceId is missing"}, []string{"Policy", "iothubowner", testKey}},
		{host + ";" + testKey[:20] + "=x;DeviceId=a/b;" + key, []string{"DeviceId: contains '/', which is not allowed", "element 2 has an unknown key name"}, []string{testKey[:20]}},
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		if err == nil {
			t.Fatalf("Parse(%q): no error", tt.in)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) = %q, want it to contain %q", tt.in, err, w)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(err.Error(), n) {
				t.Errorf("Parse(%q) = %q, must not contain %q", tt.in, err, n)
			}
		}
	}
}
