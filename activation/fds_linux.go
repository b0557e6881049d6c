//go:build linux

package activation

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdUsage returns how many descriptors this process has open and its soft
// RLIMIT_NOFILE, the bound the kernel checks when it installs a received
// descriptor. It lists /proc/self/fd with getdents into buf, which the
// caller keeps, so counting does not allocate; the cost grows with the
// number of open descriptors (about 1 µs per 100), which is why the gate
// counts only now and then (see fdGate).
//
// When no descriptor is free even to open the directory, it reports the
// limit as reached (open == limit) rather than an error.
func fdUsage(buf []byte) (open, limit int, err error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	limit = int(min(rl.Cur, 1<<31-1))
	d, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == unix.EMFILE || err == unix.ENFILE {
		return limit, limit, nil
	}
	if err != nil {
		return 0, limit, err
	}
	defer unix.Close(d)
	for {
		n, err := unix.Getdents(d, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, limit, err
		}
		if n <= 0 {
			break
		}
		// struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2),
		// d_type (1), d_name. Descriptors are named by digits; skip "."
		// and "..".
		for off := 0; off+19 < n; {
			reclen := int(*(*uint16)(unsafe.Pointer(&buf[off+16])))
			if reclen == 0 {
				break
			}
			if buf[off+19] != '.' {
				open++
			}
			off += reclen
		}
	}
	return open - 1, limit, nil // not counting d itself
}
