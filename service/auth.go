package service

import (
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/dmctl/dmctl/internal/iothub"
)

// SASAuth is symmetric-key authentication with empty keys: the hub
// generates both.
func SASAuth() *iothub.Authentication {
	return &iothub.Authentication{Type: iothub.AuthSAS, SymmetricKey: &iothub.SymmetricKey{}}
}

// ThumbprintAuth is self-signed X.509 authentication: the identity logs in
// with a certificate whose thumbprint is primary or secondary ("" leaves the
// secondary unset). Pass thumbprints through ParseThumbprint first.
func ThumbprintAuth(primary, secondary string) *iothub.Authentication {
	t := &iothub.X509Thumbprint{PrimaryThumbprint: &primary}
	if secondary != "" {
		t.SecondaryThumbprint = &secondary
	}
	return &iothub.Authentication{Type: iothub.AuthSelfSigned, X509Thumbprint: t}
}

// CAAuth is CA-signed X.509 authentication: the identity logs in with a
// certificate that chains to a CA the hub trusts.
func CAAuth() *iothub.Authentication {
	return &iothub.Authentication{Type: iothub.AuthCertificateAuthority}
}

// IsX509 reports whether an authentication type is one of the certificate
// types (selfSigned, certificateAuthority).
func IsX509(authType string) bool {
	return authType == iothub.AuthSelfSigned || authType == iothub.AuthCertificateAuthority
}

// Thumbprint is the thumbprint IoT Hub (and the Azure CLI) records for a
// certificate: the SHA-1 of its DER bytes, in upper-case hex.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// ErrBadThumbprint: a thumbprint is not 40 (SHA-1) or 64 (SHA-256) hex digits.
var ErrBadThumbprint = errors.New("service: a thumbprint is the certificate's SHA-1 (40 hex digits) or SHA-256 (64 hex digits)")

// ParseThumbprint normalises a thumbprint as IoT Hub stores it: hex digits
// in upper case, without the colons or spaces openssl prints between bytes.
func ParseThumbprint(s string) (string, error) {
	t := strings.ToUpper(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	if len(t) != 2*sha1.Size && len(t) != 64 {
		return "", fmt.Errorf("%w: %q has %d", ErrBadThumbprint, s, len(t))
	}
	if _, err := hex.DecodeString(t); err != nil {
		return "", fmt.Errorf("%w: %q is not hex", ErrBadThumbprint, s)
	}
	return t, nil
}

// ParseCertificatePEM returns the first certificate of a PEM file (the
// device's own certificate comes first in a chain).
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New(`no PEM "CERTIFICATE" block found`)
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return cert, nil
	}
}
