// Package testcert mints X.509 certificates and keys for tests: device
// certificates (self-signed or CA-signed, through intermediates), device
// CAs and server certificates, with their thumbprints as IoT Hub shows them
// and as PEM files the SDKs read.
package testcert

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // IoT Hub's X.509 thumbprints are SHA-1 or SHA-256
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Cert is a certificate made for a test, with its private key. Chain holds
// the intermediate certificates a client presents after it (empty when the
// issuer is self-signed, a root).
type Cert struct {
	Leaf  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// Options describe a test certificate. Zero fields take defaults: valid
// from an hour ago for a day, ECDSA P-256, client authentication.
type Options struct {
	CommonName string
	NotBefore  time.Time
	NotAfter   time.Time
	// Hosts makes it a server certificate for these names and addresses.
	Hosts []string
	// CA makes it a CA certificate that can sign others.
	CA bool
}

// New makes a certificate signed by parent, or self-signed when parent is
// nil. A parent that is not self-signed (an intermediate) goes into Chain,
// with its own chain.
func New(t testing.TB, o Options, parent *Cert) *Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CommonName},
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	switch {
	case o.CA:
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
	case len(o.Hosts) > 0:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range o.Hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	issuer, signer := tmpl, crypto.Signer(key)
	var chain []*x509.Certificate
	if parent != nil {
		issuer, signer = parent.Leaf, parent.Key
		if parent.Leaf.CheckSignatureFrom(parent.Leaf) != nil {
			chain = append([]*x509.Certificate{parent.Leaf}, parent.Chain...)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Cert{Leaf: leaf, Key: key, Chain: chain}
}

// TLS is the certificate, its chain and key as crypto/tls uses them.
func (c *Cert) TLS() tls.Certificate {
	tc := tls.Certificate{Certificate: [][]byte{c.Leaf.Raw}, PrivateKey: c.Key, Leaf: c.Leaf}
	for _, ic := range c.Chain {
		tc.Certificate = append(tc.Certificate, ic.Raw)
	}
	return tc
}

// SHA1 is the certificate's SHA-1 thumbprint as IoT Hub shows it:
// upper-case hex, no separators.
func (c *Cert) SHA1() string {
	s := sha1.Sum(c.Leaf.Raw) //nolint:gosec // a thumbprint, not a signature
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

// SHA256 is the SHA-256 thumbprint, upper-case hex.
func (c *Cert) SHA256() string {
	s := sha256.Sum256(c.Leaf.Raw)
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

// Pool is a pool holding only this certificate, as a trusted root.
func (c *Cert) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Leaf)
	return p
}

// CertPEM is the certificate in PEM.
func (c *Cert) CertPEM() []byte { return PEM(c) }

// PEM is the certificates' leaves, one PEM block each, in order.
func PEM(certs ...*Cert) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Leaf.Raw})...)
	}
	return b
}

// KeyPEM is the private key in PEM (PKCS #8).
func (c *Cert) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFiles writes the certificate and key as PEM files named
// {name}-cert.pem and {name}-key.pem in dir and returns their paths.
func (c *Cert) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile = filepath.Join(dir, name+"-cert.pem")
	keyFile = filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, c.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, c.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
