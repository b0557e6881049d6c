package units

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Perm says who may read a file the package writes.
type Perm struct {
	// Mode is the permission bits of a new file.
	Mode os.FileMode
	// SetGroup makes GID the file's group: with Mode 0640, the members of
	// that group read the file and nobody else but its owner does.
	SetGroup bool
	GID      int
	// Keep: an existing file keeps its mode, owner and group, so that an
	// operator's chmod or chgrp survives a rewrite. One exception: when
	// Mode grants others nothing (the file holds secrets), the bits an
	// existing file grants others are dropped, so that a file an older
	// version wrote world-readable does not stay so.
	Keep bool
}

// Public is the Perm of a file anyone may read: units, counters.
var Public = Perm{Mode: 0o644}

// Secret is the Perm of a file only its owner (root) may read: the
// configuration, the prepare hook's environment.
var Secret = Perm{Mode: 0o600}

// WriteFile writes data to path atomically: readers see the old file or
// the new one, never a part. When path already holds exactly data it is
// left alone (its modification time stays) and changed is false; a
// changed mode or group is set in place. The new file has perm's mode
// from its creation on (it is never readable by more than that), and a
// symbolic link at path is an error, never written through: path's
// directory is trusted, its last component is not.
func WriteFile(path string, data []byte, perm Perm) (changed bool, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("write %s: open directory: %w", path, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	defer unix.Close(dfd)
	return writeAt(dfd, base, path, data, perm)
}

// writeAt writes the file name in the directory dfd (named display in
// errors), as WriteFile describes.
func writeAt(dfd int, name, display string, data []byte, perm Perm) (changed bool, err error) {
	if name == "" || name == "." || name == ".." {
		return false, fmt.Errorf("write %s: not a file name", display)
	}
	mode := uint32(perm.Mode.Perm())
	uid, gid := -1, -1 // leave as created
	if perm.SetGroup {
		gid = perm.GID
	}
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		old, st, rerr := readFD(fd)
		if rerr != nil {
			unix.Close(fd)
			return false, fmt.Errorf("write %s: %w", display, rerr)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			return false, fmt.Errorf("write %s: exists and is not a regular file: refusing to replace it", display)
		}
		if perm.Keep {
			mode = st.Mode & 0o7777
			if perm.Mode&0o007 == 0 {
				mode &^= 0o007
			}
			uid, gid = int(st.Uid), int(st.Gid)
			if perm.SetGroup {
				gid = perm.GID
			}
		}
		if bytes.Equal(old, data) {
			// Same content: fix the mode and group in place, if needed.
			defer unix.Close(fd)
			fix := false
			if st.Mode&0o7777 != mode {
				if err := unix.Fchmod(fd, mode); err != nil {
					return false, fmt.Errorf("write %s: chmod %o: %w", display, mode, err)
				}
				fix = true
			}
			if gid >= 0 && uint32(gid) != st.Gid {
				if err := unix.Fchown(fd, -1, gid); err != nil {
					return false, fmt.Errorf("write %s: %w", display, chownError(gid, err))
				}
				fix = true
			}
			return fix, nil
		}
		unix.Close(fd)
	case errors.Is(err, unix.ENOENT):
	case errors.Is(err, unix.ELOOP):
		return false, fmt.Errorf("write %s: is a symbolic link: refusing to write through it (remove it if it is meant to go)", display)
	default:
		return false, fmt.Errorf("write %s: %w", display, err)
	}

	tmp, tfd, err := createTemp(dfd, name)
	if err != nil {
		return false, fmt.Errorf("write %s: %w", display, err)
	}
	defer func() {
		if err != nil {
			unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	f := os.NewFile(uintptr(tfd), display)
	_, err = f.Write(data)
	if err == nil {
		// Created 0600: the bits are widened, and the group set, only
		// once the file is complete and before it has its name.
		err = unix.Fchmod(tfd, mode)
	}
	if err == nil && (uid >= 0 || gid >= 0) {
		// Only when the new file's owner or group is not already the
		// one wanted: chown needs a privilege (CAP_CHOWN, or membership
		// in the group) and a system call that a hardened writer may
		// lack, and a root-owned rewrite by root needs neither.
		var st unix.Stat_t
		if err = unix.Fstat(tfd, &st); err == nil && ((uid >= 0 && uint32(uid) != st.Uid) || (gid >= 0 && uint32(gid) != st.Gid)) {
			if err = unix.Fchown(tfd, uid, gid); err != nil {
				err = chownError(gid, err)
			}
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", display, err)
	}
	return true, nil
}

func chownError(gid int, err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("cannot give it group %d (%w): the members of that group (the workers) could not read it; the writer needs CAP_CHOWN or membership in the group, and fchown allowed by its system call filter (SystemCallFilter=@chown)", gid, err)
	}
	return fmt.Errorf("set group %d: %w", gid, err)
}

// createTemp creates a new file beside name in dfd, mode 0600, and never
// through a link (O_EXCL).
func createTemp(dfd int, name string) (string, int, error) {
	for i := 0; ; i++ {
		var b [6]byte
		rand.Read(b[:])
		tmp := "." + name + ".tmp" + hex.EncodeToString(b[:])
		fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) && i < 10 {
			continue
		}
		return tmp, fd, err
	}
}

// maxExisting bounds what is read of a file about to be replaced: more
// than this is never one of ours unchanged.
const maxExisting = 64 << 20

// readFD reads a regular file's content (nothing for anything else) and
// returns its status.
func readFD(fd int) ([]byte, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, st, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > maxExisting {
		return nil, st, nil
	}
	b, err := io.ReadAll(io.LimitReader(&fdReader{fd}, maxExisting))
	return b, st, err
}

// fdReader reads a raw descriptor without taking ownership of it.
type fdReader struct{ fd int }

func (r *fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(r.fd, p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}
