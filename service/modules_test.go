package service

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
)

func TestModuleRequests(t *testing.T) {
	mod := iothub.Module{ModuleID: "m 1", DeviceID: "d/1", ETag: "MQ==",
		Authentication: &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: "cA==", SecondaryKey: "cw=="}}}
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "DELETE":
			w.WriteHeader(204)
		case strings.HasSuffix(r.URL.Path, "/modules"):
			writeJSON(w, 200, []iothub.Module{mod})
		default:
			writeJSON(w, 200, mod)
		}
	})
	ctx := testContext(t)
	type call struct {
		name, method, rawPath, ifMatch string
		body                           string // "" when the call sends none
		run                            func() error
	}
	calls := []call{
		{"create", "PUT", "/devices/d%2F1/modules/m%201", "", `{"moduleId":"m 1","deviceId":"d/1","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}`,
			func() error { _, err := c.CreateModule(ctx, "d/1", "m 1", nil); return err }},
		{"create x509", "PUT", "/devices/d%2F1/modules/m%201", "", `{"moduleId":"m 1","deviceId":"d/1","authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":"AB","secondaryThumbprint":null}}}`,
			func() error { _, err := c.CreateModule(ctx, "d/1", "m 1", ThumbprintAuth("AB", "")); return err }},
		{"update", "PUT", "/devices/d%2F1/modules/m%201", `"MQ=="`, `{"moduleId":"m 1","deviceId":"d/1","managedBy":"edge","authentication":{"type":"certificateAuthority"}}`,
			func() error {
				_, err := c.UpdateModule(ctx, iothub.Module{ModuleID: "m 1", DeviceID: "d/1", ManagedBy: "edge", Authentication: CAAuth()}, "MQ==")
				return err
			}},
		{"get", "GET", "/devices/d%2F1/modules/m%201", "", "", func() error { _, err := c.Module(ctx, "d/1", "m 1"); return err }},
		{"list", "GET", "/devices/d%2F1/modules", "", "", func() error { _, err := c.Modules(ctx, "d/1"); return err }},
		{"delete", "DELETE", "/devices/d%2F1/modules/m%201", `"*"`, "", func() error { return c.DeleteModule(ctx, "d/1", "m 1", "") }},
		{"twin", "GET", "/twins/d%2F1/modules/m%201", "", "", func() error { _, err := c.ModuleTwin(ctx, "d/1", "m 1"); return err }},
		{"twin update", "PATCH", "/twins/d%2F1/modules/m%201", `"AAE="`, `{"tags":{"a":1}}`,
			func() error {
				_, err := c.UpdateModuleTwin(ctx, "d/1", "m 1", TwinPatch{Tags: json.RawMessage(`{"a":1}`)}, "AAE=")
				return err
			}},
		{"invoke", "POST", "/twins/d%2F1/modules/m%201/methods", "", `{"methodName":"ping","payload":{}}`,
			func() error {
				_, err := c.InvokeModuleMethod(ctx, "d/1", "m 1", iothub.MethodRequest{MethodName: "ping", Payload: json.RawMessage(`{}`)})
				return err
			}},
	}
	for i, cl := range calls {
		if err := cl.run(); err != nil {
			t.Errorf("%s: %v", cl.name, err)
			continue
		}
		reqs := rec.all()
		if len(reqs) != i+1 {
			t.Fatalf("%s: %d requests in all, want %d", cl.name, len(reqs), i+1)
		}
		r := reqs[i]
		path := r.RawPath
		if path == "" {
			path = r.Path
		}
		if r.Method != cl.method || path != cl.rawPath {
			t.Errorf("%s: sent %s %s, want %s %s", cl.name, r.Method, path, cl.method, cl.rawPath)
		}
		if got := r.Header.Get("If-Match"); got != cl.ifMatch {
			t.Errorf("%s: If-Match %q, want %q", cl.name, got, cl.ifMatch)
		}
		if got := strings.TrimSpace(string(r.Body)); got != cl.body {
			t.Errorf("%s: body\n%s\nwant\n%s", cl.name, got, cl.body)
		}
	}
}

func TestModuleErrors(t *testing.T) {
	c, _, rec := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "PUT":
			writeJSON(w, 409, iothub.RegistryErrorBody(iothub.CodeModuleAlreadyExists, "exists", time.Now()))
		case strings.HasPrefix(r.URL.Path, "/devices/nodev/"):
			writeJSON(w, 404, iothub.RegistryErrorBody(iothub.CodeDeviceNotFound, "nodev", time.Now()))
		default:
			writeJSON(w, 404, iothub.RegistryErrorBody(iothub.CodeModuleNotFound, "nomod", time.Now()))
		}
	})
	ctx := testContext(t)
	_, err := c.CreateModule(ctx, "d", "m", nil)
	if !errors.Is(err, ErrModuleAlreadyExists) || errors.Is(err, ErrDeviceAlreadyExists) {
		t.Errorf("create of an existing module: %v", err)
	}
	if !strings.Contains(err.Error(), `module "m" of device "d"`) || !strings.Contains(err.Error(), "module already exists") {
		t.Errorf("create error text: %v", err)
	}
	if rec.count() != 1 {
		t.Errorf("a refused create was sent %d times", rec.count())
	}
	_, err = c.Module(ctx, "d", "m")
	if !errors.Is(err, ErrModuleNotFound) || errors.Is(err, ErrDeviceNotFound) || !strings.Contains(err.Error(), "module not found") {
		t.Errorf("get of a missing module: %v", err)
	}
	if _, err := c.Modules(ctx, "nodev"); !errors.Is(err, ErrDeviceNotFound) {
		t.Errorf("modules of a missing device: %v", err)
	}
	n := rec.count()
	for name, err := range map[string]error{
		"create": func() error { _, err := c.CreateModule(ctx, "d", "", nil); return err }(),
		"get":    func() error { _, err := c.Module(ctx, "", "m"); return err }(),
		"list":   func() error { _, err := c.Modules(ctx, ""); return err }(),
		"delete": c.DeleteModule(ctx, "d", "", ""),
		"twin":   func() error { _, err := c.ModuleTwin(ctx, "d", ""); return err }(),
		"invoke": func() error {
			_, err := c.InvokeModuleMethod(ctx, "d", "", iothub.MethodRequest{MethodName: "x"})
			return err
		}(),
		"no name": func() error { _, err := c.InvokeModuleMethod(ctx, "d", "m", iothub.MethodRequest{}); return err }(),
	} {
		if err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("%s with an empty id or name: %v", name, err)
		}
	}
	if rec.count() != n {
		t.Errorf("calls with empty ids reached the hub")
	}
}

func TestConnectionStrings(t *testing.T) {
	c, _, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {})
	host := c.HostName()
	sasAuth := &iothub.Authentication{Type: "sas", SymmetricKey: &iothub.SymmetricKey{PrimaryKey: "cA==", SecondaryKey: "cw=="}}
	for _, tc := range []struct {
		name  string
		got   func() (string, error)
		want  string
		noKey bool
	}{
		{"device primary", func() (string, error) {
			return c.DeviceConnectionString(&iothub.Device{DeviceID: "d", Authentication: sasAuth}, PrimaryKey)
		}, "HostName=" + host + ";DeviceId=d;SharedAccessKey=cA==", false},
		{"device x509 thumbprint", func() (string, error) {
			return c.DeviceConnectionString(&iothub.Device{DeviceID: "d", Authentication: ThumbprintAuth("AB", "")}, SecondaryKey)
		}, "HostName=" + host + ";DeviceId=d;x509=true", false},
		{"device x509 CA", func() (string, error) {
			return c.DeviceConnectionString(&iothub.Device{DeviceID: "d", Authentication: CAAuth()}, PrimaryKey)
		}, "HostName=" + host + ";DeviceId=d;x509=true", false},
		{"module secondary", func() (string, error) {
			return c.ModuleConnectionString(&iothub.Module{DeviceID: "d", ModuleID: "m", Authentication: sasAuth}, SecondaryKey)
		}, "HostName=" + host + ";DeviceId=d;ModuleId=m;SharedAccessKey=cw==", false},
		{"module x509", func() (string, error) {
			return c.ModuleConnectionString(&iothub.Module{DeviceID: "d", ModuleID: "m", Authentication: CAAuth()}, PrimaryKey)
		}, "HostName=" + host + ";DeviceId=d;ModuleId=m;x509=true", false},
		{"module none", func() (string, error) {
			return c.ModuleConnectionString(&iothub.Module{DeviceID: "d", ModuleID: "m", Authentication: &iothub.Authentication{Type: "none"}}, PrimaryKey)
		}, "", true},
		{"device without auth", func() (string, error) { return c.DeviceConnectionString(&iothub.Device{DeviceID: "d"}, PrimaryKey) }, "", true},
	} {
		got, err := tc.got()
		if tc.noKey {
			if !errors.Is(err, ErrNoSymmetricKey) {
				t.Errorf("%s: %q, %v; want ErrNoSymmetricKey", tc.name, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestThumbprints(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "d1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	// A key before the certificate, as some tools write them: skipped.
	file := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	cert, err := ParseCertificatePEM(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(der)
	want := strings.ToUpper(hex.EncodeToString(sum[:]))
	if got := Thumbprint(cert); got != want {
		t.Errorf("Thumbprint %s, want %s", got, want)
	}
	if _, err := ParseCertificatePEM(file[:len(file)-len(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))]); err == nil {
		t.Error("a file with no certificate parsed")
	}
	if _, err := ParseCertificatePEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})); err == nil {
		t.Error("a junk certificate parsed")
	}

	colons := strings.ToLower(want[:2]) + ":" + want[2:4]
	for in, out := range map[string]string{
		strings.ToLower(want):    want,
		" " + want + " ":         want,
		colons + want[4:]:        want,
		strings.Repeat("ab", 32): strings.Repeat("AB", 32),
	} {
		if got, err := ParseThumbprint(in); err != nil || got != out {
			t.Errorf("ParseThumbprint(%q) = %q, %v; want %q", in, got, err, out)
		}
	}
	for _, bad := range []string{"", "AB", want + "00", strings.Repeat("G", 40)} {
		if got, err := ParseThumbprint(bad); !errors.Is(err, ErrBadThumbprint) {
			t.Errorf("ParseThumbprint(%q) = %q, %v; want ErrBadThumbprint", bad, got, err)
		}
	}
}
