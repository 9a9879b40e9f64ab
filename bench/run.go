package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// environment describes the machine and tools of a run.
type environment struct {
	Go, Node, CPU, OS string
	Cores             int
	MemTotal          string
}

func detectEnv(cfg *config) environment {
	e := environment{Go: runtime.Version(), Cores: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH, Node: "not run"}
	if cfg.Node != "" {
		e.Node = nodeVersion(cfg.Node)
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				e.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				e.MemTotal = strings.TrimSpace(v)
				break
			}
		}
	}
	return e
}

// run performs every measurement; a section that fails is recorded in the
// notes and the others still run. The error is for failures that stop the
// whole run.
func run(ctx context.Context, cfg *config) (*results, error) {
	res := &results{Started: time.Now().UTC()}
	var err error
	if cfg.ModDir == "" {
		if cfg.ModDir, err = moduleDir(); err != nil {
			return nil, err
		}
	}
	if cfg.NodeDir == "" {
		cfg.NodeDir = filepath.Join(cfg.ModDir, "bench", "node")
	}
	if cfg.DataDir == "" {
		tmp, err := os.MkdirTemp("", "dmctl-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		cfg.DataDir = tmp
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	res.Env = detectEnv(cfg)
	if cfg.Node != "" {
		if err := ensureNodeModules(ctx, cfg); err != nil {
			res.note("Node peers skipped: %v", err)
			cfg.SkipNodeMsg = "npm ci failed"
			cfg.Node = ""
		}
	}
	cfg.progress("building dmctl")
	bin, err := buildDmctl(ctx, cfg, cfg.DataDir)
	if err != nil {
		return nil, err
	}

	if !cfg.SoakOnly && !cfg.FirmwareOnly && !cfg.DashboardOnly {
		p, err := startInProcess(ctx, cfg, res)
		if err != nil {
			return nil, fmt.Errorf("in-process hub: %w", err)
		}
		p.latency(ctx)
		p.throughput(ctx)
		p.cli(ctx, bin)
		p.close()

		scaleAndFleet(ctx, cfg, res, bin)
		anatomySection(ctx, cfg, res, bin)
	}
	if ctx.Err() == nil && !cfg.FirmwareOnly && !cfg.DashboardOnly {
		soakSection(ctx, cfg, res, bin)
	}
	if ctx.Err() == nil && !cfg.SoakOnly && !cfg.DashboardOnly {
		firmwareSection(ctx, cfg, res, bin)
	}
	if ctx.Err() == nil && !cfg.SoakOnly && !cfg.FirmwareOnly {
		dashboardSection(ctx, cfg, res)
	}
	res.Finished = time.Now().UTC()
	return res, ctx.Err()
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
