package mqtt_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dmctl/dmctl/internal/testcert"

	"github.com/rs/zerolog"

	"github.com/dmctl/dmctl/device"
	"github.com/dmctl/dmctl/device/devicetest"
	"github.com/dmctl/dmctl/device/mqtt"
	"github.com/dmctl/dmctl/hub/hubtest"
	"github.com/dmctl/dmctl/internal/iothub"
	"github.com/dmctl/dmctl/sas"
)

const wireKey = "c2VjcmV0LWtleS1mb3ItdGVzdHM="

const thermostat = "dtmi:com:example:Thermostat;1"

func parseCS(t *testing.T, s string) *sas.ConnectionString {
	t.Helper()
	cs, err := sas.ParseDevice(s)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// wireDevice runs a simulated device against h with cfg (the connection
// string set) until the test ends.
func wireDevice(t *testing.T, h *wireHub, cfg mqtt.Config) (*mqtt.Conn, *devicetest.Recorder) {
	t.Helper()
	rec := devicetest.NewRecorder()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	cfg.RootCAs = h.ca.Pool()
	cfg.ClientType = "dmctl/test"
	cfg.Backoff = fastBackoff
	cfg.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	cfg.OnEvent = rec.Record
	cfg.Log = log
	conn, err := mqtt.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dev := device.New(conn, device.Config{OnEvent: rec.Record, Log: log, RebootDelay: device.NoRebootDelay})
	runWire(t, dev.Run)
	return conn, rec
}

// A module connects as "{device}/{module}" with a token for its own
// resource, signed with its key, and announces its model id; a reboot
// works as for a device, and its events name the module.
func TestModuleOnTheWire(t *testing.T) {
	h := newWireHub(t, nil, false)
	h.reboot = true
	cs := parseCS(t, "HostName="+h.host+";DeviceId=dev1;ModuleId=mod1;SharedAccessKey="+wireKey)
	conn, rec := wireDevice(t, h, mqtt.Config{ConnectionString: cs, ModelID: thermostat})

	w := h.next(t)
	cp := w.connect
	if cp.ClientIdentifier != "dev1/mod1" {
		t.Errorf("client id %q, want dev1/mod1", cp.ClientIdentifier)
	}
	wantUser := h.host + "/dev1/mod1/?api-version=" + iothub.APIVersion +
		"&DeviceClientType=dmctl%2Ftest&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1"
	if cp.Username != wantUser {
		t.Errorf("username %q, want %q", cp.Username, wantUser)
	}
	if got := iothub.UsernameModelID(cp.Username); got != thermostat {
		t.Errorf("the hub reads model id %q from the username, want %q", got, thermostat)
	}
	if !cp.PasswordFlag {
		t.Fatal("no SAS token in the password")
	}
	tok, err := sas.Verify(string(cp.Password), sas.Audience{Hosts: []string{h.host}, Path: "devices/dev1/modules/mod1"}, time.Now(), wireKey)
	if err != nil {
		t.Fatalf("the module's token does not verify with its key: %v", err)
	}
	if want := h.host + "/devices/dev1/modules/mod1"; tok.Resource != want {
		t.Errorf("token resource %q, want %q", tok.Resource, want)
	}
	if _, err := sas.Verify(string(cp.Password), sas.Audience{Hosts: []string{h.host}, Path: "devices/dev1"}, time.Now(), wireKey); !errors.Is(err, sas.ErrAudience) {
		t.Errorf("the module's token grants its device too: %v", err)
	}
	if _, err := w.peerLeaf(); err == nil {
		t.Error("a SAS module presented a client certificate")
	}
	if conn.DeviceID() != "dev1" || conn.ModuleID() != "mod1" {
		t.Errorf("Conn names %q/%q", conn.DeviceID(), conn.ModuleID())
	}

	// rebootDevice: answered 200, offline, back as the module, rebootTime reported.
	res := h.published(t, "method answer")
	// The firmware state, reported after the first twin read, may come
	// before the answer.
	for i := 0; i < 3 && strings.HasPrefix(res.TopicName, "$iothub/twin/"); i++ {
		res = h.published(t, "method answer after the firmware state")
	}
	if status, rid, ok := iothub.ParseMethodResponseTopic(res.TopicName); !ok || status != 200 || rid != "r1" {
		t.Errorf("method answer on %q, want status 200 for $rid r1", res.TopicName)
	}
	if again := h.next(t).connect; again.ClientIdentifier != "dev1/mod1" || again.Username != wantUser {
		t.Errorf("reconnected after the reboot as %q (%q)", again.ClientIdentifier, again.Username)
	}
	patch := h.published(t, "reported rebootTime")
	var reported map[string]any
	// The firmware state, reported after the first twin read, may come
	// first (and twice: once unanswered before the reboot).
	for i := 0; i < 3 && json.Unmarshal(patch.Payload, &reported) == nil && reported["firmware"] != nil; i++ {
		patch, reported = h.published(t, "reported rebootTime after the firmware state"), nil
	}
	if _, _, ok := iothub.ParseTwinRequestTopic(patch.TopicName); !ok || json.Unmarshal(patch.Payload, &reported) != nil || reported["rebootTime"] == nil {
		t.Errorf("after the reboot the module published %s %s, want a reported rebootTime", patch.TopicName, patch.Payload)
	}
	for _, kind := range []device.EventKind{device.EventConnected, device.EventMethodAnswered, device.EventRebooted} {
		if e := rec.Wait(t, kind, 1, patience); e.DeviceID != "dev1" || e.ModuleID != "mod1" {
			t.Errorf("%s event names %q/%q, want dev1/mod1", kind, e.DeviceID, e.ModuleID)
		}
	}
}

// An x509 identity presents its certificate in the handshake, even when
// the hub names CAs that did not issue it, and sends no password; it has
// no token, so nothing is renewed.
func TestX509OnTheWire(t *testing.T) {
	otherCA := testcert.New(t, testcert.Options{CommonName: "some other CA", CA: true}, nil)
	for _, tc := range []struct {
		name, cs, clientID string
		transport          mqtt.Transport
	}{
		{"device", "DeviceId=dev1;x509=true", "dev1", mqtt.TransportMQTT},
		{"module", "DeviceId=dev1;ModuleId=mod1;x509=true", "dev1/mod1", mqtt.TransportMQTT},
		{"device over WebSockets", "DeviceId=dev1;x509=true", "dev1", mqtt.TransportWebSockets},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newWireHub(t, otherCA.Pool(), false)
			if tc.transport == mqtt.TransportWebSockets {
				h = newWireWSHub(t, otherCA.Pool())
			}
			cert := testcert.New(t, testcert.Options{CommonName: "dev1"}, nil)
			tc2 := cert.TLS()
			_, rec := wireDevice(t, h, mqtt.Config{
				ConnectionString: parseCS(t, "HostName="+h.host+";"+tc.cs),
				Transport:        tc.transport,
				Certificate:      &tc2,
				// A clock an hour behind makes any token due for renewal
				// at once (see the SAS case below).
				SASTTL: time.Second,
				Now:    func() time.Time { return time.Now().Add(-time.Hour) },
			})
			w := h.next(t)
			leaf, err := w.peerLeaf()
			if err != nil || !bytes.Equal(leaf.Raw, cert.Leaf.Raw) {
				t.Fatalf("client certificate: %v, want the device's", err)
			}
			cp := w.connect
			wantUser := h.host + "/" + tc.clientID + "/?api-version=" + iothub.APIVersion + "&DeviceClientType=dmctl%2Ftest"
			if cp.ClientIdentifier != tc.clientID || cp.Username != wantUser {
				t.Errorf("CONNECT as %q with username %q, want %q and %q", cp.ClientIdentifier, cp.Username, tc.clientID, wantUser)
			}
			if cp.PasswordFlag || len(cp.Password) != 0 {
				t.Errorf("an x509 identity sent a password (flag %v, %d bytes)", cp.PasswordFlag, len(cp.Password))
			}
			if e := rec.Wait(t, device.EventConnected, 1, patience); !e.TokenExpires.IsZero() || e.Transport != string(tc.transport) {
				t.Errorf("connected event %+v, want no token expiry over %s", e, tc.transport)
			}
			h.none(t, 500*time.Millisecond, "an x509 identity has no token to renew")
		})
	}
	// The same clock makes a SAS device renew at once: the wait above can
	// see a renewal.
	t.Run("SAS renews", func(t *testing.T) {
		h := newWireHub(t, nil, false)
		wireDevice(t, h, mqtt.Config{
			ConnectionString: parseCS(t, "HostName="+h.host+";DeviceId=dev1;SharedAccessKey="+wireKey),
			SASTTL:           time.Second,
			Now:              func() time.Time { return time.Now().Add(-time.Hour) },
		})
		h.next(t)
		if again := h.next(t).connect; !again.PasswordFlag {
			t.Error("the renewed connection has no token")
		}
	})
}

// A hub that refuses the certificate in the handshake (a TLS alert, not a
// CONNACK) ends Run with ErrUnauthorized on the first connect.
func TestX509RefusedInHandshake(t *testing.T) {
	otherCA := testcert.New(t, testcert.Options{CommonName: "some other CA", CA: true}, nil)
	h := newWireHub(t, otherCA.Pool(), true)
	cert := testcert.New(t, testcert.Options{CommonName: "dev1"}, nil).TLS()
	err := runOnce(t, mqtt.Config{
		ConnectionString: parseCS(t, "HostName="+h.host+";DeviceId=dev1;x509=true"),
		Certificate:      &cert,
		RootCAs:          h.ca.Pool(),
	})
	if !errors.Is(err, device.ErrUnauthorized) || !strings.Contains(err.Error(), "refused the client certificate") {
		t.Fatalf("Run = %v, want ErrUnauthorized naming the refused certificate", err)
	}
}

// A device that announces a model id connects to the local hub like any
// other and answers methods.
func TestModelIDWithHub(t *testing.T) {
	srv := hubtest.NewServer(t)
	startDevice(t, srv, "pnp1", mqtt.Config{ModelID: thermostat}, device.Config{})
	if res := newREST(t, srv).invoke(t, "pnp1", "echo", `{"pnp":true}`, 0); res.Status != 200 || string(res.Payload) != `{"pnp":true}` {
		t.Errorf("echo = %d %s", res.Status, res.Payload)
	}
}

func TestNewIdentityRejects(t *testing.T) {
	cert := testcert.New(t, testcert.Options{CommonName: "d"}, nil).TLS()
	x509CS := parseCS(t, "HostName=h;DeviceId=d;x509=true")
	sasCS := parseCS(t, "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey="+wireKey)
	for _, tc := range []struct {
		name string
		cfg  mqtt.Config
		want string
	}{
		{"x509 without certificate", mqtt.Config{ConnectionString: x509CS}, "d is an x509 identity: it needs a client certificate"},
		{"certificate with SAS", mqtt.Config{ConnectionString: sasCS, Certificate: &cert}, "d/m authenticates with SAS"},
		{"certificate without key", mqtt.Config{ConnectionString: x509CS, Certificate: &tls.Certificate{Certificate: cert.Certificate}}, "no private key"},
		{"model id without dtmi:", mqtt.Config{ConnectionString: sasCS, ModelID: "com:example:Thermostat;1"}, `must start with "dtmi:"`},
		{"bare dtmi:", mqtt.Config{ConnectionString: sasCS, ModelID: "dtmi:"}, `must start with "dtmi:"`},
		{"model id with a space", mqtt.Config{ConnectionString: sasCS, ModelID: "dtmi:com:ex ample;1"}, "space"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mqtt.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// A shared TLS configuration is never modified: an x509 Conn adds its
// certificate to a copy.
func TestX509KeepsSharedTLSConfig(t *testing.T) {
	cert := testcert.New(t, testcert.Options{CommonName: "d"}, nil).TLS()
	shared := &tls.Config{MinVersion: tls.VersionTLS12}
	_, err := mqtt.New(mqtt.Config{ConnectionString: parseCS(t, "HostName=h;DeviceId=d;x509=true"), Certificate: &cert, TLSConfig: shared})
	if err != nil {
		t.Fatal(err)
	}
	if shared.GetClientCertificate != nil || len(shared.Certificates) != 0 {
		t.Fatal("New wrote the client certificate into the shared TLS config")
	}
}
