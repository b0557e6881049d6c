package sdbox

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Paths inside the box that the harness owns.
const (
	boxStateDir    = "/run/sdbox"           // staging area of the init script
	boxEmptyDir    = boxStateDir + "/empty" // the generator path when no generators are wanted
	boxGenDir      = boxStateDir + "/generators"
	boxSystemdPath = "/lib/systemd/systemd"
	boxPath        = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// droppedCaps are removed from the bounding set of the box's systemd and
// so of everything it starts: they act on the whole machine whatever the
// namespaces (kernel modules, the clock, kexec, raw I/O, wake alarms).
// Without CAP_SYS_BOOT, systemd-shutdown in a container simply exits.
var droppedCaps = []string{"sys_module", "sys_time", "sys_boot", "sys_rawio", "wake_alarm"}

// scriptParams is everything the init script needs; buildScript turns it
// into shell.
type scriptParams struct {
	Name        string
	MachineID   string
	CgroupProcs []string          // host cgroup.procs files the init joins before its cgroup namespace
	Hierarchies []hierarchy       // cgroup hierarchies to mount again inside
	Symlinks    map[string]string // symbolic links in /sys/fs/cgroup
	HostDev     map[string]uint64 // box path -> st_dev of the same path on the host (safety gate)
	Binds       []resolvedBind
	Generators  bool     // bind at boxGenDir is the generator directory
	Sysusers    []string // sysusers.d lines applied to the private /etc
}

type resolvedBind struct {
	Source, Target string
	Dir            bool
	Writable       bool
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// buildScript returns the two stages of the box's init. The init gets
// runArchive (see there) on fd 3. Stage 1 runs as
// PID 1 of the new PID, mount, UTS and IPC namespaces: it moves itself into
// the box's cgroups, then enters a new cgroup namespace rooted there and
// runs stage 2 (same PID), which builds the box's file system view and
// execs systemd. Stage 2 is passed to stage 1 as $1.
func buildScript(p scriptParams) (stage1, stage2 string) {
	var s strings.Builder
	s.WriteString("set -eu\n")
	for _, f := range p.CgroupProcs {
		fmt.Fprintf(&s, "echo 0 > %s\n", shellQuote(f))
	}
	s.WriteString("exec unshare --cgroup -- /bin/sh -c \"$1\" sdbox-init\n")
	stage1 = s.String()

	s.Reset()
	w := func(format string, args ...any) { fmt.Fprintf(&s, format+"\n", args...) }
	w("set -eu")
	w("fail() { echo \"sdbox: refusing to boot: $*\" >&2; exit 1; }")
	w("# Nothing below may propagate to the host's mount namespace. mount -n:")
	w("# libmount would create /run/mount on the host's /run otherwise.")
	w("mount -n --make-rprivate /")
	w("mount -n -t proc -o nosuid,nodev,noexec proc /proc")
	w("# Kernel settings are not per namespace (or are per network namespace,")
	w("# which the box shares): systemd bumps fs.file-max, fs.nr_open and")
	w("# net.unix.max_dgram_qlen at boot unless /proc/sys is read-only.")
	w("for p in /proc/sys /proc/sysrq-trigger; do [ -e $p ] || continue; mount -n --bind $p $p; mount -n -o remount,bind,ro $p; done")
	w("mount -n -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run")
	w("mkdir -p %s %s/bind", boxEmptyDir, boxStateDir)
	w("# The console is the harness's pty (fd 0), staged while the host's /dev is visible.")
	w(": > %[1]s/console && mount -n --bind /proc/self/fd/0 %[1]s/console", boxStateDir)
	w("# Host paths to bind are staged now, while /tmp is still the host's.")
	for i, b := range p.Binds {
		st := fmt.Sprintf("%s/bind/%d", boxStateDir, i)
		if b.Dir {
			w("mkdir %s", st)
		} else {
			w(": > %s", st)
		}
		w("mount -n --bind %s %s", shellQuote(b.Source), st)
	}
	w("# /etc and /var: the host's, with every write going to a tmpfs.")
	for _, d := range []string{"etc", "var"} {
		w("mkdir -p %[1]s/%[2]s.upper %[1]s/%[2]s.work", boxStateDir, d)
		w("mount -n -t overlay -o lowerdir=/%[2]s,upperdir=%[1]s/%[2]s.upper,workdir=%[1]s/%[2]s.work overlay /%[2]s", boxStateDir, d)
	}
	w("mkdir -p /etc/systemd/system /var/tmp /var/log/journal")
	w("mount -n -t tmpfs -o mode=0755,nosuid,nodev tmpfs /etc/systemd/system")
	w("mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp")
	w("mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp")
	w("mount -n -t tmpfs -o mode=2755,nosuid,nodev tmpfs /var/log/journal")
	w("# A private /dev: the box must not create /dev/log or write to the")
	w("# host's console or kernel log.")
	w("mount -n -t tmpfs -o mode=0755,nosuid,strictatime tmpfs /dev")
	for _, n := range []struct {
		name         string
		major, minor int
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		w("mknod -m 0666 /dev/%s c %d %d", n.name, n.major, n.minor)
	}
	w("mkdir /dev/pts /dev/shm")
	w("mount -n -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts /dev/pts")
	w("ln -s pts/ptmx /dev/ptmx")
	w("mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm")
	w(": > /dev/console && mount -n --move %[1]s/console /dev/console && rm %[1]s/console", boxStateDir)
	w("ln -s /proc/self/fd /dev/fd && ln -s /proc/self/fd/0 /dev/stdin && ln -s /proc/self/fd/1 /dev/stdout && ln -s /proc/self/fd/2 /dev/stderr")
	w("# A read-only sysfs, and the cgroup hierarchies mounted again from")
	w("# inside the cgroup namespace, so that their root is the box's cgroup.")
	w("mount -n --bind /sys /sys && mount -n -o remount,bind,ro,nosuid,nodev,noexec /sys")
	unifiedAtRoot := len(p.Hierarchies) == 1 && p.Hierarchies[0].V2 && p.Hierarchies[0].Rel() == ""
	if unifiedAtRoot {
		w("mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 %s", cgroupRoot)
	} else {
		w("mount -n -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs %s", cgroupRoot)
		for _, h := range p.Hierarchies {
			mp := shellQuote(h.Mount)
			w("mkdir -p %s", mp)
			if h.V2 {
				w("mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 %s", mp)
			} else {
				w("mount -n -t cgroup -o nosuid,nodev,noexec,%s cgroup %s", strings.Join(h.Opts, ","), mp)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(p.Symlinks)) {
			w("ln -s %s %s", shellQuote(p.Symlinks[name]), shellQuote(cgroupRoot+"/"+name))
		}
	}
	w("# Staged binds into place.")
	for i, b := range p.Binds {
		st := fmt.Sprintf("%s/bind/%d", boxStateDir, i)
		t := shellQuote(b.Target)
		if b.Dir {
			w("[ -d %[1]s ] || mkdir -p %[1]s", t)
		} else {
			w("[ -e %[1]s ] || { mkdir -p \"$(dirname %[1]s)\" && : > %[1]s; }", t)
		}
		w("mount -n --move %s %s", st, t)
		if !b.Writable {
			w("mount -n -o remount,bind,ro %s", t)
		}
	}
	w("hostname %s", shellQuote(p.Name))
	w("printf '%%s\\n' %s > /etc/hostname", shellQuote(p.Name))
	w("printf '%%s\\n' %s > /etc/machine-id", shellQuote(p.MachineID))
	w("# The masks, sdbox.target and the manager's drop-in: a tar archive on fd 3")
	w("# (one process instead of one ln per mask).")
	w("tar -x -C /run -f - <&3")
	w("exec 3<&-")
	w("# Safety gate: never start systemd unless these are private.")
	w("private() { [ \"$(stat -f -c %%T \"$1\")\" = \"$2\" ] || fail \"$1 is not $2\"; }")
	for _, d := range []string{"/run", "/tmp", "/var/tmp", "/var/log/journal", "/etc/systemd/system", "/dev"} {
		w("private %s tmpfs", d)
	}
	w("private /etc overlayfs")
	w("private /var overlayfs")
	for _, d := range slices.Sorted(maps.Keys(p.HostDev)) {
		w("[ \"$(stat -c %%d %s)\" != %d ] || fail \"%s is the host's\"", shellQuote(d), p.HostDev[d], d)
	}
	w("[ ! -w /proc/sys/kernel/hostname ] || fail '/proc/sys is writable'")
	w("[ -L /run/systemd/system/systemd-tmpfiles-setup.service ] || fail 'tmpfiles is not masked'")
	if len(p.Sysusers) > 0 {
		w("# Users for the box's units, in the private /etc only (checked above).")
		args := make([]string, len(p.Sysusers))
		for i, l := range p.Sysusers {
			args[i] = shellQuote(l)
		}
		w("systemd-sysusers --inline %s", strings.Join(args, " "))
	}
	gen := boxEmptyDir
	if p.Generators {
		gen = boxGenDir
	}
	w("exec env -i container=%s PATH=%s SYSTEMD_GENERATOR_PATH=%s SYSTEMD_ENVIRONMENT_GENERATOR_PATH=%s \\",
		shellQuote(p.Name), boxPath, gen, boxEmptyDir)
	w("  setpriv --bounding-set %s -- \\", "-"+strings.Join(droppedCaps, ",-"))
	w("  %s --system --unit=%s", boxSystemdPath, bootTarget)
	stage2 = s.String()
	return stage1, stage2
}
