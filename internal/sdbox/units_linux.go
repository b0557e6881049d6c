package sdbox

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// bootTarget is the unit the box's systemd starts instead of default.target.
const bootTarget = "sdbox.target"

// alwaysMasked are units masked in every box, whether or not something
// pulls them in at boot, because they write state the box shares with the
// host (the root file system outside the private mounts, kernel settings,
// devices, the host's consoles) or are of no use in a throwaway box. Each
// group says why.
var alwaysMasked = []string{
	// tmpfiles: cleans and creates files all over the file system; with a
	// shared /tmp it would empty the host's /tmp.
	"systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
	"systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer",
	// Kernel state: sysctls, modules, binfmt handlers, the clock, swap,
	// entropy are global, not per namespace.
	"systemd-sysctl.service", "systemd-modules-load.service", "kmod-static-nodes.service",
	"modprobe@.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
	"proc-sys-fs-binfmt_misc.mount", "systemd-random-seed.service", "systemd-timesyncd.service",
	"systemd-timedated.service", "hwclock.service", "systemd-time-wait-sync.service",
	"systemd-pstore.service", "systemd-rfkill.service", "systemd-rfkill.socket",
	"systemd-backlight@.service", "systemd-hibernate-resume@.service", "systemd-pcrphase.service",
	"systemd-pcrphase-sysinit.service", "systemd-pcrphase-initrd.service",
	// Users, identity and the root file system: sysusers writes /etc/passwd,
	// the others /etc/machine-id, hwdb, the catalog, utmp/wtmp, ld.so.cache,
	// or remount and check the shared root file system.
	"systemd-sysusers.service", "systemd-firstboot.service", "systemd-machine-id-commit.service",
	"systemd-hwdb-update.service", "systemd-journal-catalog-update.service",
	"systemd-update-done.service", "systemd-update-utmp.service",
	"systemd-update-utmp-runlevel.service", "ldconfig.service", "systemd-remount-fs.service",
	"systemd-fsck-root.service", "systemd-fsck@.service", "systemd-quotacheck.service",
	"quotaon.service", "systemd-repart.service", "systemd-growfs-root.service",
	"systemd-growfs@.service", "systemd-sysext.service", "systemd-confext.service",
	"systemd-boot-update.service", "systemd-boot-random-seed.service",
	"systemd-hostnamed.service", "systemd-localed.service",
	// Devices: udev would process the host's devices.
	"systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
	"systemd-udev-trigger.service", "systemd-udev-settle.service",
	// Logins and consoles: logind takes over seats and VTs, gettys and the
	// console setup write to the host's terminals.
	"systemd-logind.service", "systemd-user-sessions.service", userManagerUnit,
	userRuntimeDirUnit, "getty@.service", "serial-getty@.service",
	"console-getty.service", "container-getty@.service", "autovt@.service",
	"getty-static.service", "systemd-vconsole-setup.service", "console-setup.service",
	"keyboard-setup.service", "setvtrgb.service", "debug-shell.service",
	"emergency.service", "rescue.service", "systemd-ask-password-console.path",
	"systemd-ask-password-wall.path",
	// Journal: flushing would only move the private journal; the audit
	// socket would subscribe to the host kernel's audit stream.
	"systemd-journal-flush.service", "systemd-journald-audit.socket",
	// Network and other daemons the host may have installed.
	"systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
	"systemd-network-generator.service", "systemd-resolved.service", "systemd-homed.service",
	"systemd-userdbd.service", "systemd-userdbd.socket", "systemd-machined.service",
	"systemd-importd.service", "systemd-portabled.service", "systemd-oomd.service",
	"systemd-oomd.socket", "systemd-coredump.socket", "systemd-initctl.socket",
	"polkit.service", "packagekit.service", "packagekit-offline-update.service",
	"cryptdisks.service", "cryptdisks-early.service", "rc-local.service",
	// Mounts of kernel file systems: useless in a box and slow to set up.
	"dev-hugepages.mount", "dev-mqueue.mount", "sys-kernel-config.mount",
	"sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
	// Timers: periodic jobs (apt, fstrim, e2scrub, man-db, ...) act on the host.
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
	"e2scrub_reap.service", "fstrim.timer", "man-db.timer", "logrotate.timer",
}

// The units that run a user's service manager, masked unless a box is
// booted with Options.UserManagers: nothing in a box starts them (logind,
// which would, is masked), UserManager does.
const (
	userManagerUnit    = "user@.service"
	userRuntimeDirUnit = "user-runtime-dir@.service"
)

// keepUnits are the units, wanted by the targets a box starts, that it
// does not mask: the journal and the system bus.
var keepUnits = []string{
	"systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
	"dbus.socket", "dbus.service", "dbus-broker.service",
}

// pulledTargets are the targets a box's boot pulls in, directly or as the
// default dependencies of every service (sysinit.target, basic.target).
var pulledTargets = []string{
	"sysinit.target", "basic.target", "sockets.target", "timers.target", "paths.target",
	"slices.target", "local-fs.target", "local-fs-pre.target", "swap.target",
	"cryptsetup.target", "veritysetup.target", "integritysetup.target", "remote-fs.target",
	"network.target", "network-pre.target", "time-set.target", "time-sync.target",
}

// unitDirs are the unit directories the box's systemd reads that come from
// the host's file system (its /etc/systemd/system is a private tmpfs).
var unitDirs = []string{
	"/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system",
}

// masks returns the units to mask in a box: the fixed list plus anything
// installed on this machine into the .wants/ or .requires/ directory of a
// target a box starts, except the units it keeps and targets and slices
// (which do nothing by themselves). So a package that hooks a new unit into
// sysinit.target on some machine is masked there too. With userManagers,
// user@.service and user-runtime-dir@.service are left unmasked.
func masks(dirs []string, userManagers bool) []string {
	set := map[string]bool{}
	for _, u := range alwaysMasked {
		set[u] = true
	}
	if userManagers {
		delete(set, userManagerUnit)
		delete(set, userRuntimeDirUnit)
	}
	return hooked(set, dirs, pulledTargets, keepUnits)
}

// hooked adds to set the units found in dirs in the .wants/ and .requires/
// directories of targets, except keep, targets and slices, and returns
// set's units sorted.
func hooked(set map[string]bool, dirs, targets, keep []string) []string {
	for _, d := range dirs {
		for _, t := range targets {
			for _, sub := range []string{".wants", ".requires"} {
				ents, err := os.ReadDir(filepath.Join(d, t+sub))
				if err != nil {
					continue
				}
				for _, e := range ents {
					n := e.Name()
					if slices.Contains(keep, n) || strings.HasSuffix(n, ".target") || strings.HasSuffix(n, ".slice") {
						continue
					}
					set[n] = true
				}
			}
		}
	}
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// User managers (Options.UserManagers) read the host's user units. What
// this machine's packages hook into the targets a user manager starts
// (gpg-agent and dirmngr sockets, package helpers, ...) is masked in them
// too, except the user bus, which `powerhouse --user` talks to; and so is
// the user's tmpfiles, which has nothing to set up in a throwaway home.
// The user is unprivileged and every directory it may write in a box is
// the box's own: this keeps user managers quick and alike on every
// machine, not the host safe.
var (
	userAlwaysMasked = []string{
		"systemd-tmpfiles-setup.service", "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer",
	}
	userKeepUnits     = []string{"dbus.socket", "dbus.service"}
	userPulledTargets = []string{"default.target", "basic.target", "sockets.target", "timers.target", "paths.target"}
	// /etc/systemd/user is the host's as the box's overlay starts.
	userUnitDirs = []string{
		"/etc/systemd/user", "/usr/local/lib/systemd/user", "/usr/lib/systemd/user", "/lib/systemd/user",
	}
)

// userMasks returns the units to mask in the user managers of a box.
func userMasks(dirs []string) []string {
	set := map[string]bool{}
	for _, u := range userAlwaysMasked {
		set[u] = true
	}
	return hooked(set, dirs, userPulledTargets, userKeepUnits)
}

// bootTargetUnit is the text of sdbox.target. It pulls in what every
// service would pull in anyway (so boot, not the first test unit, pays for
// it), the journal, and the system bus when withBus.
func bootTargetUnit(withBus bool) string {
	want := "sysinit.target basic.target sockets.target systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service"
	if withBus {
		want += " dbus.socket dbus.service"
	}
	return "# generated by powerhouse internal/sdbox\n" +
		"[Unit]\n" +
		"Description=sdbox test box\n" +
		"Wants=" + want + "\n" +
		"After=" + want + "\n" +
		"AllowIsolate=yes\n"
}

// managerConf is a drop-in for the box's system.conf: bounded stop
// timeouts so that a clean power-off cannot hang a test for the default
// 90 s, and status lines on the console, which is the harness's pty.
const managerConf = "# generated by powerhouse internal/sdbox\n" +
	"[Manager]\n" +
	"ShowStatus=yes\n" +
	"DefaultTimeoutStartSec=30s\n" +
	"DefaultTimeoutStopSec=5s\n"

// userManagerConf is the user managers' counterpart of managerConf, and
// userServiceConf a drop-in for user@.service. Its TimeoutStopSec= (120
// s) would outlast a box's StopTimeout at power-off. And systemd --user
// refuses to start without $XDG_RUNTIME_DIR, which pam_systemd sets only
// where logind runs (it is a no-op without /run/systemd/seats): the
// drop-in sets it as pam_systemd would, and the user manager passes it on
// to every unit it starts.
const (
	userManagerConf = "# generated by powerhouse internal/sdbox\n" +
		"[Manager]\n" +
		"DefaultTimeoutStartSec=30s\n" +
		"DefaultTimeoutStopSec=5s\n"
	userServiceConf = "# generated by powerhouse internal/sdbox\n" +
		"[Service]\n" +
		"Environment=XDG_RUNTIME_DIR=/run/user/%i\n" +
		"TimeoutStopSec=5s\n"
)

// runArchive returns the tar archive that the init script extracts into
// the box's /run: a link to /dev/null for every masked unit in
// systemd/system, sdbox.target, and the manager's drop-in. userMasked is
// nil unless the box runs user managers; then the archive also holds
// their masks in systemd/user, their manager's drop-in and
// user@.service's.
func runArchive(masked, userMasked []string, withBus bool) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755})
	}
	file := func(name, text string) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(text))}); err != nil {
			return err
		}
		_, err := tw.Write([]byte(text))
		return err
	}
	err := dir("systemd/")
	if err == nil {
		err = dir("systemd/system/")
	}
	if err == nil {
		err = dir("systemd/system.conf.d/")
	}
	for _, u := range masked {
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "systemd/system/" + u, Linkname: "/dev/null", Mode: 0o777})
		}
	}
	if err == nil {
		err = file("systemd/system/"+bootTarget, bootTargetUnit(withBus))
	}
	if err == nil {
		err = file("systemd/system.conf.d/sdbox.conf", managerConf)
	}
	if userMasked != nil {
		for _, d := range []string{"systemd/user/", "systemd/user.conf.d/", "systemd/system/" + userManagerUnit + ".d/"} {
			if err == nil {
				err = dir(d)
			}
		}
		for _, u := range userMasked {
			if err == nil {
				err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "systemd/user/" + u, Linkname: "/dev/null", Mode: 0o777})
			}
		}
		if err == nil {
			err = file("systemd/user.conf.d/sdbox.conf", userManagerConf)
		}
		if err == nil {
			err = file("systemd/system/"+userManagerUnit+".d/sdbox.conf", userServiceConf)
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("unit archive: %w", err)
	}
	return buf.Bytes(), nil
}
