package hub_test

import (

	//nolint:gosec // IoT Hub's SHA-1 thumbprints

	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/internal/testcert"
)

// clientCert is c as a TLS client presents it (with its chain).
func clientCert(c *testcert.Cert) *tls.Certificate {
	tc := c.TLS()
	return &tc
}

// writePEM writes the certificates to path.
func writePEM(t *testing.T, path string, certs ...*testcert.Cert) string {
	t.Helper()
	b := testcert.PEM(certs...)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func selfSigned(primary, secondary string) *iothub.Authentication {
	a := &iothub.Authentication{Type: iothub.AuthSelfSigned, X509Thumbprint: &iothub.X509Thumbprint{PrimaryThumbprint: &primary}}
	if secondary != "" {
		a.X509Thumbprint.SecondaryThumbprint = &secondary
	}
	return a
}

var caAuth = &iothub.Authentication{Type: iothub.AuthCertificateAuthority}

func createX509Device(t *testing.T, hs *hubtest.Server, id string, auth *iothub.Authentication) {
	t.Helper()
	if _, err := hs.Store().CreateDevice(iothub.Device{DeviceID: id, Authentication: auth}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
}

func createX509Module(t *testing.T, hs *hubtest.Server, dev, mod string, auth *iothub.Authentication) {
	t.Helper()
	if _, err := hs.Store().CreateModule(iothub.Module{DeviceID: dev, ModuleID: mod, Authentication: auth}); err != nil {
		t.Fatalf("create %s/%s: %v", dev, mod, err)
	}
}

// dialX509 connects as key with no password, presenting cert, and returns
// the CONNACK return code (0 once connected).
func dialX509(t *testing.T, hs *hubtest.Server, key, transport string, cert *testcert.Cert) (*device, byte) {
	t.Helper()
	dev, mod, _ := strings.Cut(key, "/")
	o := connOpts{clientID: key, username: iothub.Username(hs.HostName(), dev, mod, "dmctl-test/1"), transport: transport}
	if cert != nil {
		o.cert = clientCert(cert)
	}
	d, rc, err := dial(t, hs, o)
	if err != nil && rc == 0 {
		t.Fatalf("connect %s: %v", key, err)
	}
	return d, rc
}

func TestX509SelfSigned(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	a := testcert.New(t, testcert.Options{CommonName: "any name"}, nil)
	b := testcert.New(t, testcert.Options{CommonName: "b"}, nil)
	c := testcert.New(t, testcert.Options{CommonName: "c"}, nil)
	m := testcert.New(t, testcert.Options{CommonName: "m1"}, nil)
	// primary SHA-1 (upper case), secondary SHA-256 (lower case).
	createX509Device(t, hs, "sha1", selfSigned(a.SHA1(), b.SHA256()))
	// primary SHA-256 with ':' separators, secondary SHA-1 (lower case).
	colons := a.SHA256()
	var parts []string
	for i := 0; i < len(colons); i += 2 {
		parts = append(parts, colons[i:i+2])
	}
	createX509Device(t, hs, "sha256", selfSigned(strings.Join(parts, ":"), strings.ToLower(c.SHA1())))
	createX509Module(t, hs, "sha1", "m1", selfSigned(m.SHA256(), ""))

	for _, tc := range []struct {
		name, key, transport string
		cert                 *testcert.Cert
	}{
		{"SHA-1 primary", "sha1", "tls", a},
		{"SHA-256 secondary", "sha1", "tls", b},
		{"SHA-256 primary with colons", "sha256", "tls", a},
		{"SHA-1 secondary", "sha256", "tls", c},
		{"over WebSockets", "sha1", "ws", a},
		{"module", "sha1/m1", "tls", m},
		{"module over WebSockets", "sha1/m1", "wsMQTT", m},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, rc := dialX509(t, hs, tc.key, tc.transport, tc.cert)
			if rc != 0 {
				t.Fatalf("CONNACK return code %d", rc)
			}
			if err := hs.WaitConnected(ctx, tc.key, true); err != nil {
				t.Fatal(err)
			}
			// The connection works like any other: a twin round trip.
			d.subscribe(t, iothub.TwinResFilter)
			if topic, _ := d.twinGet(ctx, t, "x1"); topic != "$iothub/twin/res/200/?$rid=x1" {
				t.Fatalf("twin GET answered %s", topic)
			}
			d.c.Disconnect(0)
			if err := hs.WaitConnected(ctx, tc.key, false); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Every refusal of an X.509 login is CONNACK 5 (not authorized).
func TestX509Refused(t *testing.T) {
	trusted := testcert.New(t, testcert.Options{CommonName: "trusted root", CA: true}, nil)
	caFile := writePEM(t, filepath.Join(t.TempDir(), "ca.pem"), trusted)
	hs := hubtest.NewServer(t, hubtest.WithX509CA(caFile))
	untrusted := testcert.New(t, testcert.Options{CommonName: "other root", CA: true}, nil)

	a := testcert.New(t, testcert.Options{CommonName: "A"}, nil)
	b := testcert.New(t, testcert.Options{CommonName: "B"}, nil)
	expired := testcert.New(t, testcert.Options{CommonName: "old", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, nil)
	future := testcert.New(t, testcert.Options{CommonName: "future", NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(48 * time.Hour)}, nil)
	createX509Device(t, hs, "A", selfSigned(a.SHA256(), ""))
	createX509Device(t, hs, "B", selfSigned(b.SHA256(), b.SHA1()))
	createX509Device(t, hs, "old", selfSigned(expired.SHA256(), ""))
	createX509Device(t, hs, "future", selfSigned(future.SHA1(), ""))
	createX509Device(t, hs, "ca", caAuth)
	createX509Device(t, hs, "ca2", caAuth)
	createX509Module(t, hs, "ca", "m1", caAuth)
	createX509Device(t, hs, "none", &iothub.Authentication{Type: iothub.AuthNone})
	sasCS := hs.CreateDevice(t, "sas")
	hs.CreateDevice(t, "host")
	createX509Module(t, hs, "host", "m1", selfSigned(a.SHA1(), ""))
	if _, err := hs.Store().CreateDevice(iothub.Device{DeviceID: "off", Status: "disabled", Authentication: selfSigned(a.SHA1(), "")}); err != nil {
		t.Fatal(err)
	}

	tok := token(t, hs, sasCS, time.Now().Add(time.Hour))
	cases := []struct {
		name     string
		key      string
		cert     *testcert.Cert
		password string
	}{
		{"device A's certificate as device B", "B", a, ""},
		{"thumbprint mismatch", "A", testcert.New(t, testcert.Options{CommonName: "A"}, nil), ""},
		{"expired certificate", "old", expired, ""},
		{"certificate not yet valid", "future", future, ""},
		{"no certificate", "A", nil, ""},
		{"password on an X.509 identity", "A", a, tok},
		{"disabled device", "off", a, ""},
		{"module with another identity's certificate", "host/m1", b, ""},
		{"CA-signed, CN is not the device id", "ca", testcert.New(t, testcert.Options{CommonName: "ca2"}, trusted), ""},
		{"CA-signed, CA not trusted", "ca", testcert.New(t, testcert.Options{CommonName: "ca"}, untrusted), ""},
		{"CA-signed, self-signed with the right CN", "ca", testcert.New(t, testcert.Options{CommonName: "ca"}, nil), ""},
		{"CA-signed, expired", "ca", testcert.New(t, testcert.Options{CommonName: "ca", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, trusted), ""},
		{"CA-signed module, CN is the module id", "ca/m1", testcert.New(t, testcert.Options{CommonName: "m1"}, trusted), ""},
		{"CA-signed module, CN is the device id", "ca/m1", testcert.New(t, testcert.Options{CommonName: "ca"}, trusted), ""},
		{"SAS device with a certificate and no password", "sas", a, ""},
		{"authentication type none", "none", a, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev, mod, _ := strings.Cut(tc.key, "/")
			o := connOpts{clientID: tc.key, username: iothub.Username(hs.HostName(), dev, mod, ""), password: tc.password}
			if tc.cert != nil {
				o.cert = clientCert(tc.cert)
			}
			_, rc, err := dial(t, hs, o)
			if err == nil || rc != 5 {
				t.Fatalf("CONNACK return code %d, want 5 (not authorized); err=%v", rc, err)
			}
		})
	}

	// A SAS device presenting a certificate still logs in with its token.
	d, rc, err := dial(t, hs, connOpts{clientID: "sas", username: iothub.Username(hs.HostName(), "sas", "", ""), password: tok, cert: clientCert(a)})
	if err != nil || rc != 0 {
		t.Fatalf("SAS device with a certificate: rc=%d err=%v", rc, err)
	}
	d.c.Disconnect(0)
}

// certificateAuthority identities log in with a certificate that chains to
// a CA of --x509-ca or of <data>/x509-ca, with CN = device id, or
// {deviceId}/{moduleId} for a module.
func TestX509CertificateAuthority(t *testing.T) {
	ctx := testCtx(t)
	flagRoot := testcert.New(t, testcert.Options{CommonName: "flag root", CA: true}, nil)
	dirRoot := testcert.New(t, testcert.Options{CommonName: "data folder root", CA: true}, nil)
	inter := testcert.New(t, testcert.Options{CommonName: "intermediate", CA: true}, dirRoot)
	data := t.TempDir()
	writePEM(t, filepath.Join(data, hub.DeviceCADir, "fleet.pem"), dirRoot)
	hs := hubtest.NewServer(t,
		hubtest.WithDataDir(data),
		hubtest.WithX509CA(writePEM(t, filepath.Join(t.TempDir(), "ca.pem"), flagRoot)))
	createX509Device(t, hs, "d1", caAuth)
	createX509Module(t, hs, "d1", "m1", caAuth)

	for _, tc := range []struct {
		name, key, transport string
		cert                 *testcert.Cert
	}{
		{"CA of --x509-ca", "d1", "tls", testcert.New(t, testcert.Options{CommonName: "d1"}, flagRoot)},
		{"CA of the data folder, through an intermediate", "d1", "tls", testcert.New(t, testcert.Options{CommonName: "d1"}, inter)},
		{"over WebSockets", "d1", "ws", testcert.New(t, testcert.Options{CommonName: "d1"}, flagRoot)},
		{"module", "d1/m1", "tls", testcert.New(t, testcert.Options{CommonName: "d1/m1"}, inter)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, rc := dialX509(t, hs, tc.key, tc.transport, tc.cert)
			if rc != 0 {
				t.Fatalf("CONNACK return code %d", rc)
			}
			if err := hs.WaitConnected(ctx, tc.key, true); err != nil {
				t.Fatal(err)
			}
			d.c.Disconnect(0)
			if err := hs.WaitConnected(ctx, tc.key, false); err != nil {
				t.Fatal(err)
			}
		})
	}

	// Without the intermediate in the handshake the chain is incomplete.
	leaf := testcert.New(t, testcert.Options{CommonName: "d1"}, inter)
	leaf.Chain = nil
	if _, rc := dialX509(t, hs, "d1", "tls", leaf); rc != 5 {
		t.Fatalf("leaf without its intermediate: CONNACK %d, want 5", rc)
	}
}

// A hub without trusted device CAs refuses certificateAuthority logins.
func TestX509NoTrustedCA(t *testing.T) {
	hs := hubtest.NewServer(t)
	root := testcert.New(t, testcert.Options{CommonName: "root", CA: true}, nil)
	createX509Device(t, hs, "d1", caAuth)
	if _, rc := dialX509(t, hs, "d1", "tls", testcert.New(t, testcert.Options{CommonName: "d1"}, root)); rc != 5 {
		t.Fatalf("CONNACK %d, want 5", rc)
	}
}

// A bad CA file stops New with ErrDeviceCA, before the data folder exists.
func TestX509CAFileErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("no PEM here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(dir, "missing.pem"), empty} {
		data := filepath.Join(dir, "data")
		_, err := hub.New(hub.Config{DataDir: data, Listen: []string{"127.0.0.1:0"}, X509CAFiles: []string{f}})
		if err == nil || !errors.Is(err, hub.ErrDeviceCA) || !strings.Contains(err.Error(), f) {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Fatalf("%s: the data folder was created (%v)", f, err)
		}
	}
}

// A client certificate is a browser's ambient credential: a WebSocket from
// another site's page cannot log in with it. SAS logins and the hub's own
// origin are unaffected.
func TestX509CrossOriginWebSocket(t *testing.T) {
	hs := hubtest.NewServer(t)
	c := testcert.New(t, testcert.Options{CommonName: "d1"}, nil)
	createX509Device(t, hs, "d1", selfSigned(c.SHA256(), ""))
	sasCS := hs.CreateDevice(t, "sas")
	user := iothub.Username(hs.HostName(), "d1", "", "")
	for _, tc := range []struct {
		origin string
		want   byte
	}{
		{"https://evil.example", 5},
		{"https://localhost.evil.example:" + strconv.Itoa(hs.Port()), 5},
		{"null", 5},
		{"https://" + hs.HostName(), 0},
		{"https://localhost", 0},
	} {
		d, rc, err := dial(t, hs, connOpts{clientID: "d1", username: user, transport: "ws", cert: clientCert(c), origin: tc.origin})
		if rc != tc.want || (tc.want == 0) != (err == nil) {
			t.Fatalf("Origin %s: CONNACK %d (err %v), want %d", tc.origin, rc, err, tc.want)
		}
		if d != nil {
			d.c.Disconnect(0)
		}
	}
	d, rc, err := dial(t, hs, connOpts{clientID: "sas", username: iothub.Username(hs.HostName(), "sas", "", ""),
		password: token(t, hs, sasCS, time.Now().Add(time.Hour)), transport: "ws", origin: "https://evil.example"})
	if err != nil || rc != 0 {
		t.Fatalf("SAS device from another origin: rc=%d err=%v", rc, err)
	}
	d.c.Disconnect(0)
}

// A certificate login ends when the certificate does, as a SAS login ends
// with its token.
func TestX509CertificateExpiryDisconnects(t *testing.T) {
	ctx := testCtx(t)
	hs := hubtest.NewServer(t)
	c := testcert.New(t, testcert.Options{CommonName: "d1", NotAfter: time.Now().Add(3 * time.Second)}, nil)
	createX509Device(t, hs, "d1", selfSigned(c.SHA1(), ""))
	d, rc := dialX509(t, hs, "d1", "tls", c)
	if rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	select {
	case <-d.lost:
	case <-ctx.Done():
		t.Fatal("still connected after the certificate expired")
	}
	if time.Now().Before(c.Leaf.NotAfter) {
		t.Fatalf("disconnected before the certificate expired at %s", c.Leaf.NotAfter)
	}
}
