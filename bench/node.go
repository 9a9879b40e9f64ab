package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// findNode returns the node binary, or "" and the reason the Node peers are
// skipped.
func findNode() (string, string) {
	p, err := exec.LookPath("node")
	if err != nil {
		return "", "node is not on PATH"
	}
	return p, ""
}

// ensureNodeModules installs bench/node's pinned packages with npm ci when
// node_modules is missing or older than the lock file.
func ensureNodeModules(ctx context.Context, cfg *config) error {
	lock, err := os.Stat(filepath.Join(cfg.NodeDir, "package-lock.json"))
	if err != nil {
		return err
	}
	if st, err := os.Stat(filepath.Join(cfg.NodeDir, "node_modules", ".package-lock.json")); err == nil && !st.ModTime().Before(lock.ModTime()) {
		return nil
	}
	cfg.progress("npm ci in %s", cfg.NodeDir)
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = cfg.NodeDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nodeVersion(node string) string {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// nodeDevices is a Node process running official SDK device clients
// (bench/node/devices.js).
type nodeDevices struct {
	*child
	ready time.Duration // start of the process to every client subscribed
}

func startNodeDevices(ctx context.Context, cfg *config, css []string, caFile string) (*nodeDevices, error) {
	f, err := os.CreateTemp(cfg.DataDir, "node-devices-*.txt")
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(strings.Join(css, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	c, err := start("node devices.js", []string{"NODE_EXTRA_CA_CERTS=" + caFile}, cfg.NodeDir, cfg.Node, "devices.js", f.Name(), "100")
	if err != nil {
		return nil, err
	}
	line, err := c.waitLine(ctx, 60*time.Second+time.Duration(len(css))*20*time.Millisecond, func(l string) bool {
		return strings.Contains(l, `"event"`)
	})
	if err != nil {
		c.stop(5 * time.Second)
		return nil, err
	}
	var ev struct {
		Event string `json:"event"`
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(line), &ev); ev.Event != "ready" {
		c.stop(5 * time.Second)
		return nil, fmt.Errorf("node devices: %s", ev.Error)
	}
	return &nodeDevices{child: c, ready: time.Since(t0)}, nil
}

func (n *nodeDevices) stop() { n.child.stop(10 * time.Second) }
