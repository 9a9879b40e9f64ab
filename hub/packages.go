package hub

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// PackagesPath is where the files of Config.PackagesDir are served, on the
// hub's TLS port: a local-hub extension, not part of IoT Hub, so that
// simulated devices can download firmware packages as they would from a
// blob URL.
const PackagesPath = "/packages/"

// packages serves the regular files under a folder, read-only and without
// authentication (a device fetches its firmware with a plain HTTPS GET, as
// from a blob URL with the SAS in the link). Folders are never listed;
// names that leave the folder (.., symbolic links pointing out) are not
// found.
type packages struct {
	root *os.Root
	log  zerolog.Logger // set by withPackages
}

// withPackages serves PackagesPath from the packages folder, when there is
// one, and everything else with rest.
func (s *Server) withPackages(rest http.Handler) http.Handler {
	if s.packages == nil {
		return rest
	}
	s.packages.log = s.log.With().Str("component", "packages").Logger()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, PackagesPath) {
			s.packages.ServeHTTP(w, r)
			return
		}
		rest.ServeHTTP(w, r)
	})
}

// ErrPackagesDir is returned by New when Config.PackagesDir is not a
// readable folder.
var ErrPackagesDir = errors.New("hub: packages folder")

func openPackages(dir string) (*packages, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPackagesDir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a folder", ErrPackagesDir, dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPackagesDir, err)
	}
	return &packages{root: root}, nil
}

func (p *packages) close() { _ = p.root.Close() }

func (p *packages) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "packages are read-only", http.StatusMethodNotAllowed)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, PackagesPath)
	// Clean resolves "." and ".." lexically; os.Root refuses whatever
	// still escapes (symbolic links out of the folder).
	clean := path.Clean("/" + name)[1:]
	if name == "" || clean != name || strings.Contains(name, "\\") {
		p.notFound(w, r)
		return
	}
	f, err := p.root.Open(name)
	if err != nil {
		p.notFound(w, r)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		p.notFound(w, r)
		return
	}
	p.log.Debug().Str("package", name).Int64("bytes", fi.Size()).Str("remote", r.RemoteAddr).Msg("package download")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// ServeContent sets Content-Length and answers Range requests.
	http.ServeContent(w, r, "", fi.ModTime().UTC().Truncate(time.Second), f)
}

func (p *packages) notFound(w http.ResponseWriter, r *http.Request) {
	p.log.Debug().Str("path", r.URL.Path).Msg("package not found")
	http.Error(w, "no such package", http.StatusNotFound)
}
