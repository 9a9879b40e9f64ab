package hub

import (
	"crypto/sha1" //nolint:gosec // IoT Hub registers SHA-1 thumbprints; they identify, they do not sign
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dmctl/dmctl/internal/iothub"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// DeviceCADir is the folder, inside the data folder, whose *.pem files hold
// device CA certificates the hub trusts, beside Config.X509CAFiles.
const DeviceCADir = "x509-ca"

// ErrDeviceCA reports a trusted device CA file that cannot be read or holds
// no certificate.
var ErrDeviceCA = errors.New("hub: device CA file")

// loadDeviceCAs reads the trusted device CAs: every file given and every
// *.pem file of dataDir/x509-ca. It returns nil when there are none. A file
// that cannot be read, or holds a malformed or no certificate, is an error
// matching ErrDeviceCA.
func loadDeviceCAs(dataDir string, files []string) (*x509.CertPool, error) {
	files = slices.Clone(files)
	found, err := filepath.Glob(filepath.Join(dataDir, DeviceCADir, "*.pem"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDeviceCA, err)
	}
	slices.Sort(found)
	files = append(files, found...)
	if len(files) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for _, f := range files {
		certs, err := readCertificates(f)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrDeviceCA, f, err)
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	return pool, nil
}

// readCertificates parses every CERTIFICATE block of a PEM file; other
// blocks are skipped.
func readCertificates(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return out, nil
}

// certConn is a connection that knows the client certificate chain
// presented in its TLS handshake.
type certConn interface {
	PeerCertificates() []*x509.Certificate
}

func peerCertificates(cl *mqtt.Client) []*x509.Certificate {
	if c, ok := cl.Net.Conn.(certConn); ok {
		return c.PeerCertificates()
	}
	return nil
}

// verifyClientCert authenticates an X.509 identity by the chain its client
// presented (leaf first) and returns when the credential ends.
//
//   - selfSigned: the leaf's thumbprint, SHA-1 or SHA-256 of its DER in hex
//     (as IoT Hub accepts: 40 or 64 digits, any case, ':' separators
//     ignored), equals the primary or secondary thumbprint registered. The
//     subject does not matter, as on IoT Hub.
//   - certificateAuthority: the chain verifies against the hub's trusted
//     device CAs and the leaf's subject CN is the device id, or
//     "{deviceId}/{moduleId}" for a module (IoT Hub's convention). Any
//     extended key usage is accepted: IoT Hub sets no requirement, and
//     device certificates carry clientAuth, serverAuth or none.
//
// Either way the leaf must be valid now.
func (s *Server) verifyClientCert(auth *iothub.Authentication, dev, mod string, chain []*x509.Certificate) (time.Time, error) {
	if len(chain) == 0 {
		return time.Time{}, errors.New("no client certificate in the TLS handshake (an X.509 identity connects with its certificate)")
	}
	leaf := chain[0]
	now := s.now()
	if now.Before(leaf.NotBefore) {
		return time.Time{}, fmt.Errorf("client certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return time.Time{}, fmt.Errorf("client certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	switch auth.Type {
	case iothub.AuthSelfSigned:
		var reg []string
		if t := auth.X509Thumbprint; t != nil {
			for _, p := range []*string{t.PrimaryThumbprint, t.SecondaryThumbprint} {
				if p != nil && *p != "" {
					reg = append(reg, *p)
				}
			}
		}
		if !thumbprintMatches(leaf.Raw, reg) {
			return time.Time{}, fmt.Errorf("client certificate (SHA-256 thumbprint %s) matches no registered thumbprint", thumbprint256(leaf))
		}
		return leaf.NotAfter, nil
	case iothub.AuthCertificateAuthority:
		if s.deviceCAs == nil {
			return time.Time{}, fmt.Errorf("no trusted device CA is configured (--x509-ca, or *.pem files in %s)", filepath.Join(s.cfg.DataDir, DeviceCADir))
		}
		want := iothub.ClientID(dev, mod)
		if cn := leaf.Subject.CommonName; cn != want {
			return time.Time{}, fmt.Errorf("client certificate subject CN %q is not %q", cn, want)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		chains, err := leaf.Verify(x509.VerifyOptions{
			Roots:         s.deviceCAs,
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err != nil {
			return time.Time{}, fmt.Errorf("client certificate does not chain to a trusted device CA: %v", err)
		}
		until := leaf.NotAfter
		for _, c := range chains[0] {
			if c.NotAfter.Before(until) {
				until = c.NotAfter
			}
		}
		return until, nil
	}
	return time.Time{}, fmt.Errorf("authentication type %q is not X.509", auth.Type)
}

// thumbprintMatches reports whether one of the registered thumbprints is
// the SHA-1 or SHA-256 thumbprint of der.
func thumbprintMatches(der []byte, registered []string) bool {
	s1 := sha1.Sum(der) //nolint:gosec // see the import
	s256 := sha256.Sum256(der)
	ok := false
	for _, r := range registered {
		want, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(r), ":", ""))
		if err != nil {
			continue
		}
		var got []byte
		switch len(want) {
		case sha1.Size:
			got = s1[:]
		case sha256.Size:
			got = s256[:]
		default:
			continue
		}
		if subtle.ConstantTimeCompare(got, want) == 1 {
			ok = true
		}
	}
	return ok
}

// thumbprint256 is a certificate's SHA-256 thumbprint as IoT Hub shows it:
// upper-case hex of the digest of its DER.
func thumbprint256(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
