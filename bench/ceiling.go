package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/dmctl/dmctl/internal/fdlimit"
	"github.com/dmctl/dmctl/internal/soak"
)

// ceilingInfo is the largest fleet the machine lets the bench connect to
// one hub process, and why.
type ceilingInfo struct {
	Devices int
	Limit   fdlimit.Limit
	Why     string
}

// shutdownRow is the hub's SIGTERM with a fleet connected: how long the
// process took to exit, and how long the fleet took to be back on a new
// hub on the same port and data.
type shutdownRow struct {
	Connections int
	Exit        time.Duration
	Back        time.Duration // SIGTERM to every device connected to the new hub
	BackCount   int           // devices connected to the new hub when the wait ended
	Detail      string
}

// ceiling finds the largest fleet one hub process holds: the open-file
// limit of the processes (the bench's own, which its children inherit;
// one connection costs a descriptor in the hub and one in the device
// process) less fdlimit.Reserve, bounded by -ceiling-max.
func (c *config) ceiling() (ceilingInfo, error) {
	var l fdlimit.Limit
	if c.ceilingLimit != nil {
		l = *c.ceilingLimit
	} else {
		var err error
		if l, err = fdlimit.Open(); err != nil {
			return ceilingInfo{}, fmt.Errorf("read the open-file limit: %w", err)
		}
	}
	n := l.Connections()
	why := fmt.Sprintf("the open-file limit: %d per process (hard limit %d), less %d descriptors each process keeps for itself; the hub holds one per connection, so a second device process cannot raise it",
		l.Soft, l.Hard, fdlimit.Reserve)
	if n > c.CeilingMax {
		n = c.CeilingMax
		why = fmt.Sprintf("-ceiling-max %d (the open-file limit, %d, would allow more)", c.CeilingMax, l.Soft)
	}
	if n <= 0 {
		return ceilingInfo{}, fmt.Errorf("an open-file limit of %d leaves no room for connections", l.Soft)
	}
	return ceilingInfo{Devices: n, Limit: l, Why: why}, nil
}

// shardsRSS is the VmRSS of a sharded fleet: the supervising process and
// every child the ready file lists.
func shardsRSS(ctx context.Context, parent int, ready []byte) (int64, int, error) {
	var info struct {
		Shards []struct {
			Pid int `json:"pid"`
		} `json:"shards"`
	}
	if err := json.Unmarshal(ready, &info); err != nil {
		return 0, 0, fmt.Errorf("fleet ready file: %w", err)
	}
	if len(info.Shards) == 0 {
		return 0, 0, errors.New("fleet ready file lists no shard")
	}
	total := settledRSS(ctx, parent)
	for _, s := range info.Shards {
		n, err := soak.RSS(s.Pid)
		if err != nil {
			return 0, 0, fmt.Errorf("shard %d: %w", s.Pid, err)
		}
		total += n
	}
	return total, len(info.Shards), nil
}

// measureShutdown sends SIGTERM to the hub with the fleet of n devices
// connected, times its exit, starts a new hub on the same port and data
// and times until every device is back. It returns the new hub (the
// caller stops it) or nil.
func measureShutdown(ctx context.Context, cfg *config, res *results, bin, dir string, h *hubProc, n int) *hubProc {
	row := shutdownRow{Connections: n}
	defer func() { res.Shutdown = append(res.Shutdown, row) }()
	cfg.progress("shutdown: SIGTERM to the hub with %d devices connected", n)
	t0 := time.Now()
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		row.Detail = err.Error()
		return nil
	}
	select {
	case <-h.done:
		row.Exit = time.Since(t0)
	case <-time.After(60 * time.Second):
		row.Detail = "the hub had not exited 60 s after SIGTERM"
		return nil
	case <-ctx.Done():
		return nil
	}
	if h.err != nil {
		row.Detail = fmt.Sprintf("hub exit: %v", h.err)
	}
	h2, err := startHubProcOn(ctx, cfg, bin, dir, h.port)
	if err != nil {
		row.Detail = fmt.Sprintf("restart the hub on port %s: %v", h.port, err)
		return nil
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		row.BackCount, err = connectedCount(ctx, h2)
		if err == nil && row.BackCount >= n {
			row.Back = time.Since(t0)
			return h2
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			row.Detail = fmt.Sprintf("%d of %d devices back after 120 s (last error: %v)", row.BackCount, n, err)
			return h2
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// connectedCount asks the hub how many devices are connected.
func connectedCount(ctx context.Context, h *hubProc) (int, error) {
	var count int
	err := h.svc.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'", 0, func(raw json.RawMessage) error {
		var v struct {
			N json.Number `json:"n"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		n, err := strconv.Atoi(v.N.String())
		count = n
		return err
	})
	return count, err
}
