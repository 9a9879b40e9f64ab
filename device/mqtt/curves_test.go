package mqtt_test

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/internal/testcert"
)

// TestFleetKeyExchange: a simulated fleet (its shared TLS configuration)
// offers X25519 and P-256 only, so neither its ClientHello nor the hub's
// answer carries a post-quantum key share (kilobytes each connection keeps
// buffered); the handshake still verifies the hub and completes.
func TestFleetKeyExchange(t *testing.T) {
	ca := testcert.New(t, testcert.Options{CommonName: "curves test CA", CA: true}, nil)
	srv := testcert.New(t, testcert.Options{CommonName: "localhost", Hosts: []string{"localhost"}}, ca)
	offered := make(chan []tls.CurveID, 1)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srv.TLS()},
		MinVersion:   tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			offered <- hello.SupportedCurves
			return nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		accepted <- c.(*tls.Conn).Handshake()
	}()
	conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS12, CurvePreferences: mqtt.CurvePreferences()}
	d := tls.Dialer{Config: conf}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("handshake with the fleet's key exchanges: %v", err)
	}
	defer c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("server side of the handshake: %v", err)
	}
	got := <-offered
	if slices.Contains(got, tls.X25519MLKEM768) || !slices.Contains(got, tls.X25519) {
		t.Errorf("fleet offers %v, want X25519 and P-256 without X25519MLKEM768", got)
	}
	if id := c.(*tls.Conn).ConnectionState().CurveID; id != tls.X25519 {
		t.Errorf("negotiated %v, want X25519", id)
	}
}
