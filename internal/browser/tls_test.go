package browser

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// testCA issues certificates for localhost, as the hub's own CA does.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dmctl browser test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert, key}
}

// issue returns a localhost server certificate with a fresh key, and
// writes it as PEM to dir/name.
func (ca *testCA) issue(t *testing.T, dir, name string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key}, path
}

// serveTLS serves a page titled title with cert on loopback until the test
// ends, and counts the requests it answered.
func serveTLS(t *testing.T, cert tls.Certificate, title string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			hits.Add(1)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, "<!doctype html><title>%s</title><p id=ok>%s</p>", title, title)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // the refused handshakes are the point
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return "https://localhost:" + port + "/", &hits
}

// TestTrustedCertificate: Chromium, told to trust one server certificate
// by its SPKI hash, loads a page served with it, and refuses a page served
// with another certificate of the same CA (a different key): certificate
// checks stay on for everything else. The refused server never sees a
// request.
func TestTrustedCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	good, goodPEM := ca.issue(t, dir, "server.pem")
	other, _ := ca.issue(t, dir, "other.pem")
	goodURL, goodHits := serveTLS(t, good, "trusted")
	otherURL, otherHits := serveTLS(t, other, "other")

	b := startBrowser(t, goodPEM)
	tab := openTab(t, b)

	if err := runFor(tab, 15*time.Second, "the page served with the trusted certificate", chromedp.Navigate(goodURL)); err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("ok")))
	if err != nil {
		t.Fatal(err)
	}
	if text != "trusted" || goodHits.Load() == 0 {
		t.Fatalf("trusted page: text %q after %d requests, want %q", text, goodHits.Load(), "trusted")
	}

	err = runFor(tab, 15*time.Second, "the page served with another certificate", chromedp.Navigate(otherURL))
	if err == nil || !strings.Contains(err.Error(), "ERR_CERT") {
		t.Fatalf("navigating to a server with an untrusted certificate: got %v, want a net::ERR_CERT_... error", err)
	}
	if n := otherHits.Load(); n != 0 {
		t.Fatalf("the server with the untrusted certificate answered %d requests; Chromium must refuse it at the handshake", n)
	}
}

// TestNoTrustRefusesAll: without TrustCert, the same trusted page is
// refused (the SPKI flag, not some leniency, let it through above).
func TestNoTrustRefusesAll(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	good, _ := ca.issue(t, dir, "server.pem")
	url, hits := serveTLS(t, good, "trusted")
	b := startBrowser(t, "")
	tab := openTab(t, b)
	err := runFor(tab, 15*time.Second, "a page whose certificate no one trusts", chromedp.Navigate(url))
	if err == nil || !strings.Contains(err.Error(), "ERR_CERT") {
		t.Fatalf("got %v, want a net::ERR_CERT_... error", err)
	}
	if hits.Load() != 0 {
		t.Fatal("the server answered a request over an untrusted connection")
	}
}

// TestFind: $DMCTL_CHROMIUM wins, else the names on PATH in order; none
// gives an error that names the package to install.
func TestFind(t *testing.T) {
	have := map[string]string{"chromium-browser": "/usr/bin/chromium-browser", "google-chrome": "/opt/google-chrome", "/x/chrome": "/x/chrome"}
	look := func(name string) (string, error) {
		if p, ok := have[name]; ok {
			return p, nil
		}
		return "", errors.New("not found")
	}
	if p, err := find("", look); err != nil || p != "/usr/bin/chromium-browser" {
		t.Errorf("PATH lookup: %q, %v; want chromium-browser, the first present", p, err)
	}
	if p, err := find("/x/chrome", look); err != nil || p != "/x/chrome" {
		t.Errorf("%s=/x/chrome: %q, %v", EnvBinary, p, err)
	}
	if _, err := find("/nowhere/chrome", look); err == nil || !strings.Contains(err.Error(), EnvBinary+"=/nowhere/chrome") {
		t.Errorf("a missing %s binary: %v, want an error naming it", EnvBinary, err)
	}
	none := func(string) (string, error) { return "", errors.New("not found") }
	if _, err := find("", none); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "apt-get install -y chromium") {
		t.Errorf("no browser: %v, want ErrNotFound naming the apt package", err)
	}
}

// TestSPKIHashErrors: a missing file or one without a certificate is an
// error that names the problem.
func TestSPKIHashErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := SPKIHash(filepath.Join(dir, "missing.pem")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := SPKIHash(junk); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("junk file: %v", err)
	}
	if _, err := Start(t.Context(), Config{TrustCert: junk}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("Start with a junk TrustCert: %v", err)
	}
}

// startBrowser starts Chromium for one test, trusting trustPEM, and stops
// it when the test ends.
func startBrowser(t *testing.T, trustPEM string) *Browser {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lockedBuffer{}
	b, err := Start(ctx, Config{TrustCert: trustPEM, Output: out})
	if err != nil {
		cancel()
		t.Fatalf("%v\nchromium's output:\n%s", err, tail(out.String(), 4000))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chromium's output:\n%s", tail(out.String(), 4000))
		}
		if err := b.Close(); err != nil {
			t.Errorf("close browser: %v", err)
		}
		cancel()
	})
	return b
}

// runFor runs actions in tab with their own deadline; the error says what
// was waited for.
func runFor(tab context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tab, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: not done within %v: %w", what, d, err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// openTab opens a tab that closes when the test ends.
func openTab(t *testing.T, b *Browser) context.Context {
	t.Helper()
	tab, cancel, err := b.Tab()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return tab
}
