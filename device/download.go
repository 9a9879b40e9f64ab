package device

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Limits of a firmware package download.
const (
	// DefaultMaxPackageBytes is the largest package a device downloads.
	DefaultMaxPackageBytes = 64 << 20
	// DefaultDownloadTimeout bounds one download, from the request to the
	// last byte (waiting for a download slot is not counted).
	DefaultDownloadTimeout = 5 * time.Minute
	// DefaultDownloadConcurrency is how many downloads one Downloader runs
	// at once; the others wait for a slot. A fleet shares one Downloader,
	// so a campaign over 10,000 devices opens at most this many
	// connections to the package server at a time.
	DefaultDownloadConcurrency = 64
)

// DownloaderConfig configures a Downloader. The zero value works.
type DownloaderConfig struct {
	// RootCAs are the CAs trusted for https:// packages; nil means the
	// system roots. The CLI passes the pool the MQTT connection trusts
	// (system roots plus --ca-file).
	RootCAs *x509.CertPool
	// MaxBytes bounds a package (default DefaultMaxPackageBytes).
	MaxBytes int64
	// Timeout bounds one download (default DefaultDownloadTimeout).
	Timeout time.Duration
	// Concurrency bounds simultaneous downloads (default
	// DefaultDownloadConcurrency).
	Concurrency int
}

// Downloader fetches firmware packages from https:// or file:// URIs and
// hashes them with SHA-256 as they stream in; nothing is kept in memory or
// on disk. It is safe for concurrent use and meant to be shared by every
// device of a process.
type Downloader struct {
	client  *http.Client
	slots   chan struct{}
	max     int64
	timeout time.Duration
}

// NewDownloader returns a Downloader for cfg.
func NewDownloader(cfg DownloaderConfig) *Downloader {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxPackageBytes
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDownloadTimeout
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultDownloadConcurrency
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = cfg.Concurrency
	return &Downloader{
		client:  &http.Client{Transport: tr},
		slots:   make(chan struct{}, cfg.Concurrency),
		max:     cfg.MaxBytes,
		timeout: cfg.Timeout,
	}
}

// Package is what a download produced.
type Package struct {
	SHA256 [sha256.Size]byte
	Size   int64
}

// Fetch downloads uri and returns its digest and size. Its errors are
// meant for fwUpdateSubstatus: they start with "download failed: " and
// never contain the URI's query (which may hold a storage SAS token).
func (dl *Downloader) Fetch(ctx context.Context, uri string) (Package, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return Package{}, errors.New("bad package URI: not a URL")
	}
	var open func(context.Context) (io.ReadCloser, error)
	switch strings.ToLower(u.Scheme) {
	case "https":
		if u.Host == "" {
			return Package{}, errors.New("bad package URI: https:// needs a host")
		}
		open = func(ctx context.Context) (io.ReadCloser, error) { return dl.get(ctx, u) }
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return Package{}, fmt.Errorf("bad package URI: file:// must name a local path (file:///path), not host %q", u.Host)
		}
		if u.Path == "" {
			return Package{}, errors.New("bad package URI: file:// without a path")
		}
		open = func(context.Context) (io.ReadCloser, error) {
			f, err := os.Open(u.Path)
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err // without the path
			}
			if err != nil {
				return nil, fmt.Errorf("download failed: %w", err)
			}
			return f, nil
		}
	default:
		return Package{}, fmt.Errorf("bad package URI: scheme %q (use https:// or file://)", u.Scheme)
	}
	select {
	case dl.slots <- struct{}{}:
	case <-ctx.Done():
		return Package{}, ctx.Err()
	}
	defer func() { <-dl.slots }()
	ctx, cancel := context.WithTimeout(ctx, dl.timeout)
	defer cancel()
	body, err := open(ctx)
	if err != nil {
		return Package{}, dl.explain(ctx, err)
	}
	defer body.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(contextReader{ctx, body}, dl.max+1))
	if err == nil {
		err = ctx.Err() // past the deadline, the end may not be the package's
	}
	if err != nil {
		return Package{}, dl.explain(ctx, fmt.Errorf("download failed: %w", err))
	}
	if n > dl.max {
		return Package{}, fmt.Errorf("download failed: package larger than %d MiB", dl.max>>20)
	}
	var p Package
	copy(p.SHA256[:], h.Sum(nil))
	p.Size = n
	return p, nil
}

func (dl *Downloader) get(ctx context.Context, u *url.URL) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, errors.New("bad package URI: not a URL")
	}
	resp, err := dl.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		return nil, fmt.Errorf("download failed: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("download failed: HTTP %d", resp.StatusCode)
	}
	if resp.ContentLength > dl.max {
		resp.Body.Close()
		return nil, fmt.Errorf("download failed: package larger than %d MiB", dl.max>>20)
	}
	return resp.Body, nil
}

// explain turns the download deadline into words; a cancel from outside
// is passed on as it is.
func (dl *Downloader) explain(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("download failed: timed out after %s", dl.timeout)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// contextReader stops reading (a file, which has no deadline) once ctx ends.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ParseCheckValue reads fwPackageCheckValue as a SHA-256 digest: 64 hex
// digits in any case, or the standard or URL-safe base64 of the 32 bytes
// (padded or not). The firmware-update tutorial's samples carry an opaque
// placeholder and verify nothing; dmctl's devices verify for real.
func ParseCheckValue(v string) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	v = strings.TrimSpace(v)
	if len(v) == 2*sha256.Size {
		if b, err := hex.DecodeString(v); err == nil {
			copy(d[:], b)
			return d, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(v); err == nil && len(b) == sha256.Size {
			copy(d[:], b)
			return d, nil
		}
	}
	return d, fmt.Errorf("%s %q is not a SHA-256 digest (64 hex digits, or the base64 of its 32 bytes)", "fwPackageCheckValue", v)
}
