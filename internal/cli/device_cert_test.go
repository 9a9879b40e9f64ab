package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha1" //nolint:gosec // thumbprints
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/testcert"

	"github.com/dmctl/dmctl/hub/hubtest"
)

// createCert runs a cert command with -o json and returns its result.
func createCert(t *testing.T, args ...string) certResult {
	t.Helper()
	code, out, errOut := runMain(t, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("dmctl %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	var r certResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	return r
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("%s is not one PEM certificate", file)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readKey(t *testing.T, file string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("%s is not a PEM PKCS #8 key", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		t.Fatalf("%s holds a %T, want an ECDSA P-256 key", file, k)
	}
	return ek
}

func mode(t *testing.T, file string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// opensslFingerprint is openssl's digest of a certificate, colons removed,
// or "" when there is no openssl.
func opensslFingerprint(t *testing.T, file, digest string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		return ""
	}
	out, err := exec.Command("openssl", "x509", "-in", file, "-noout", "-fingerprint", "-"+digest).Output()
	if err != nil {
		t.Fatalf("openssl: %v", err)
	}
	_, fp, ok := strings.Cut(strings.TrimSpace(string(out)), "=")
	if !ok {
		t.Fatalf("openssl printed %q", out)
	}
	return strings.ReplaceAll(fp, ":", "")
}

func TestDeviceCertCreate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "d1.pem"), filepath.Join(dir, "d1.key")
	before := time.Now()
	r := createCert(t, "device", "cert", "create", "--device", "d1", "--cert-out", certFile, "--key-out", keyFile)
	if r.CertFile != certFile || r.KeyFile != keyFile {
		t.Errorf("files %q %q, want %q %q", r.CertFile, r.KeyFile, certFile, keyFile)
	}
	if m := mode(t, keyFile); m != 0o600 {
		t.Errorf("key file mode %v, want 0600", m)
	}
	if m := mode(t, certFile); m != 0o644 {
		t.Errorf("certificate file mode %v, want 0644", m)
	}
	c := readCert(t, certFile)
	key := readKey(t, keyFile)
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Error("the key file does not hold the certificate's key")
	}
	if c.Subject.CommonName != "d1" || c.Issuer.String() != c.Subject.String() {
		t.Errorf("subject %q issuer %q, want a self-signed CN=d1", c.Subject, c.Issuer)
	}
	if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("CA %v, key usage %v, ext key usage %v; want a client-auth leaf for digital signatures", c.IsCA, c.KeyUsage, c.ExtKeyUsage)
	}
	if nb := before.Sub(c.NotBefore); nb < 30*time.Second || nb > 2*time.Minute {
		t.Errorf("NotBefore %v is %v before the command, want about a minute", c.NotBefore, nb)
	}
	if days := c.NotAfter.Sub(before).Hours() / 24; days < 364.9 || days > 365.1 {
		t.Errorf("NotAfter %v: %.2f days, want 365", c.NotAfter, days)
	}
	if r.NotAfter != c.NotAfter.UTC().Format(time.RFC3339) {
		t.Errorf("notAfter %q, certificate says %v", r.NotAfter, c.NotAfter)
	}
	s1, s256 := sha1.Sum(c.Raw), sha256.Sum256(c.Raw) //nolint:gosec // thumbprints
	if r.ThumbprintSHA1 != strings.ToUpper(hex.EncodeToString(s1[:])) || r.ThumbprintSHA256 != strings.ToUpper(hex.EncodeToString(s256[:])) {
		t.Errorf("thumbprints %s %s, not the digests of the certificate", r.ThumbprintSHA1, r.ThumbprintSHA256)
	}
	if fp := opensslFingerprint(t, certFile, "sha1"); fp != "" && fp != r.ThumbprintSHA1 {
		t.Errorf("SHA-1 thumbprint %s, openssl says %s", r.ThumbprintSHA1, fp)
	}
	if fp := opensslFingerprint(t, certFile, "sha256"); fp != "" && fp != r.ThumbprintSHA256 {
		t.Errorf("SHA-256 thumbprint %s, openssl says %s", r.ThumbprintSHA256, fp)
	}

	// Another certificate: another serial and key; --days is honoured.
	r2 := createCert(t, "device", "cert", "create", "-d", "d1", "--cert-out", certFile, "--key-out", keyFile, "--force", "--days", "2")
	c2 := readCert(t, certFile)
	if c2.SerialNumber.Cmp(c.SerialNumber) == 0 || c2.SerialNumber.Sign() <= 0 || r2.ThumbprintSHA1 == r.ThumbprintSHA1 {
		t.Errorf("serials %v and %v: want two different positive ones", c.SerialNumber, c2.SerialNumber)
	}
	if days := c2.NotAfter.Sub(before).Hours() / 24; days < 1.9 || days > 2.1 {
		t.Errorf("--days 2: NotAfter %v", c2.NotAfter)
	}
	if m := mode(t, keyFile); m != 0o600 {
		t.Errorf("key file mode after --force %v, want 0600", m)
	}
}

// The x509-ca flow: a CA, a device certificate it signs, chain verified
// for client authentication.
func TestDeviceCertCA(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "ca-key.pem")
	createCert(t, "device", "cert", "create-ca", "--name", "dmctl test CA", "--cert-out", caCert, "--key-out", caKey)
	ca := readCert(t, caCert)
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 || ca.Subject.CommonName != "dmctl test CA" {
		t.Fatalf("CA: IsCA %v, key usage %v, subject %q", ca.IsCA, ca.KeyUsage, ca.Subject)
	}
	if m := mode(t, caKey); m != 0o600 {
		t.Errorf("CA key mode %v, want 0600", m)
	}
	devCert, devKey := filepath.Join(dir, "d2-cert.pem"), filepath.Join(dir, "d2-key.pem")
	createCert(t, "device", "cert", "create", "--device", "d2", "--ca-cert", caCert, "--ca-key", caKey, "--cert-out", devCert, "--key-out", devKey)
	c := readCert(t, devCert)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the device certificate does not chain to the CA: %v", err)
	}
	if c.Subject.CommonName != "d2" || !bytes.Equal(c.AuthorityKeyId, ca.SubjectKeyId) {
		t.Errorf("subject %q, authority key id %x (CA's %x)", c.Subject, c.AuthorityKeyId, ca.SubjectKeyId)
	}
	if fp := opensslVerify(t, caCert, devCert); fp != "" && !strings.Contains(fp, ": OK") {
		t.Errorf("openssl verify: %s", fp)
	}
}

func opensslVerify(t *testing.T, caFile, certFile string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		return ""
	}
	out, _ := exec.Command("openssl", "verify", "-CAfile", caFile, "-purpose", "sslclient", certFile).CombinedOutput()
	return string(out)
}

// A failed create writes nothing: not the first file when the second
// cannot be written, not even with --force.
func TestDeviceCertNothingWritten(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "d.key")
	code, _, errOut := runMain(t, "device", "cert", "create", "-d", "d", "--key-out", keyFile, "--cert-out", filepath.Join(dir, "no", "such", "d.pem"))
	if code != exitFailure || !strings.Contains(errOut, "write ") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(keyFile); err == nil {
		t.Error("the key was written although the certificate could not be")
	}

	if err := os.WriteFile(keyFile, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	aDir := filepath.Join(dir, "a-folder")
	if err := os.Mkdir(aDir, 0o755); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runMain(t, "device", "cert", "create", "-d", "d", "--key-out", keyFile, "--cert-out", aDir, "--force")
	if code != exitUsage || !strings.Contains(errOut, "a-folder is a folder") {
		t.Fatalf("writing a certificate over a folder: exit %d: %s", code, errOut)
	}
	if got, _ := os.ReadFile(keyFile); string(got) != "old" {
		t.Errorf("the key file was replaced (%d bytes) although the certificate failed", len(got))
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

// An expired client certificate is named, with its NotAfter, before the
// device connects (and the hub refuses it).
func TestDeviceRunExpiredCertificateWarns(t *testing.T) {
	h := hubtest.NewServer(t)
	notAfter := time.Now().Add(-time.Hour).Truncate(time.Second)
	cert := testcert.New(t, testcert.Options{CommonName: "x1", NotBefore: notAfter.Add(-24 * time.Hour), NotAfter: notAfter}, nil)
	certFile, keyFile := cert.WriteFiles(t, t.TempDir(), "x1")
	code, _, errOut := runMain(t, "device", "run", "--ca-file", h.CAFile(),
		"--connection-string", "HostName="+h.HostName()+";DeviceId=x1;x509=true", "--cert", certFile, "--key", keyFile)
	if code != exitAuth {
		t.Errorf("exit %d, want %d (refused)", code, exitAuth)
	}
	want := "the client certificate expired on " + notAfter.UTC().Format(time.RFC3339)
	warn, _, _ := strings.Cut(errOut, "\n")
	if !strings.Contains(warn, want) || !strings.Contains(warn, `"level":"warn"`) {
		t.Errorf("first line of stderr %q, want a warning saying %q", warn, want)
	}
	if !strings.Contains(errOut, "dmctl: hint: check that the device is registered with this certificate's thumbprint") {
		t.Errorf("no x509 hint:\n%s", errOut)
	}
}
