package sdbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// resolveInBox makes openat2 treat the box's root as "/": absolute
// symbolic links inside the box (/var/run -> /run) stay inside it.
const resolveInBox = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openRoot opens the box's root directory.
func (b *Box) openRoot() (int, error) {
	if !b.alive() {
		return -1, ErrClosed
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/root", b.pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if !b.alive() {
		unix.Close(fd)
		return -1, ErrClosed
	}
	return fd, nil
}

// privateDir tells whether the directory fd is on one of the box's own
// file systems (tmpfs, or the overlays over /etc and /var), where writing
// cannot reach the host's files.
func privateDir(fd int) bool {
	var st unix.Statfs_t
	if unix.Fstatfs(fd, &st) != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.OVERLAYFS_SUPER_MAGIC
}

// openDirIn opens directory rel (relative to the box's root), creating
// the missing ones on the way when mkdir is set. It refuses to create a
// directory in one that is not private to the box.
func openDirIn(root int, rel string, mkdir bool) (int, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveInBox}
	if rel == "." || !mkdir {
		return unix.Openat2(root, rel, how)
	}
	fd, err := unix.Openat2(root, rel, how)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	parent, err := openDirIn(root, path.Dir(rel), true)
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	if !privateDir(parent) {
		return -1, fmt.Errorf("%s is not on a private mount of the box", "/"+path.Dir(rel))
	}
	if err := unix.Mkdirat(parent, path.Base(rel), 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	return unix.Openat2(root, rel, how)
}

func boxRel(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	rel := strings.TrimPrefix(path.Clean(p), "/")
	if rel == "" {
		return "", errors.New("not a file: /")
	}
	return rel, nil
}

// WriteFile writes data to the file p inside the box, creating it and its
// missing parent directories (0755), and sets its mode to perm. Paths
// resolve inside the box (its symbolic links cannot lead to the host's
// files), and only the box's private mounts may be written: /run, /tmp,
// /var/tmp, /etc/systemd/system, and the overlays over /etc and /var.
// Units under test go into /run/systemd/system or /etc/systemd/system.
func (b *Box) WriteFile(p string, data []byte, perm os.FileMode) error {
	if err := b.writeFile(p, data, perm); err != nil {
		return fmt.Errorf("sdbox write %s: %w", p, err)
	}
	return nil
}

func (b *Box) writeFile(p string, data []byte, perm os.FileMode) error {
	rel, err := boxRel(p)
	if err != nil {
		return err
	}
	root, err := b.openRoot()
	if err != nil {
		return err
	}
	defer unix.Close(root)
	dir, err := openDirIn(root, path.Dir(rel), true)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if !privateDir(dir) {
		return fmt.Errorf("%s is not on a private mount of the box", "/"+path.Dir(rel))
	}
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Mode:    uint64(perm.Perm()),
		Resolve: resolveInBox,
	})
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), p)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm.Perm())
	}
	return errors.Join(err, f.Close())
}

// ReadFile reads the file p inside the box, resolving the path inside it.
func (b *Box) ReadFile(p string) ([]byte, error) {
	rel, err := boxRel(p)
	if err != nil {
		return nil, fmt.Errorf("sdbox read %s: %w", p, err)
	}
	root, err := b.openRoot()
	if err != nil {
		return nil, fmt.Errorf("sdbox read %s: %w", p, err)
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: resolveInBox})
	if err != nil {
		return nil, fmt.Errorf("sdbox read %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("sdbox read %s: %w", p, err)
	}
	return data, nil
}
