// Package browser starts headless Chromium, driven over the DevTools
// protocol with chromedp, for dmctl's end-to-end tests of the hub's
// dashboard and for the bench.
//
// Chromium is found by Find: $DMCTL_CHROMIUM, else chromium,
// chromium-browser or google-chrome on PATH (Debian's package is
// "chromium"). Start runs it with the flags these machines need (headless,
// no GPU, no QUIC, no background networking, component updates or sync,
// --no-sandbox when running as root) and a fresh temporary user-data-dir
// that Close removes.
//
// TLS stays verified. The hub's certificate is issued by the hub's own CA,
// which Chromium does not know; rather than turning certificate checks off,
// Start names the one certificate to accept with
// --ignore-certificate-errors-spki-list=<base64 SHA-256 of its
// SubjectPublicKeyInfo> (Config.TrustCert, the hub's DataDir/server.pem).
// Chromium honours that flag only when --user-data-dir is given too, which
// Start always does. Every other certificate that does not chain to a
// system root is still refused (TestTrustedCertificate, TestNoTrustRefusesAll).
package browser

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/chromedp/chromedp"
)

// EnvBinary names the environment variable that picks the Chromium binary.
const EnvBinary = "DMCTL_CHROMIUM"

// candidates are the names Find looks up on PATH, in order.
var candidates = []string{"chromium", "chromium-browser", "google-chrome"}

// ErrNotFound is returned by Find when no Chromium is installed.
var ErrNotFound = errors.New("no Chromium found: install Debian's chromium package (apt-get install -y chromium) or set " + EnvBinary + " to the browser's path")

// Find returns the Chromium binary: $DMCTL_CHROMIUM when set (it must be
// an executable file), else the first of chromium, chromium-browser and
// google-chrome on PATH.
func Find() (string, error) {
	return find(os.Getenv(EnvBinary), exec.LookPath)
}

func find(env string, lookPath func(string) (string, error)) (string, error) {
	if env != "" {
		p, err := lookPath(env)
		if err != nil {
			return "", fmt.Errorf("%s=%s: not an executable file: %w", EnvBinary, env, err)
		}
		return p, nil
	}
	for _, name := range candidates {
		if p, err := lookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNotFound
}

// SPKIHash returns the base64 SHA-256 of the SubjectPublicKeyInfo of the
// first certificate in the PEM file, the form
// --ignore-certificate-errors-spki-list takes.
func SPKIHash(pemFile string) (string, error) {
	data, err := os.ReadFile(pemFile)
	if err != nil {
		return "", fmt.Errorf("certificate to trust: %w", err)
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return "", fmt.Errorf("certificate to trust: %s holds no PEM certificate", pemFile)
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return "", fmt.Errorf("certificate to trust: %s: %w", pemFile, err)
		}
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		return base64.StdEncoding.EncodeToString(sum[:]), nil
	}
}

// Config is how Start runs Chromium.
type Config struct {
	// Binary is the Chromium executable; "" uses Find.
	Binary string
	// TrustCert is a PEM file whose (first) certificate Chromium accepts
	// although no system root issued it: the hub's DataDir/server.pem.
	// "" trusts the system roots only.
	TrustCert string
	// Width and Height are the window size (default 1280×900).
	Width, Height int
	// Output, when set, receives Chromium's own stdout and stderr.
	Output io.Writer
}

// Browser is one running Chromium. Its owner stops it with Close (or by
// ending the context given to Start).
type Browser struct {
	ctx         context.Context // the browser's first tab
	cancel      context.CancelFunc
	allocCancel context.CancelFunc
	dir         string
}

// Start runs Chromium until ctx ends or Close is called. It returns once
// the browser answers over the DevTools protocol.
func Start(ctx context.Context, cfg Config) (*Browser, error) {
	bin := cfg.Binary
	if bin == "" {
		var err error
		if bin, err = Find(); err != nil {
			return nil, err
		}
	}
	var spki string
	if cfg.TrustCert != "" {
		var err error
		if spki, err = SPKIHash(cfg.TrustCert); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "dmctl-chromium-")
	if err != nil {
		return nil, fmt.Errorf("chromium user data folder: %w", err)
	}
	opts := flags(bin, filepath.Join(dir, "profile"), spki, cfg)
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancel := chromedp.NewContext(allocCtx)
	b := &Browser{ctx: bctx, cancel: cancel, allocCancel: allocCancel, dir: dir}
	if err := chromedp.Do(bctx); err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	return b, nil
}

// flags are Chromium's command-line options for Start.
func flags(bin, profile, spki string, cfg Config) []chromedp.ExecAllocatorOption {
	w, h := cfg.Width, cfg.Height
	if w <= 0 || h <= 0 {
		w, h = 1280, 900
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.WindowSize(w, h),
		// Without these Chromium dials Google's hosts at start and keeps
		// retrying against the closed network.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		// A page in a background tab still runs its timers and stream.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.Flag("no-sandbox", os.Geteuid() == 0), // the sandbox refuses to run as root
	}
	if spki != "" {
		opts = append(opts, chromedp.Flag("ignore-certificate-errors-spki-list", spki))
	}
	if cfg.Output != nil {
		opts = append(opts, chromedp.CombinedOutput(cfg.Output))
	}
	return opts
}

// Tab opens a new tab in the browser's default profile, which shares its
// cookies with every other such tab. Cancel closes the tab. The tab is
// open when Tab returns, so that a deadline on a later action bounds that
// action only.
func (b *Browser) Tab() (context.Context, context.CancelFunc, error) {
	return b.open()
}

// FreshTab opens a tab in a new browser context of its own: no cookies,
// no storage, as a new private window. Cancel closes it and discards the
// context.
func (b *Browser) FreshTab() (context.Context, context.CancelFunc, error) {
	return b.open(chromedp.WithNewBrowserContext())
}

func (b *Browser) open(opts ...chromedp.ContextOption) (context.Context, context.CancelFunc, error) {
	ctx, cancel := chromedp.NewContext(b.ctx, opts...)
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("open a tab: %w", err)
	}
	return ctx, cancel, nil
}

// Close stops Chromium and removes its user data folder.
func (b *Browser) Close() error {
	b.cancel()
	b.allocCancel() // waits for the browser process to exit
	return os.RemoveAll(b.dir)
}
