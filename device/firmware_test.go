package device_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
	"github.com/rs/zerolog"
)

// fwCall reads the next connection call; a firmware report is returned as
// "status current pending".
func fwCall(t *testing.T, fc *fakeConn) string {
	t.Helper()
	c := fc.next(t)
	patch, ok := strings.CutPrefix(c, "report ")
	if !ok {
		return c
	}
	var r map[string]device.FirmwareReport
	if err := json.Unmarshal([]byte(patch), &r); err != nil {
		return c
	}
	fw, ok := r["firmware"]
	if !ok {
		return c
	}
	return strings.TrimSpace(fmt.Sprintf("%s %s %s", fw.FwUpdateStatus, fw.CurrentFwVersion, fw.PendingFwVersion))
}

func expectCalls(t *testing.T, fc *fakeConn, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := fwCall(t, fc); got != w {
			t.Fatalf("connection call %q, want %q", got, w)
		}
	}
}

func TestFirmwareRollbackIsNotRetriedAndPatchesMerge(t *testing.T) {
	pkg := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(pkg, []byte("2.0.0"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("2.0.0"))
	fc, h, _ := start(t, device.Config{RebootDelay: device.NoRebootDelay, FirmwareApplyDelay: -1, FirmwareVersion: "1.5"})

	twin := fmt.Sprintf(`{"desired":{"$version":1,"firmware":{"fwVersion":"2.0.0","fwPackageURI":"file://%s.missing","fwPackageCheckValue":"%s"}},"reported":{"$version":1}}`,
		pkg, hex.EncodeToString(sum[:]))
	h.HandleTwin([]byte(twin))
	expectCalls(t, fc, "downloading 1.5 2.0.0", "error 1.5 2.0.0", "rolledback 1.5")

	// A reconnect reads the same twin: the rolled-back update is not retried.
	h.HandleTwin([]byte(twin))
	select {
	case c := <-fc.calls:
		t.Fatalf("the same desired firmware after a rollback led to %q, want nothing", c)
	case <-time.After(200 * time.Millisecond):
	}

	// A patch that fixes only the URI: merged with the rest of the object.
	h.HandleDesired(2, []byte(fmt.Sprintf(`{"firmware":{"fwPackageURI":"file://%s"},"$version":2}`, pkg)))
	expectCalls(t, fc, "downloading 1.5 2.0.0", "verifying 1.5 2.0.0", "applying 1.5 2.0.0", "rebooting 1.5 2.0.0",
		"suspend", "resume", "current 2.0.0")
}

func TestFirmwareSameVersionReportsCurrent(t *testing.T) {
	fc, h, _ := start(t, device.Config{RebootDelay: device.NoRebootDelay, FirmwareApplyDelay: -1})
	h.HandleTwin([]byte(`{"desired":{"$version":1},"reported":{"$version":1}}`))
	expectCalls(t, fc, "current 1.0.0")
	h.HandleDesired(2, []byte(`{"firmware":{"fwVersion":"1.0.0","fwPackageURI":"file:///nowhere","fwPackageCheckValue":"x"},"$version":2}`))
	h.HandleDesired(3, []byte(`{"other":1,"$version":3}`))
	select {
	case c := <-fc.calls:
		t.Fatalf("desired firmware equal to the running version led to %q, want nothing (already reported current)", c)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestDesiredPackageURIQueryIsNotLogged(t *testing.T) {
	var logs syncWriter
	_, h, _ := start(t, device.Config{Log: zerolog.New(&logs), FirmwareApplyDelay: -1})
	secret := "sv=2024&sig=S3CRET"
	h.HandleTwin([]byte(`{"desired":{"$version":1,"firmware":{"fwVersion":"1.0.0","fwPackageURI":"https://u:pw@blob.example/fw.bin?` + secret + `"}},"reported":{"$version":1}}`))
	h.HandleDesired(2, []byte(`{"$version":2,"firmware":{"fwVersion":"1.0.0","fwPackageURI":"https://blob.example/fw.bin?`+secret+`"}}`))
	out := logs.String()
	if strings.Contains(out, "S3CRET") || strings.Contains(out, "pw@") {
		t.Errorf("the logs show the package URI's query or password:\n%s", out)
	}
	if !strings.Contains(out, "blob.example/fw.bin?REDACTED") {
		t.Errorf("the logs do not show the redacted package URI:\n%s", out)
	}
}

type syncWriter struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestFactoryResetDuringDownload(t *testing.T) {
	hold := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // the download hangs until the test ends
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(hold)
	dl := device.NewDownloader(device.DownloaderConfig{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs})
	fc, h, rec := start(t, device.Config{RebootDelay: device.NoRebootDelay, FirmwareApplyDelay: -1, FirmwareVersion: "1.0.0", Downloader: dl})
	h.HandleTwin([]byte(`{"desired":{"$version":1,"firmware":{"fwVersion":"2.0.0","fwPackageURI":"` + srv.URL + `/fw.bin","fwPackageCheckValue":"` + strings.Repeat("ab", 32) + `"}},"reported":{"$version":1}}`))
	expectCalls(t, fc, "downloading 1.0.0 2.0.0")

	status, body := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.FactoryResetMethod})
	if status != 200 || !strings.Contains(string(body), "firmware 1.0.0 restored") {
		t.Fatalf("factoryReset = %d %s, want 200 naming the factory version", status, body)
	}
	if status, _ := h.HandleMethod(t.Context(), device.MethodRequest{Name: device.RebootMethod}); status != 409 {
		t.Errorf("rebootDevice during the factory reset = %d, want 409", status)
	}
	reset := fc.next(t)
	if !strings.Contains(reset, `"rebootTime":null`) || !strings.Contains(reset, `"fwUpdateStatus":"current"`) || !strings.Contains(reset, `"currentFwVersion":"1.0.0"`) {
		t.Errorf("first report of the reset %s, want firmware current on 1.0.0 and rebootTime removed", reset)
	}
	expectCalls(t, fc, "suspend", "resume")
	if c := fc.next(t); !strings.HasPrefix(c, `report {"factoryResetTime":"`) {
		t.Errorf("after the reset's reboot %q, want factoryResetTime reported", c)
	}
	rec.Wait(t, device.EventFactoryReset, 1, patience)
	// The desired firmware is still there: the update starts again.
	expectCalls(t, fc, "downloading 1.0.0 2.0.0")
	if n := rec.Count(device.EventFirmwareAbandoned); n != 0 {
		t.Errorf("%d firmware_abandoned events: a reset is not a newer version", n)
	}
}
