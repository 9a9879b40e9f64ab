package hubtest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// connect dials the hub as the device of cs with a raw MQTT client.
func connect(t *testing.T, hs *hubtest.Server, cs string) (paho.Client, <-chan error) {
	t.Helper()
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	opts := paho.NewClientOptions().
		AddBroker("tls://" + hs.Addr()).
		SetClientID(c.DeviceID).
		SetUsername(iothub.Username(c.HostName, c.DeviceID, "", "")).
		SetPassword(tok).
		SetTLSConfig(&tls.Config{RootCAs: hs.CAPool(), ServerName: c.Host()}).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	cl := paho.NewClient(opts)
	ct := cl.Connect()
	if !ct.WaitTimeout(20*time.Second) || ct.Error() != nil {
		t.Fatalf("connect: %v", ct.Error())
	}
	t.Cleanup(func() { cl.Disconnect(0) })
	return cl, lost
}

func TestServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	hs := hubtest.NewServer(t)

	svc, err := sas.ParseService(hs.ServiceConnectionString())
	if err != nil {
		t.Fatal(err)
	}
	if svc.HostName != hs.HostName() || svc.SharedAccessKeyName != "iothubowner" {
		t.Fatalf("service connection string for %s (%s)", svc.HostName, svc.SharedAccessKeyName)
	}
	pem, err := os.ReadFile(hs.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) || !pool.Equal(hs.CAPool()) {
		t.Fatal("CAFile and CAPool differ")
	}

	cs := hs.CreateDevice(t, "d1")
	dcs, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	if dcs.HostName != hs.HostName() || dcs.DeviceID != "d1" {
		t.Fatalf("device connection string for %s/%s", dcs.HostName, dcs.DeviceID)
	}

	_, lost := connect(t, hs, cs)
	if err := hs.WaitConnected(ctx, "d1", true); err != nil {
		t.Fatal(err)
	}

	addr := hs.Addr()
	hs.Restart(t)
	if hs.Addr() != addr || hs.Hub().Addrs()[0] != addr {
		t.Fatalf("restarted on %v, want %s", hs.Hub().Addrs(), addr)
	}
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("the restart did not drop the device")
	}
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatal(err)
	}

	// The registry survived; the device comes back on the same address.
	cl, _ := connect(t, hs, cs)
	if err := hs.WaitConnected(ctx, "d1", true); err != nil {
		t.Fatal(err)
	}
	methodTopic := iothub.MethodRequestTopic("m", "1")
	done, stop := context.WithCancel(ctx)
	stop()
	if err := hs.WaitSubscribed(done, "d1", methodTopic); err == nil {
		t.Fatal("WaitSubscribed returned nil for a device that never subscribed")
	}
	if st := cl.Subscribe(iothub.MethodsFilter, 0, func(paho.Client, paho.Message) {}); !st.WaitTimeout(10*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	if err := hs.WaitSubscribed(ctx, "d1", methodTopic); err != nil {
		t.Fatal(err)
	}
}

func TestWaitConnectedHonoursContext(t *testing.T) {
	hs := hubtest.NewServer(t)
	hs.CreateDevice(t, "d1")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := hs.WaitConnected(ctx, "d1", true); err == nil {
		t.Fatal("WaitConnected returned nil for a device that is not connected")
	}
	if err := hs.WaitConnected(ctx, "d1", false); err != nil {
		t.Fatalf("WaitConnected(false): %v", err)
	}
}

func TestCreateModule(t *testing.T) {
	hs := hubtest.NewServer(t)
	hs.CreateDevice(t, "d1")
	cs := hs.CreateModule(t, "d1", "m1")
	c, err := sas.ParseDevice(cs)
	if err != nil {
		t.Fatal(err)
	}
	m, err := hs.Store().Module("d1", "m1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind() != sas.KindModule || c.DeviceID != "d1" || c.ModuleID != "m1" || c.HostName != hs.HostName() ||
		c.SharedAccessKey != m.Authentication.SymmetricKey.PrimaryKey {
		t.Fatalf("connection string %v does not name module m1 of d1 with its primary key", c)
	}
}
