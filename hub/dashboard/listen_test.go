package dashboard_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmctl/dmctl/hub"
)

// A busy dashboard port fails New before the data folder is created.
func TestBusyDashboardPortTouchesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := filepath.Join(t.TempDir(), "hub")
	_, err = hub.New(hub.Config{DataDir: dir, Listen: []string{"127.0.0.1:0"}, Dashboard: busy.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "dashboard") {
		t.Fatalf("New with a busy dashboard port: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the data folder exists after the failed New: %v", err)
	}
	if _, err := hub.New(hub.Config{DataDir: dir, Dashboard: "no-port"}); err == nil || !strings.Contains(err.Error(), "dashboard address") {
		t.Fatalf("New with a dashboard address without a port: %v", err)
	}
}

// The dashboard serves the hub's certificate and never asks the browser
// for one of its own.
func TestDashboardTLS(t *testing.T) {
	e := newEnv(t)
	asked := false
	conn, err := tls.Dial("tcp", e.h.DashboardAddr(), &tls.Config{
		RootCAs:    e.h.CAPool(),
		ServerName: "localhost",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked = true
			return &tls.Certificate{}, nil
		},
	})
	if err != nil {
		t.Fatalf("TLS to the dashboard, verified against the hub's CA: %v", err)
	}
	defer conn.Close()
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	if asked {
		t.Fatal("the dashboard asked for a client certificate")
	}
	// Without a dashboard there is none.
	h, err := hub.New(hub.Config{DataDir: t.TempDir(), Listen: []string{"127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if h.DashboardURL() != "" || h.DashboardAddr() != "" || h.Dashboard() != nil {
		t.Fatalf("a hub without Config.Dashboard has one: %q %q", h.DashboardURL(), h.DashboardAddr())
	}
}
