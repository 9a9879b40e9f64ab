//go:build !linux

package cli

import "syscall"

// shardSysProcAttr: only Linux can tie a child's life to its parent's.
func shardSysProcAttr() *syscall.SysProcAttr { return nil }
