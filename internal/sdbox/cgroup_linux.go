package sdbox

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const cgroupRoot = "/sys/fs/cgroup"

// hierarchy is one cgroup file system mounted under /sys/fs/cgroup on the
// host: the unified (v2) one, or a v1 hierarchy (controllers, or a named
// one such as name=systemd).
type hierarchy struct {
	Mount string   // host mount point, e.g. /sys/fs/cgroup/memory
	Root  string   // the cgroup mounted there (mountinfo field 4), normally "/"
	V2    bool     // cgroup2
	Opts  []string // v1: the super options to mount the same hierarchy again
	Key   string   // how /proc/PID/cgroup names it: sorted controllers, "name=x", "" for v2
}

// Rel is the mount point relative to /sys/fs/cgroup ("" for /sys/fs/cgroup).
func (h hierarchy) Rel() string {
	return strings.TrimPrefix(strings.TrimPrefix(h.Mount, cgroupRoot), "/")
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) of
// /proc/PID/mountinfo fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseCgroupMounts returns the cgroup hierarchies mounted at or under
// /sys/fs/cgroup according to a mountinfo text. A later mount on the same
// point hides an earlier one, so the last wins.
func parseCgroupMounts(mountinfo []byte) []hierarchy {
	byMount := map[string]int{}
	var hs []hierarchy
	for line := range bytes.SplitSeq(mountinfo, []byte("\n")) {
		f := strings.Fields(string(line))
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+4 {
			continue
		}
		root, mnt := unescapeMountinfo(f[3]), unescapeMountinfo(f[4])
		fstype, super := f[sep+1], f[sep+3]
		if mnt != cgroupRoot && !strings.HasPrefix(mnt, cgroupRoot+"/") {
			continue
		}
		var h hierarchy
		switch fstype {
		case "cgroup2":
			h = hierarchy{Mount: mnt, Root: root, V2: true}
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(super, ",") {
				switch {
				case o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent="):
					// Not part of the hierarchy's identity, and a release
					// agent may not be given twice.
				case o == "none" || o == "noprefix" || o == "xattr" || o == "clone_children" ||
					o == "cpuset_v2_mode" || o == "favordynmods":
					h.Opts = append(h.Opts, o) // flags: must match the mounted hierarchy
				default:
					h.Opts = append(h.Opts, o) // a controller, or name=x
					ctrls = append(ctrls, o)
				}
			}
			onlyNamed := !slices.ContainsFunc(ctrls, func(c string) bool { return !strings.HasPrefix(c, "name=") })
			if onlyNamed && !slices.Contains(h.Opts, "none") {
				// A named hierarchy without controllers: say so, or the
				// kernel would bind every free controller to it.
				h.Opts = append([]string{"none"}, h.Opts...)
			}
			slices.Sort(ctrls)
			h.Mount, h.Root, h.Key = mnt, root, strings.Join(ctrls, ",")
		default:
			if i, ok := byMount[mnt]; ok {
				hs[i] = hierarchy{} // something else now hides that cgroup mount
			}
			continue
		}
		if i, ok := byMount[mnt]; ok {
			hs[i] = h
			continue
		}
		byMount[mnt] = len(hs)
		hs = append(hs, h)
	}
	return slices.DeleteFunc(hs, func(h hierarchy) bool { return h.Mount == "" })
}

// parseProcCgroup maps each hierarchy key (sorted controllers, "name=x", or
// "" for v2) to the cgroup path of a /proc/PID/cgroup text.
func parseProcCgroup(data []byte) map[string]string {
	m := map[string]string{}
	for line := range strings.SplitSeq(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls := strings.Split(parts[1], ",")
		slices.Sort(ctrls)
		m[strings.Join(ctrls, ",")] = parts[2]
	}
	return m
}

// boxCgroups is a box's own cgroup: one directory per host hierarchy.
type boxCgroups struct {
	Hierarchies []hierarchy
	Dirs        []string // host directories, parallel to Hierarchies
}

// boxCgroupPrefix starts the name of every box cgroup. The full name is
// sdbox.OWNERPID.OWNERSTART.RANDOM, so a later run can tell that the
// process that made it is gone (see collectStaleCgroups).
const boxCgroupPrefix = "sdbox."

func newBoxCgroupName() (string, error) {
	st, err := readStat(os.Getpid())
	if err != nil {
		return "", fmt.Errorf("cgroup name: %w", err)
	}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("cgroup name: %w", err)
	}
	return fmt.Sprintf("%s%d.%d.%s", boxCgroupPrefix, os.Getpid(), st.StartTime, hex.EncodeToString(r[:])), nil
}

// callerCgroupDirs returns, for each hierarchy, the host directory of the
// calling process's own cgroup.
func callerCgroupDirs() ([]hierarchy, []string, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, nil, fmt.Errorf("cgroups: %w", err)
	}
	pc, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, nil, fmt.Errorf("cgroups: %w", err)
	}
	hs := parseCgroupMounts(mi)
	if len(hs) == 0 {
		return nil, nil, errors.New("cgroups: nothing mounted under " + cgroupRoot)
	}
	self := parseProcCgroup(pc)
	dirs := make([]string, len(hs))
	for i, h := range hs {
		p, ok := self[h.Key]
		if !ok {
			return nil, nil, fmt.Errorf("cgroups: %s (%q) is not in /proc/self/cgroup", h.Mount, h.Key)
		}
		rel, ok := strings.CutPrefix(p, strings.TrimSuffix(h.Root, "/"))
		if !ok {
			return nil, nil, fmt.Errorf("cgroups: our cgroup %s is outside %s's root %s", p, h.Mount, h.Root)
		}
		dirs[i] = filepath.Join(h.Mount, rel)
	}
	return hs, dirs, nil
}

// createBoxCgroups makes the box's cgroup under the caller's own cgroup in
// every hierarchy. The box's init moves itself in, then enters a cgroup
// namespace, so its systemd sees this directory as the root and never
// writes above it.
func createBoxCgroups(name string) (*boxCgroups, error) {
	hs, bases, err := callerCgroupDirs()
	if err != nil {
		return nil, err
	}
	cg := &boxCgroups{Hierarchies: hs}
	for i, h := range hs {
		dir := filepath.Join(bases[i], name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			cg.remove(time.Now().Add(time.Second))
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		cg.Dirs = append(cg.Dirs, dir)
		if !h.V2 && slices.Contains(strings.Split(h.Key, ","), "cpuset") {
			// A new v1 cpuset has no CPUs and no memory nodes, and
			// no task may join it until it has both: copy the parent's.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if err := copyIfEmpty(filepath.Join(bases[i], f), filepath.Join(dir, f)); err != nil {
					cg.remove(time.Now().Add(time.Second))
					return nil, fmt.Errorf("create cgroup: %w", err)
				}
			}
		}
	}
	return cg, nil
}

func copyIfEmpty(from, to string) error {
	cur, err := os.ReadFile(to)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(cur)) > 0 {
		return nil
	}
	v, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, v, 0)
}

// remove deletes the box's cgroups, innermost first. The systemd in the
// box leaves its own sub-cgroups behind when it is killed; v1 cgroups
// are never removed by the kernel. A cgroup whose last process is still
// exiting is busy for a moment, so EBUSY is retried until the deadline.
func (cg *boxCgroups) remove(deadline time.Time) error {
	var errs []error
	for _, d := range cg.Dirs {
		if err := removeCgroupTree(d, deadline); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeCgroupTree(root string, deadline time.Time) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", root, err)
	}
	// Deepest first: a cgroup with children cannot go.
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range dirs {
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if errors.Is(err, unix.EBUSY) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond) // poll: the kernel gives no event for "cgroup empty" on v1
				continue
			}
			return fmt.Errorf("remove cgroup %s: %w", d, err)
		}
	}
	return nil
}

// collectStaleCgroups removes the box cgroups, under the caller's own
// cgroups, left by processes that are gone (killed before they could tear
// their box down). A cgroup that still holds a process cannot be removed
// and is left alone. It returns the directories it removed.
func collectStaleCgroups() ([]string, error) {
	_, bases, err := callerCgroupDirs()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, base := range bases {
		ents, err := os.ReadDir(base)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range ents {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), boxCgroupPrefix) || ownerAlive(e.Name()) {
				continue
			}
			d := filepath.Join(base, e.Name())
			if err := removeCgroupTree(d, time.Now()); err == nil {
				removed = append(removed, d)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// ownerAlive tells whether the process named in a box cgroup's name
// (sdbox.PID.START.RANDOM) still runs. Names it cannot parse count as
// alive: they are not ours to remove.
func ownerAlive(name string) bool {
	f := strings.Split(strings.TrimPrefix(name, boxCgroupPrefix), ".")
	if len(f) != 3 {
		return true
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return true
	}
	st, err := readStat(pid)
	return err == nil && st.StartTime == start
}

// cgroupSymlinks lists the symbolic links directly in the host's
// /sys/fs/cgroup (such as cpu -> cpu,cpuacct), to be made again in the box.
func cgroupSymlinks() (map[string]string, error) {
	ents, err := os.ReadDir(cgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	links := map[string]string{}
	for _, e := range ents {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		t, err := os.Readlink(path.Join(cgroupRoot, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
		links[e.Name()] = t
	}
	return links, nil
}
