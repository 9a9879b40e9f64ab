package hub

import (
	"bytes"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	names := serverNames("myhub.example", []string{"127.0.0.1:0", "192.0.2.7:8883", ":443"})

	m1, err := loadTLS(dir, "", "", names, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf := m1.cert.Leaf
	wantDNS := []string{"localhost", "myhub.example"}
	if len(leaf.DNSNames) != len(wantDNS) || leaf.DNSNames[0] != wantDNS[0] || leaf.DNSNames[1] != wantDNS[1] {
		t.Fatalf("DNS names %v", leaf.DNSNames)
	}
	for _, ip := range []string{"127.0.0.1", "::1", "192.0.2.7"} {
		if err := leaf.VerifyHostname(ip); err != nil {
			t.Errorf("certificate does not cover %s: %v", ip, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m1.caPool, DNSName: "localhost", CurrentTime: now}); err != nil {
		t.Fatalf("server certificate does not chain to the CA: %v", err)
	}
	for _, f := range []string{caKeyFile, serverKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", f, fi.Mode().Perm())
		}
	}
	if m1.caFile != filepath.Join(dir, caCertFile) {
		t.Fatalf("caFile %q", m1.caFile)
	}
	caPEM := read(t, dir, caCertFile)
	serverPEM := read(t, dir, serverCertFile)

	// Same names, later start: everything is reused.
	if _, err := loadTLS(dir, "", "", names, now.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, dir, caCertFile), caPEM) || !bytes.Equal(read(t, dir, serverCertFile), serverPEM) {
		t.Fatal("certificates were regenerated without reason")
	}

	// Another hostname: new server certificate, same CA.
	other := serverNames("other.example", nil)
	m2, err := loadTLS(dir, "", "", other, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, dir, caCertFile), caPEM) {
		t.Fatal("the CA changed")
	}
	if bytes.Equal(read(t, dir, serverCertFile), serverPEM) {
		t.Fatal("the server certificate was kept for a new hostname")
	}
	if err := m2.cert.Leaf.VerifyHostname("other.example"); err != nil {
		t.Fatal(err)
	}
	serverPEM = read(t, dir, serverCertFile)

	// Close to expiry: renewed.
	if _, err := loadTLS(dir, "", "", other, m2.cert.Leaf.NotAfter.Add(-renewBefore/2)); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(read(t, dir, serverCertFile), serverPEM) {
		t.Fatal("a certificate near expiry was kept")
	}
}

func TestLoadTLSUserCertificate(t *testing.T) {
	src := t.TempDir()
	m, err := loadTLS(src, "", "", serverNames("localhost", nil), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	got, err := loadTLS(dir, filepath.Join(src, serverCertFile), filepath.Join(src, serverKeyFile), certNames{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.cert.Certificate[0], m.cert.Certificate[0]) || got.caFile != "" || got.caPool != nil {
		t.Fatal("user certificate not used as given")
	}
	if _, err := os.Stat(filepath.Join(dir, caCertFile)); !os.IsNotExist(err) {
		t.Fatal("a CA was generated although a certificate was given")
	}
	if _, err := loadTLS(dir, filepath.Join(src, serverCertFile), "", certNames{}, time.Now()); err == nil {
		t.Fatal("certificate without key accepted")
	}
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMatchFilter(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"$iothub/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", true},
		{"$iothub/twin/res/#", "$iothub/twin/res/204/?$rid=x&$version=2", true},
		{"$iothub/twin/#", "$iothub/twin/PATCH/properties/desired/?$version=3", true},
		{"$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/?$version=3", false},
		{"#", "$iothub/methods/POST/reboot/?$rid=1", false},
		{"+/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", false},
		{"devices/d1/messages/devicebound/#", "devices/d1/messages/devicebound/a=b", true},
		{"devices/d1/messages/devicebound/#", "devices/d1/messages/devicebound", true},
		{"devices/+/messages/devicebound/#", "devices/d2/messages/devicebound/x", true},
		{"devices/d1/+", "devices/d1/a/b", false},
		{"devices/d1", "devices/d1/", false},
	}
	for _, tc := range cases {
		if got := matchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchFilter(%q, %q) = %v", tc.filter, tc.topic, got)
		}
	}
}

func TestACL(t *testing.T) {
	cases := []struct {
		topic string
		want  bool
	}{
		{"$iothub/methods/POST/#", true},
		{"$iothub/methods/res/200/?$rid=1", true},
		{"$iothub/twin/GET/?$rid=1", true},
		{"devices/d1/messages/events/", true},
		{"devices/d1/messages/devicebound/#", true},
		{"devices/d10/messages/events/", false},
		{"devices/d2/messages/events/", false},
		{"devices/+/messages/events/", false},
		{"devices/d1", false},
		{"#", false},
		{"$iothub/#", false},
		{"$SYS/#", false},
		{"other", false},
	}
	for _, tc := range cases {
		if got := allowed("d1", tc.topic); got != tc.want {
			t.Errorf("allowed(d1, %q) = %v", tc.topic, got)
		}
	}
}

func TestServerNamesSkipUnspecified(t *testing.T) {
	n := serverNames("localhost", []string{"0.0.0.0:8883", "[::]:443"})
	for _, ip := range n.ips {
		if ip.Equal(net.IPv4zero) || ip.Equal(net.IPv6unspecified) {
			t.Fatalf("unspecified address %v in certificate names", ip)
		}
	}
	if len(n.dns) != 1 || len(n.ips) != 2 {
		t.Fatalf("names %+v", n)
	}
}
