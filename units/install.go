package units

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// File is one file an installation owns, by its path on the target system.
type File struct {
	Path string // absolute, as the target system sees it
	Data []byte // content; unused for links
	// Perm is the mode (and group) of a new file; an existing file keeps
	// its own (Perm.Keep is implied), see Perm.
	Perm Perm
	Link string // non-empty: a symbolic link to this target
	// Adopt marks a file that may exist before the first installation
	// (the configuration an operator wrote in place): when it does,
	// uninstall leaves it.
	Adopt bool
}

// Result says what Apply changed.
type Result struct {
	Written   []string // created or rewritten (or given a new mode)
	Unchanged []string
	Removed   []string // owned by the previous installation, not by this one
	Adopted   []string // existed before the first installation: uninstall keeps them
}

// Changed reports whether anything was written or removed.
func (r Result) Changed() bool { return len(r.Written)+len(r.Removed) > 0 }

// UninstallResult says what Uninstall did.
type UninstallResult struct {
	Removed []string
	// Kept are files the installation wrote but did not create (the
	// configuration an operator had written in place): they stay.
	Kept []string
}

// Tree is where an installation lives on a target system. Everything it
// writes or removes lies beneath Root and in one of Dirs, and no
// symbolic link in between is followed: a link planted in the target
// tree is an error, not a way out of it.
type Tree struct {
	// Root is the directory that is the target system's "/"; "" or "/"
	// for the running system.
	Root string
	// Manifest is the path, as the target system sees it, of the list of
	// the files the installation owns.
	Manifest string
	// Dirs are the directories, as the target system sees them, that the
	// installation writes in; a file or manifest entry anywhere else is
	// refused. They must be clean absolute paths.
	Dirs []string
}

// Limits on the manifest, which is data read from disk and so is checked
// like any input.
const (
	MaxManifestBytes   = 1 << 20
	MaxManifestEntries = 10000
	maxPathBytes       = 4096 // PATH_MAX
)

// manifest is the list of files an installation wrote, kept beside the
// configuration, so that an uninstall removes exactly those.
type manifest struct {
	Files []string `json:"files"`
	// Adopted files existed before the first installation wrote them.
	Adopted []string `json:"adopted,omitempty"`
}

// Apply installs files: each is written atomically and only when its
// content differs (an existing file keeps its mode, owner and group),
// files the previous installation owned and this one does not are
// removed, and the manifest records what is owned now.
func (t Tree) Apply(files []File) (Result, error) {
	var r Result
	if t.Root != "" {
		// A package or image tree may not exist yet: the caller chose it.
		if err := os.MkdirAll(t.Root, 0o755); err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
	}
	rfd, err := t.openRoot()
	if err != nil {
		return r, fmt.Errorf("install: %w", err)
	}
	defer unix.Close(rfd)
	old, err := t.readManifest(rfd)
	if err != nil {
		return r, fmt.Errorf("install: %w", err)
	}
	wasOwned := map[string]bool{}
	for _, p := range old.Files {
		wasOwned[p] = true
	}
	wasAdopted := map[string]bool{}
	for _, p := range old.Adopted {
		wasAdopted[p] = true
	}
	// Check every path before writing any, so that a link planted
	// anywhere leaves the installation as it was, not half-written.
	for _, f := range files {
		if err := t.checkPath(f.Path); err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		dir, name := path.Split(f.Path)
		dfd, err := t.openDir(rfd, dir, true)
		if err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		link := isLink(dfd, name)
		unix.Close(dfd)
		if link && f.Link == "" {
			return r, fmt.Errorf("install: write %s: is a symbolic link: refusing to write through it (remove it if it is meant to go)", t.show(f.Path))
		}
	}
	owned := map[string]bool{}
	var adopted []string
	for _, f := range files {
		owned[f.Path] = true
		dir, name := path.Split(f.Path)
		dfd, err := t.openDir(rfd, dir, true)
		if err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		if f.Adopt && (wasAdopted[f.Path] || (!wasOwned[f.Path] && existsAt(dfd, name))) {
			adopted = append(adopted, f.Path)
		}
		var changed bool
		if f.Link != "" {
			changed, err = linkAt(dfd, name, t.show(f.Path), f.Link)
		} else {
			perm := f.Perm
			perm.Keep = true
			changed, err = writeAt(dfd, name, t.show(f.Path), f.Data, perm)
		}
		unix.Close(dfd)
		if err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		if changed {
			r.Written = append(r.Written, f.Path)
		} else {
			r.Unchanged = append(r.Unchanged, f.Path)
		}
	}
	gone := map[string]bool{}
	for _, p := range old.Files {
		if owned[p] {
			continue
		}
		if err := t.remove(rfd, p); err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		r.Removed = append(r.Removed, p)
		gone[path.Dir(p)] = true
	}
	// A group back in hand-off mode leaves its drop-in directory empty.
	t.removeOwnDirs(rfd, gone)
	m := manifest{Adopted: adopted}
	for p := range owned {
		m.Files = append(m.Files, p)
	}
	sort.Strings(m.Files)
	sort.Strings(m.Adopted)
	r.Adopted = m.Adopted
	b, _ := json.MarshalIndent(m, "", "  ")
	dir, name := path.Split(t.Manifest)
	dfd, err := t.openDir(rfd, dir, true)
	if err != nil {
		return r, fmt.Errorf("install: %w", err)
	}
	defer unix.Close(dfd)
	if _, err := writeAt(dfd, name, t.show(t.Manifest), append(b, '\n'), Public); err != nil {
		return r, fmt.Errorf("install: %w", err)
	}
	return r, nil
}

// Uninstall removes every file the manifest lists except the adopted
// ones, then the manifest, then directories that became empty; it never
// removes anything else. A manifest entry outside Dirs, or reached
// through a symbolic link, is refused: nothing is removed then.
func (t Tree) Uninstall() (UninstallResult, error) {
	var r UninstallResult
	rfd, err := t.openRoot()
	if err != nil {
		return r, fmt.Errorf("uninstall: %w", err)
	}
	defer unix.Close(rfd)
	m, err := t.readManifest(rfd)
	if err != nil {
		return r, fmt.Errorf("uninstall: %w", err)
	}
	adopted := map[string]bool{}
	for _, p := range m.Adopted {
		adopted[p] = true
	}
	// Resolve every entry before removing any, so that a manifest with a
	// bad entry changes nothing.
	for _, p := range m.Files {
		dfd, err := t.openDir(rfd, path.Dir(p), false)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return r, fmt.Errorf("uninstall: refusing manifest entry %s: %w", p, err)
		}
		unix.Close(dfd)
	}
	dirs := map[string]bool{}
	for _, p := range m.Files {
		if adopted[p] {
			r.Kept = append(r.Kept, p)
			continue
		}
		if err := t.remove(rfd, p); err != nil {
			return r, fmt.Errorf("uninstall: %w", err)
		}
		r.Removed = append(r.Removed, p)
		dirs[path.Dir(p)] = true
	}
	if err := t.remove(rfd, t.Manifest); err != nil {
		return r, fmt.Errorf("uninstall: %w", err)
	}
	dirs[path.Dir(t.Manifest)] = true
	t.removeOwnDirs(rfd, dirs)
	return r, nil
}

// removeOwnDirs removes those of dirs that install creates for itself
// (powerhouse/, the .wants/ of the targets, a supervisor's drop-in
// directory powerhouse@GROUP.service.d/), and only if empty.
func (t Tree) removeOwnDirs(rfd int, dirs map[string]bool) {
	for d := range dirs {
		base := path.Base(d)
		_, dropIn := GroupOfSupervisor(strings.TrimSuffix(base, ".d"))
		switch {
		case base == "powerhouse", base == "multi-user.target.wants", base == "default.target.wants",
			dropIn && strings.HasSuffix(base, ".d"):
			parent, name := path.Split(d)
			if pfd, err := t.openDir(rfd, parent, false); err == nil {
				unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR) // fails, harmlessly, when not empty
				unix.Close(pfd)
			}
		}
	}
}

// Installed reports whether a manifest exists.
func (t Tree) Installed() bool {
	rfd, err := t.openRoot()
	if err != nil {
		return false
	}
	defer unix.Close(rfd)
	dfd, err := t.openDir(rfd, path.Dir(t.Manifest), false)
	if err != nil {
		return false
	}
	defer unix.Close(dfd)
	return existsAt(dfd, path.Base(t.Manifest))
}

func (t Tree) root() string {
	if t.Root == "" {
		return "/"
	}
	return t.Root
}

// show is how a target path appears in messages: under Root.
func (t Tree) show(p string) string {
	if t.Root == "" || t.Root == "/" {
		return p
	}
	return strings.TrimSuffix(t.Root, "/") + p
}

// openRoot opens Root, which the caller chose and is trusted: symbolic
// links on the way to it are followed.
func (t Tree) openRoot() (int, error) {
	fd, err := unix.Open(t.root(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: t.root(), Err: err}
	}
	return fd, nil
}

// checkPath accepts a clean absolute path strictly inside one of Dirs.
func (t Tree) checkPath(p string) error {
	if err := cleanAbs(p); err != nil {
		return err
	}
	if p == t.Manifest {
		return nil
	}
	for _, d := range t.Dirs {
		if strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
			return nil
		}
	}
	return fmt.Errorf("%q is outside the installation's directories (%s)", p, strings.Join(t.Dirs, ", "))
}

// cleanAbs accepts a clean absolute path without "..", NUL or an
// excessive length.
func cleanAbs(p string) error {
	switch {
	case len(p) > maxPathBytes:
		return fmt.Errorf("path of %d bytes is longer than %d", len(p), maxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("path %q holds a NUL byte", p)
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is not absolute", p)
	case p == "/" || path.Clean(p) != p:
		return fmt.Errorf("path %q is not a clean file path", p)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if c == ".." || c == "." {
			return fmt.Errorf("path %q has a %q component", p, c)
		}
	}
	return nil
}

// parseManifest decodes and checks a manifest: bounded, every entry a
// path the tree may hold, no entry twice.
func (t Tree) parseManifest(b []byte) (manifest, error) {
	var m manifest
	if len(b) > MaxManifestBytes {
		return manifest{}, fmt.Errorf("install manifest %s: larger than %d bytes", t.show(t.Manifest), MaxManifestBytes)
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		return manifest{}, fmt.Errorf("install manifest %s: %w", t.show(t.Manifest), err)
	}
	if _, err := d.Token(); err != io.EOF {
		return manifest{}, fmt.Errorf("install manifest %s: data after the manifest", t.show(t.Manifest))
	}
	if n := len(m.Files) + len(m.Adopted); n > MaxManifestEntries {
		return manifest{}, fmt.Errorf("install manifest %s: %d entries, more than %d", t.show(t.Manifest), n, MaxManifestEntries)
	}
	seen := map[string]bool{}
	for _, p := range m.Files {
		if err := t.checkPath(p); err != nil {
			return manifest{}, fmt.Errorf("install manifest %s: refusing entry: %w", t.show(t.Manifest), err)
		}
		if p == t.Manifest || seen[p] {
			return manifest{}, fmt.Errorf("install manifest %s: entry %q listed twice or names the manifest", t.show(t.Manifest), p)
		}
		seen[p] = true
	}
	for _, p := range m.Adopted {
		if !seen[p] {
			return manifest{}, fmt.Errorf("install manifest %s: adopted entry %q is not among the files", t.show(t.Manifest), p)
		}
	}
	return m, nil
}

// readManifest reads the manifest; none is an empty one.
func (t Tree) readManifest(rfd int) (manifest, error) {
	if err := cleanAbs(t.Manifest); err != nil {
		return manifest{}, fmt.Errorf("install manifest: %w", err)
	}
	dfd, err := t.openDir(rfd, path.Dir(t.Manifest), false)
	if errors.Is(err, unix.ENOENT) {
		return manifest{}, nil
	}
	if err != nil {
		return manifest{}, fmt.Errorf("read install manifest: %w", err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, path.Base(t.Manifest), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return manifest{}, nil
	}
	if err != nil {
		return manifest{}, fmt.Errorf("read install manifest %s: %w", t.show(t.Manifest), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return manifest{}, fmt.Errorf("read install manifest %s: %w", t.show(t.Manifest), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return manifest{}, fmt.Errorf("install manifest %s: not a regular file", t.show(t.Manifest))
	}
	b, err := io.ReadAll(io.LimitReader(&fdReader{fd}, MaxManifestBytes+1))
	if err != nil {
		return manifest{}, fmt.Errorf("read install manifest %s: %w", t.show(t.Manifest), err)
	}
	return t.parseManifest(b)
}

// openDir opens the directory dir (a target path) beneath the root rfd,
// one component at a time and never through a symbolic link (O_NOFOLLOW
// on each step: the same guarantee as openat2's RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS, on every kernel). With create, missing
// directories are made, mode 0755.
func (t Tree) openDir(rfd int, dir string, create bool) (int, error) {
	fd, err := unix.Dup(rfd)
	if err != nil {
		return -1, err
	}
	walked := "/"
	for _, c := range strings.Split(strings.Trim(dir, "/"), "/") {
		if c == "" {
			continue
		}
		if c == "." || c == ".." {
			unix.Close(fd)
			return -1, fmt.Errorf("directory %q has a %q component", dir, c)
		}
		walked = path.Join(walked, c)
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		if err != nil {
			if isLink(fd, c) {
				err = fmt.Errorf("%s is a symbolic link: refusing to follow it (%w)", t.show(walked), unix.ELOOP)
			} else {
				err = fmt.Errorf("%s: %w", t.show(walked), err)
			}
			unix.Close(fd)
			return -1, err
		}
		unix.Close(fd)
		fd = next
	}
	return fd, nil
}

// remove removes the file p (a target path) beneath the root rfd; a file
// already gone is no error. A link at p is removed itself.
func (t Tree) remove(rfd int, p string) error {
	if err := cleanAbs(p); err != nil {
		return err
	}
	dfd, err := t.openDir(rfd, path.Dir(p), false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", t.show(p), err)
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, path.Base(p), 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", t.show(p), err)
	}
	return nil
}

func existsAt(dfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

func isLink(dfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// linkAt makes name in dfd a symbolic link to target, atomically; a link
// already pointing there is left alone. Anything but a link at name is
// an error.
func linkAt(dfd int, name, display, target string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			return false, fmt.Errorf("link %s: exists and is not a symbolic link: refusing to replace it", display)
		}
		buf := make([]byte, maxPathBytes)
		if n, err := unix.Readlinkat(dfd, name, buf); err == nil && string(buf[:n]) == target {
			return false, nil
		}
	}
	tmp := "." + name + ".powerhouse-tmp"
	unix.Unlinkat(dfd, tmp, 0)
	if err := unix.Symlinkat(target, dfd, tmp); err != nil {
		return false, fmt.Errorf("link %s: %w", display, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return false, fmt.Errorf("link %s: %w", display, err)
	}
	return true, nil
}
