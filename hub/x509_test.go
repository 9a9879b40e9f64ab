package hub_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // IoT Hub's SHA-1 thumbprints
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
)

// testCert is a certificate with its key; chain holds the certificates a
// client presents after it (intermediates).
type testCert struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate
}

type certOpts struct {
	cn        string
	ca        bool
	notBefore time.Time // zero: an hour ago
	notAfter  time.Time // zero: in a day
}

// newCert makes a certificate signed by parent, or self-signed when parent
// is nil.
func newCert(t *testing.T, parent *testCert, o certOpts) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(24 * time.Hour)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: o.cn},
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if o.ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
	}
	signer, signerKey := tmpl, key
	var chain []*x509.Certificate
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
		if parent.cert.CheckSignatureFrom(parent.cert) != nil { // an intermediate: present it too
			chain = append([]*x509.Certificate{parent.cert}, parent.chain...)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert: c, key: key, chain: chain}
}

func (c *testCert) tls() *tls.Certificate {
	tc := &tls.Certificate{Certificate: [][]byte{c.cert.Raw}, PrivateKey: c.key, Leaf: c.cert}
	for _, ic := range c.chain {
		tc.Certificate = append(tc.Certificate, ic.Raw)
	}
	return tc
}

func (c *testCert) sha1() string {
	s := sha1.Sum(c.cert.Raw) //nolint:gosec // see the import
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

func (c *testCert) sha256() string {
	s := sha256.Sum256(c.cert.Raw)
	return hex.EncodeToString(s[:])
}

// writePEM writes the certificates to path.
func writePEM(t *testing.T, path string, certs ...*testCert) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
	}
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
func dialX509(t *testing.T, hs *hubtest.Server, key, transport string, cert *testCert) (*device, byte) {
	t.Helper()
	dev, mod, _ := strings.Cut(key, "/")
	o := connOpts{clientID: key, username: iothub.Username(hs.HostName(), dev, mod, "dmctl-test/1"), transport: transport}
	if cert != nil {
		o.cert = cert.tls()
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
	a := newCert(t, nil, certOpts{cn: "any name"})
	b := newCert(t, nil, certOpts{cn: "b"})
	c := newCert(t, nil, certOpts{cn: "c"})
	m := newCert(t, nil, certOpts{cn: "m1"})
	// primary SHA-1 (upper case), secondary SHA-256 (lower case).
	createX509Device(t, hs, "sha1", selfSigned(a.sha1(), b.sha256()))
	// primary SHA-256 with ':' separators, secondary SHA-1 (lower case).
	colons := strings.ToUpper(a.sha256())
	var parts []string
	for i := 0; i < len(colons); i += 2 {
		parts = append(parts, colons[i:i+2])
	}
	createX509Device(t, hs, "sha256", selfSigned(strings.Join(parts, ":"), strings.ToLower(c.sha1())))
	createX509Module(t, hs, "sha1", "m1", selfSigned(m.sha256(), ""))

	for _, tc := range []struct {
		name, key, transport string
		cert                 *testCert
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
	trusted := newCert(t, nil, certOpts{cn: "trusted root", ca: true})
	caFile := writePEM(t, filepath.Join(t.TempDir(), "ca.pem"), trusted)
	hs := hubtest.NewServer(t, hubtest.WithX509CA(caFile))
	untrusted := newCert(t, nil, certOpts{cn: "other root", ca: true})

	a := newCert(t, nil, certOpts{cn: "A"})
	b := newCert(t, nil, certOpts{cn: "B"})
	expired := newCert(t, nil, certOpts{cn: "old", notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	future := newCert(t, nil, certOpts{cn: "future", notBefore: time.Now().Add(time.Hour), notAfter: time.Now().Add(48 * time.Hour)})
	createX509Device(t, hs, "A", selfSigned(a.sha256(), ""))
	createX509Device(t, hs, "B", selfSigned(b.sha256(), b.sha1()))
	createX509Device(t, hs, "old", selfSigned(expired.sha256(), ""))
	createX509Device(t, hs, "future", selfSigned(future.sha1(), ""))
	createX509Device(t, hs, "ca", caAuth)
	createX509Device(t, hs, "ca2", caAuth)
	createX509Module(t, hs, "ca", "m1", caAuth)
	createX509Device(t, hs, "none", &iothub.Authentication{Type: iothub.AuthNone})
	sasCS := hs.CreateDevice(t, "sas")
	hs.CreateDevice(t, "host")
	createX509Module(t, hs, "host", "m1", selfSigned(a.sha1(), ""))
	if _, err := hs.Store().CreateDevice(iothub.Device{DeviceID: "off", Status: "disabled", Authentication: selfSigned(a.sha1(), "")}); err != nil {
		t.Fatal(err)
	}

	tok := token(t, hs, sasCS, time.Now().Add(time.Hour))
	cases := []struct {
		name     string
		key      string
		cert     *testCert
		password string
	}{
		{"device A's certificate as device B", "B", a, ""},
		{"thumbprint mismatch", "A", newCert(t, nil, certOpts{cn: "A"}), ""},
		{"expired certificate", "old", expired, ""},
		{"certificate not yet valid", "future", future, ""},
		{"no certificate", "A", nil, ""},
		{"password on an X.509 identity", "A", a, tok},
		{"disabled device", "off", a, ""},
		{"module with another identity's certificate", "host/m1", b, ""},
		{"CA-signed, CN is not the device id", "ca", newCert(t, trusted, certOpts{cn: "ca2"}), ""},
		{"CA-signed, CA not trusted", "ca", newCert(t, untrusted, certOpts{cn: "ca"}), ""},
		{"CA-signed, self-signed with the right CN", "ca", newCert(t, nil, certOpts{cn: "ca"}), ""},
		{"CA-signed, expired", "ca", newCert(t, trusted, certOpts{cn: "ca", notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)}), ""},
		{"CA-signed module, CN is the module id", "ca/m1", newCert(t, trusted, certOpts{cn: "m1"}), ""},
		{"CA-signed module, CN is the device id", "ca/m1", newCert(t, trusted, certOpts{cn: "ca"}), ""},
		{"SAS device with a certificate and no password", "sas", a, ""},
		{"authentication type none", "none", a, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev, mod, _ := strings.Cut(tc.key, "/")
			o := connOpts{clientID: tc.key, username: iothub.Username(hs.HostName(), dev, mod, ""), password: tc.password}
			if tc.cert != nil {
				o.cert = tc.cert.tls()
			}
			_, rc, err := dial(t, hs, o)
			if err == nil || rc != 5 {
				t.Fatalf("CONNACK return code %d, want 5 (not authorized); err=%v", rc, err)
			}
		})
	}

	// A SAS device presenting a certificate still logs in with its token.
	d, rc, err := dial(t, hs, connOpts{clientID: "sas", username: iothub.Username(hs.HostName(), "sas", "", ""), password: tok, cert: a.tls()})
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
	flagRoot := newCert(t, nil, certOpts{cn: "flag root", ca: true})
	dirRoot := newCert(t, nil, certOpts{cn: "data folder root", ca: true})
	inter := newCert(t, dirRoot, certOpts{cn: "intermediate", ca: true})
	data := t.TempDir()
	writePEM(t, filepath.Join(data, hub.DeviceCADir, "fleet.pem"), dirRoot)
	hs := hubtest.NewServer(t,
		hubtest.WithDataDir(data),
		hubtest.WithX509CA(writePEM(t, filepath.Join(t.TempDir(), "ca.pem"), flagRoot)))
	createX509Device(t, hs, "d1", caAuth)
	createX509Module(t, hs, "d1", "m1", caAuth)

	for _, tc := range []struct {
		name, key, transport string
		cert                 *testCert
	}{
		{"CA of --x509-ca", "d1", "tls", newCert(t, flagRoot, certOpts{cn: "d1"})},
		{"CA of the data folder, through an intermediate", "d1", "tls", newCert(t, inter, certOpts{cn: "d1"})},
		{"over WebSockets", "d1", "ws", newCert(t, flagRoot, certOpts{cn: "d1"})},
		{"module", "d1/m1", "tls", newCert(t, inter, certOpts{cn: "d1/m1"})},
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
	leaf := newCert(t, inter, certOpts{cn: "d1"})
	leaf.chain = nil
	if _, rc := dialX509(t, hs, "d1", "tls", leaf); rc != 5 {
		t.Fatalf("leaf without its intermediate: CONNACK %d, want 5", rc)
	}
}

// A hub without trusted device CAs refuses certificateAuthority logins.
func TestX509NoTrustedCA(t *testing.T) {
	hs := hubtest.NewServer(t)
	root := newCert(t, nil, certOpts{cn: "root", ca: true})
	createX509Device(t, hs, "d1", caAuth)
	if _, rc := dialX509(t, hs, "d1", "tls", newCert(t, root, certOpts{cn: "d1"})); rc != 5 {
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
	c := newCert(t, nil, certOpts{cn: "d1"})
	createX509Device(t, hs, "d1", selfSigned(c.sha256(), ""))
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
		d, rc, err := dial(t, hs, connOpts{clientID: "d1", username: user, transport: "ws", cert: c.tls(), origin: tc.origin})
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
	c := newCert(t, nil, certOpts{cn: "d1", notAfter: time.Now().Add(3 * time.Second)})
	createX509Device(t, hs, "d1", selfSigned(c.sha1(), ""))
	d, rc := dialX509(t, hs, "d1", "tls", c)
	if rc != 0 {
		t.Fatalf("CONNACK %d", rc)
	}
	select {
	case <-d.lost:
	case <-ctx.Done():
		t.Fatal("still connected after the certificate expired")
	}
	if time.Now().Before(c.cert.NotAfter) {
		t.Fatalf("disconnected before the certificate expired at %s", c.cert.NotAfter)
	}
}
