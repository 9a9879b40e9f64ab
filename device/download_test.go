package device_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dmctl/dmctl/device"
)

// packageServer serves /good (the bytes of pkg), /slow (never ends), /big
// (more than the limit) and 404 for anything else, over TLS.
func packageServer(t *testing.T, pkg []byte) (*httptest.Server, *device.Downloader) {
	t.Helper()
	hold := make(chan struct{}) // /slow answers no more before the test ends
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good":
			w.Write(pkg)
		case "/slow":
			w.Write([]byte("part"))
			w.(http.Flusher).Flush()
			select {
			case <-hold:
			case <-time.After(patience):
			}
		case "/big":
			w.Write(make([]byte, 2048))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(hold) }) // before Close, which waits for handlers
	dl := device.NewDownloader(device.DownloaderConfig{
		RootCAs:  srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		MaxBytes: 1024,
		Timeout:  300 * time.Millisecond,
	})
	return srv, dl
}

func TestDownloaderFetch(t *testing.T) {
	pkg := []byte("firmware 2.0.0")
	want := sha256.Sum256(pkg)
	srv, dl := packageServer(t, pkg)
	file := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(file, pkg, 0o600); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on: listen, note the port, close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String() + "/good"
	l.Close()

	for _, ok := range []string{srv.URL + "/good", "file://" + file, "file://localhost" + file} {
		p, err := dl.Fetch(t.Context(), ok)
		if err != nil || p.SHA256 != want || p.Size != int64(len(pkg)) {
			t.Errorf("Fetch(%s) = %x, %d, %v; want %x, %d", ok, p.SHA256, p.Size, err, want, len(pkg))
		}
	}
	for _, tc := range []struct{ uri, want string }{
		{srv.URL + "/missing?sig=SECRET", "download failed: HTTP 404"},
		{srv.URL + "/slow", "download failed: timed out after 300ms"},
		{srv.URL + "/big", "download failed: package larger than"},
		{closed + "?sig=SECRET", "download failed: "},
		{"file://" + file + ".missing", "download failed: no such file"},
		{"file://otherhost/fw.bin", "bad package URI: file:// must name a local path"},
		{"ftp://host/fw.bin", `bad package URI: scheme "ftp"`},
		{"https:///fw.bin", "bad package URI: https:// needs a host"},
		{"::not a url", "bad package URI"},
	} {
		_, err := dl.Fetch(t.Context(), tc.uri)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Fetch(%s) = %v, want an error starting %q", tc.uri, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), file)) {
			t.Errorf("Fetch(%s) error %q shows the URI", tc.uri, err)
		}
	}
	// An untrusted server: the system roots do not include httptest's CA.
	untrusting := device.NewDownloader(device.DownloaderConfig{})
	if _, err := untrusting.Fetch(t.Context(), srv.URL+"/good"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Fetch from an untrusted server = %v, want a certificate error", err)
	}
}

func TestDownloaderBoundsConcurrency(t *testing.T) {
	var now, peak atomic.Int32
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Write([]byte("pkg"))
	}))
	defer srv.Close()
	dl := device.NewDownloader(device.DownloaderConfig{
		RootCAs:     srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		Concurrency: 3,
	})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Go(func() {
			_, err := dl.Fetch(t.Context(), srv.URL+"/p")
			errs <- err
		})
	}
	deadline := time.Now().Add(patience)
	for now.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d downloads in progress after %v, want 3", now.Load(), patience)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // would a fourth get in?
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Fetch: %v", err)
		}
	}
	if p := peak.Load(); p != 3 {
		t.Errorf("at most %d downloads ran at once, want 3", p)
	}
}

func TestDownloaderWaitHonoursContext(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	dl := device.NewDownloader(device.DownloaderConfig{
		RootCAs:     srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		Concurrency: 1,
	})
	go dl.Fetch(t.Context(), srv.URL+"/a") // takes the only slot until release
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := dl.Fetch(ctx, srv.URL+"/b"); err != context.DeadlineExceeded {
		t.Errorf("Fetch waiting for a slot past its context = %v, want context.DeadlineExceeded", err)
	}
}

func TestParseCheckValue(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	for _, v := range []string{
		hex.EncodeToString(sum[:]),
		strings.ToUpper(hex.EncodeToString(sum[:])),
		base64.StdEncoding.EncodeToString(sum[:]),
		base64.RawURLEncoding.EncodeToString(sum[:]),
	} {
		got, err := device.ParseCheckValue(v)
		if err != nil || got != sum {
			t.Errorf("ParseCheckValue(%q) = %x, %v; want %x", v, got, err, sum)
		}
	}
	for _, v := range []string{"", "1234", "123456abcde", hex.EncodeToString(sum[:31]), strings.Repeat("zz", 32)} {
		if _, err := device.ParseCheckValue(v); err == nil || !strings.Contains(err.Error(), "not a SHA-256 digest") {
			t.Errorf("ParseCheckValue(%q) = %v, want a 'not a SHA-256 digest' error", v, err)
		}
	}
}
