package rollout

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/internal/retry"
	"github.com/dmctl/dmctl/sas"
	"github.com/dmctl/dmctl/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeHubClient serves h over TLS until the test ends and returns a
// service client for it that retries at once.
func fakeHubClient(t *testing.T, h http.HandlerFunc) *service.Client {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	cs, err := sas.ParseService("HostName=" + srv.Listener.Addr().String() +
		";SharedAccessKeyName=iothubowner;SharedAccessKey=cm9sbG91dCB0ZXN0IGtleQ==")
	if err != nil {
		t.Fatal(err)
	}
	c, err := service.New(cs, service.WithRootCAs(pool), service.WithRetry(4, retry.Constant(0)),
		service.WithLogger(zerolog.New(zerolog.NewTestWriter(t))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
