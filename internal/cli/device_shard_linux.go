package cli

import "syscall"

// shardSysProcAttr makes a shard get SIGTERM when its parent dies, however
// it dies, so that no child outlives a killed parent.
func shardSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
