package compat

import (
	"testing"

	"github.com/dmctl/dmctl/internal/testcert"
)

// testCert is a certificate with its key, written as PEM files for the
// SDKs (both Node's tls and Python's ssl take EC P-256 keys).
type testCert struct {
	*testcert.Cert
	certFile string
	keyFile  string
}

// certOpts says what to mint.
type certOpts struct {
	cn     string
	ca     bool
	parent *testCert // nil: self-signed
}

// newTestCert mints a certificate and writes name-cert.pem and name-key.pem
// to dir.
func newTestCert(t *testing.T, dir, name string, o certOpts) testCert {
	t.Helper()
	var parent *testcert.Cert
	if o.parent != nil {
		parent = o.parent.Cert
	}
	c := testcert.New(t, testcert.Options{CommonName: o.cn, CA: o.ca}, parent)
	certFile, keyFile := c.WriteFiles(t, dir, name)
	return testCert{Cert: c, certFile: certFile, keyFile: keyFile}
}
