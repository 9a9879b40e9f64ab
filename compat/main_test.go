package compat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/dmctl/dmctl/hub"
	"github.com/dmctl/dmctl/sas"
)

// The official SDKs only reach a hub on the real IoT Hub ports.
var hubListen = []string{"127.0.0.1:8883", "127.0.0.1:443"}

// suite is the state shared by every test in the package: one hub, the npm
// packages and dmctl's binary.
type suite struct {
	hub     *hub.Server
	tmp     string
	nodeDir string // compat/node with node_modules installed
	caFile  string
	hubLog  string // file the hub logs to
	logFile *os.File

	// serviceKey is the iothubowner key; nodeServiceCS is the owner connection
	// string as azure-iothub needs it (HostName without a port, so 443).
	serviceKey    string
	nodeServiceCS string
	// dmctlServiceCS is the hub's own owner connection string (HostName=localhost:8883).
	dmctlServiceCS string

	dmctl    string // path of the dmctl binary; "" if it did not build
	dmctlErr error  // why it did not build
}

var env *suite

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	s, cleanup, err := setup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "compat: %v\n", err)
		if cleanup != nil {
			cleanup()
		}
		return 1
	}
	env = s
	code := m.Run()
	cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "compat: goroutines leaked after the suite: %v\n", err)
			return 1
		}
	}
	return code
}

func setup() (*suite, func(), error) {
	if _, err := exec.LookPath("node"); err != nil {
		return nil, nil, errors.New("node is not on PATH: the compatibility suite runs the official Azure IoT SDKs on Node.js 20 (install node and npm)")
	}
	if err := checkNodeVersion(); err != nil {
		return nil, nil, err
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return nil, nil, errors.New("npm is not on PATH: it installs the pinned Azure IoT SDK packages (install npm)")
	}
	_, file, _, _ := runtime.Caller(0)
	nodeDir := filepath.Join(filepath.Dir(file), "node")
	if err := ensureNodeModules(nodeDir); err != nil {
		return nil, nil, err
	}

	tmp, err := os.MkdirTemp("", "dmctl-compat-")
	if err != nil {
		return nil, nil, err
	}
	s := &suite{tmp: tmp, nodeDir: nodeDir, hubLog: filepath.Join(tmp, "hub.log")}
	cleanup := func() {
		if s.hub != nil {
			if err := s.hub.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "compat: closing the hub: %v\n", err)
			}
		}
		if s.logFile != nil {
			s.logFile.Close()
		}
		if os.Getenv("COMPAT_KEEP") != "" {
			fmt.Fprintf(os.Stderr, "compat: kept %s (hub log: %s)\n", tmp, s.hubLog)
			return
		}
		os.RemoveAll(tmp)
	}

	// Build dmctl while the hub starts; tests that need the binary report
	// the build error themselves.
	buildDone := make(chan struct{})
	defer func() { <-buildDone }()
	go func() {
		defer close(buildDone)
		if bin := os.Getenv("COMPAT_DMCTL"); bin != "" {
			// A dmctl binary built elsewhere (for example by CI's release step).
			s.dmctl = bin
			return
		}
		s.dmctl, s.dmctlErr = buildDmctl(filepath.Dir(file), tmp)
	}()

	logFile, err := os.Create(s.hubLog)
	if err != nil {
		return nil, cleanup, err
	}
	s.logFile = logFile
	log := zerolog.New(logFile).With().Timestamp().Logger().Level(zerolog.DebugLevel)
	h, err := hub.New(hub.Config{
		DataDir:  filepath.Join(tmp, "hub"),
		Listen:   hubListen,
		Hostname: "localhost",
		Log:      log,
	})
	if err != nil {
		return nil, cleanup, fmt.Errorf("creating the hub: %w", err)
	}
	if err := h.Start(context.Background()); err != nil {
		h.Close()
		return nil, cleanup, fmt.Errorf("starting the hub on %v (the official SDKs need exactly these ports; run as root or grant CAP_NET_BIND_SERVICE, and make sure nothing else listens there): %w", hubListen, err)
	}
	s.hub = h
	s.caFile = h.CAFile()
	s.dmctlServiceCS = h.ServiceConnectionString()
	cs, err := sas.ParseService(s.dmctlServiceCS)
	if err != nil {
		return nil, cleanup, fmt.Errorf("the hub's service connection string does not parse: %w", err)
	}
	s.serviceKey = cs.SharedAccessKey
	s.nodeServiceCS = "HostName=localhost;SharedAccessKeyName=" + cs.SharedAccessKeyName + ";SharedAccessKey=" + cs.SharedAccessKey
	return s, cleanup, nil
}

// checkNodeVersion wants Node.js 18 or newer (the SDK versions pinned here
// were observed on Node 20).
func checkNodeVersion() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "node", "--version").Output()
	if err != nil {
		return fmt.Errorf("node --version: %v", err)
	}
	v := strings.TrimSpace(string(out))
	var major int
	if _, err := fmt.Sscanf(v, "v%d", &major); err != nil || major < 18 {
		return fmt.Errorf("node %s is too old: the compatibility suite needs Node.js 18 or newer (20 recommended)", v)
	}
	return nil
}

// ensureNodeModules runs `npm ci` when node_modules is missing or does not
// match package-lock.json.
func ensureNodeModules(dir string) error {
	fresh, why := nodeModulesFresh(dir)
	if fresh {
		return nil
	}
	fmt.Fprintf(os.Stderr, "compat: installing the pinned npm packages (%s)\n", why)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("npm ci in %s: %v\n%s", dir, err, out.Bytes())
	}
	if fresh, why := nodeModulesFresh(dir); !fresh {
		return fmt.Errorf("npm ci in %s finished but node_modules is still stale: %s", dir, why)
	}
	return nil
}

type lockFile struct {
	Packages map[string]struct {
		Version   string `json:"version"`
		Resolved  string `json:"resolved"`
		Integrity string `json:"integrity"`
	} `json:"packages"`
}

// nodeModulesFresh compares the package entries of package-lock.json with
// npm's record of what it installed (node_modules/.package-lock.json).
func nodeModulesFresh(dir string) (bool, string) {
	var want, have lockFile
	b, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return false, err.Error()
	}
	if err := json.Unmarshal(b, &want); err != nil {
		return false, "package-lock.json: " + err.Error()
	}
	b, err = os.ReadFile(filepath.Join(dir, "node_modules", ".package-lock.json"))
	if err != nil {
		return false, "node_modules is missing"
	}
	if err := json.Unmarshal(b, &have); err != nil {
		return false, "node_modules/.package-lock.json: " + err.Error()
	}
	delete(want.Packages, "") // the root project itself is not installed
	for name, w := range want.Packages {
		h, ok := have.Packages[name]
		if !ok {
			return false, name + " is not installed"
		}
		if h.Version != w.Version || h.Integrity != w.Integrity {
			return false, fmt.Sprintf("%s is %s, package-lock.json wants %s", name, h.Version, w.Version)
		}
	}
	for name := range have.Packages {
		if _, ok := want.Packages[name]; !ok {
			return false, name + " is installed but not in package-lock.json"
		}
	}
	return true, ""
}

// buildDmctl builds the dmctl binary from the module root.
func buildDmctl(compatDir, tmp string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(tmp, "dmctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/dmctl/dmctl")
	cmd.Dir = filepath.Dir(compatDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build github.com/dmctl/dmctl: %v\n%s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// requireDmctl returns the dmctl binary or stops the test when the binary
// did not build or lacks one of the commands (each given as its words, e.g.
// "device run").
func requireDmctl(t *testing.T, commands ...string) string {
	t.Helper()
	if env.dmctl == "" {
		t.Fatalf("dmctl binary did not build: %v", env.dmctlErr)
	}
	for _, c := range commands {
		if err := dmctlHasCommand(c); err != nil {
			t.Fatalf("dmctl %s is not available: %v", c, err)
		}
	}
	return env.dmctl
}

var helpProbes sync.Map // command -> error

// dmctlHasCommand runs `dmctl <command> --help` once per command.
func dmctlHasCommand(command string) error {
	if v, ok := helpProbes.Load(command); ok {
		err, _ := v.(error)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append(strings.Fields(command), "--help")
	out, err := exec.CommandContext(ctx, env.dmctl, args...).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("dmctl %s --help: %v: %s", command, err, strings.TrimSpace(string(out)))
	}
	helpProbes.Store(command, err)
	return err
}
