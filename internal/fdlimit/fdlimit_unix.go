//go:build unix

package fdlimit

import "syscall"

// Open returns this process's open-file limit.
func Open() (Limit, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return Limit{}, err
	}
	return Limit{Soft: uint64(rl.Cur), Hard: uint64(rl.Max)}, nil //nolint:unconvert // int64 on some systems
}
