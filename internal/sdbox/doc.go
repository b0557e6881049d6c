// Package sdbox boots throwaway systemd instances ("boxes") for
// integration tests: the machine's own systemd 252 as PID 1 of private
// namespaces, booted in well under a second, with a real journald and a
// real system bus, and gone without a trace when the test ends or dies.
//
//	sdbox.Require(t) // skips (or fails when $CI is set) unless root, systemd, util-linux, D-Bus
//	box, err := sdbox.Boot(ctx, t, sdbox.Options{})
//	box.WriteFile("/run/systemd/system/x.service", unit, 0o644)
//	box.Systemctl(ctx, "daemon-reload")
//	box.Systemctl(ctx, "start", "x.service")
//	conn, err := box.Manager(ctx) // go-systemd's *dbus.Conn to the box's manager
//
// A program that is not a test (the benchmark's bench/sdrow) boots a box
// with Start instead of Boot, and must Close it itself.
//
// The box shares the host's network namespace, so a socket unit in it
// listening on a loopback port is reachable from the test; 127.0.0.2,
// 127.0.0.3, ... can all be bound as client source addresses.
//
// # How a box boots
//
// Boot starts /bin/sh as PID 1 of new PID, mount, UTS and IPC namespaces
// (clone flags from Go, no unshare(1) needed for those), in a new session,
// with PR_SET_PDEATHSIG=SIGKILL. The script (see buildScript) does, in
// order:
//
//   - moves itself into the box's own cgroup (below), then execs its second
//     stage through unshare --cgroup (same PID), so that the new cgroup
//     namespace is rooted there;
//   - makes / rprivate, so that nothing mounted later reaches the host, and
//     mounts a /proc for the new PID namespace; /proc/sys and sysrq-trigger
//     are made read-only (see "What the box may not touch");
//   - mounts a tmpfs on /run, then stages the requested binds there while
//     the host's /tmp is still visible (a t.TempDir() lives in it);
//   - overlays /etc and /var with the host's as the lower layer and a tmpfs
//     in /run/sdbox as the upper one: the box reads the host's files and
//     every write stays in the box;
//   - mounts private tmpfs on /etc/systemd/system, /tmp, /var/tmp and
//     /var/log/journal, and a private /dev (tmpfs with null, zero, full,
//     random, urandom, tty, a new devpts instance, shm), whose console is
//     a pty the harness reads (Box.Console);
//   - binds /sys read-only and mounts over its /sys/fs/cgroup a tmpfs with
//     every cgroup hierarchy of the host mounted again from inside the
//     cgroup namespace;
//   - moves the binds into place, sets the host name and a fresh machine ID,
//     and extracts into /run/systemd a tar archive that Boot passes on fd 3
//     (a memfd): the masks, sdbox.target and a system.conf drop-in (one tar
//     process rather than a hundred ln: boot went from 0.3 s to 0.17 s);
//   - checks that /run, /tmp, /var/tmp, /var/log/journal,
//     /etc/systemd/system and /dev are tmpfs and not the host's (by device
//     number), that /etc and /var are overlays, that /proc/sys is
//     read-only and that tmpfiles is masked, and refuses to go on otherwise;
//   - with Options.Sysusers, runs systemd-sysusers --inline on its lines:
//     the users (a test's units may run as "powerhouse") land in the
//     private /etc overlay only, never in the host's user database;
//   - execs /lib/systemd/systemd --system --unit=sdbox.target with a clean
//     environment holding container=NAME (systemd then knows it is in a
//     container: no swap units, no swapoff and no read-only remount of the
//     shared root file system by systemd-shutdown, exit instead of
//     reboot(2)), SYSTEMD_GENERATOR_PATH and
//     SYSTEMD_ENVIRONMENT_GENERATOR_PATH pointing at an empty directory (or
//     at Options.Generators), through setpriv with CAP_SYS_MODULE,
//     CAP_SYS_TIME, CAP_SYS_BOOT, CAP_SYS_RAWIO and CAP_WAKE_ALARM dropped
//     from the bounding set.
//
// sdbox.target wants sysinit.target, basic.target, sockets.target, the
// journal's sockets and service, dbus.socket and dbus.service. Boot
// returns when the manager's SystemState is running or degraded. Measured
// on the development machine (2 CPUs, other tests running): boot 0.16–0.4
// s (0.15–0.7 s with -race), of which systemd's own startup is under 0.1 s;
// clean power-off 0.07–0.17 s; a socket-activated first request 5 ms.
//
// Commands run inside with nsenter into the box's mount, UTS, IPC, PID
// and cgroup namespaces. Files are written from the host through
// /proc/PID/root with openat2(RESOLVE_IN_ROOT), so the box's absolute
// symbolic links cannot lead a write onto the host, and only onto the
// box's own tmpfs and overlays.
//
// # Talking to the box's manager
//
// systemd refuses a connection to /run/systemd/private from a process it
// cannot see: SO_PEERCRED gives it PID 0 for a peer outside its PID
// namespace, which it reports as "Incoming private connection from
// unprivileged client, refusing: No data available". Manager and
// SystemBus therefore have the connection made by a helper in the box's
// PID namespace: the test binary itself, re-executed through nsenter
// --pid with an environment variable that this package's init function
// recognises, which connects and passes the socket back over SCM_RIGHTS.
// The kernel recorded the peer at connect(), so systemd keeps serving it.
// Processes inside the box (a supervisor under test) simply use
// dbus.NewSystemdConnectionContext.
//
// A new private connection is pinged until systemd answers before it is
// handed out: systemd 252 sometimes leaves the first message that follows
// the authentication unread in its buffer (seen while it is busy booting)
// until more bytes arrive, and a lone first call would then never return.
//
// # Users' service managers
//
// A box booted with Options.UserManagers runs users' service managers:
//
//	u, err := box.UserManager(ctx, "phuser") // useradd in the box, then user@UID.service
//	u.WriteFile(ctx, u.Home()+"/.config/systemd/user/x.service", unit, 0o644)
//	u.Systemctl(ctx, "start", "x.service") // systemctl --user, as the user
//	u.Run(ctx, "/run/bin/tool", "--user")  // HOME, XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS set
//	out, err := u.Journal(ctx, "x.service")
//
// UserManager creates the user with useradd inside the box, after
// checking that the box's /etc is its overlay: the user exists in the box
// alone, never in the host's user database. Its home is under
// /var/lib/sdbox-home, on the box's /var overlay. Then it starts
// user@UID.service itself, as logind would at a first login (logind stays
// masked, so `loginctl enable-linger` is not available);
// user-runtime-dir@UID.service mounts /run/user/UID first. Without
// logind, pam_systemd does nothing (it checks for /run/systemd/seats), so
// the box's drop-in for user@.service sets XDG_RUNTIME_DIR, without which
// systemd --user refuses to start. UserManager returns once `systemctl
// --user is-system-running` says running or degraded: user@UID.service
// is ready at basic.target, before the user's sockets are.
//
// The user's commands (User.Run, User.Start, User.Systemctl) run through
// nsenter and setpriv as the user, in its home, with HOME, USER,
// XDG_RUNTIME_DIR and, when the user bus listens (package
// dbus-user-session), DBUS_SESSION_BUS_ADDRESS. systemctl --user talks to
// the manager over $XDG_RUNTIME_DIR/systemd/private and needs no bus;
// go-systemd's NewUserConnectionContext uses the session bus and fails
// without one. From the test process, User.Manager connects go-systemd
// over the private socket and User.Bus to the user bus, both made by the
// user inside the box, as for the system manager.
//
// The user managers read the host's user units: what the host's packages
// hook into the targets they start (gpg-agent sockets and the like) is
// masked in /run/systemd/user, except the user bus, and so is the user's
// tmpfiles. Their stop timeouts are bounded, like the box's.
//
// The box's journal is a runtime one, which journald does not split per
// user: the user cannot read it with journalctl --user, and root's
// journalctl --user-unit matches root's own uid. User.Journal asks for
// _SYSTEMD_USER_UNIT= as root.
//
// # What the box may not touch: the masks and why
//
// A box shares the host's kernel, network namespace and root file system.
// Units that write shared state are masked (linked to /dev/null in
// /run/systemd/system), whether or not anything pulls them in:
// systemd-tmpfiles-* (it cleans /tmp: with a shared /tmp it would empty the
// host's), sysctl, sysusers, modules-load, kmod-static-nodes, binfmt,
// random-seed, timesyncd and timedated, udev, logind and user sessions,
// gettys and console setup, journal-flush and the audit socket, firstboot,
// machine-id-commit, hwdb and catalog updates, update-done, utmp, ldconfig,
// remount-fs and fsck, repart and growfs, hostnamed and localed, networkd
// and resolved, the kernel file system mounts, and the host's timers (apt,
// fstrim, e2scrub, man-db). On top of that, everything that this machine's
// packages hook into the .wants/ or .requires/ of a target a box starts
// (sysinit, basic, sockets, timers, local-fs, ...) is masked too, except the
// journal and D-Bus; a machine with more packages gets more masks.
//
// systemd itself writes some shared state at boot whatever the units:
// it raises fs.file-max, fs.nr_open and net.unix.max_dgram_qlen (the last
// is per network namespace, and the box shares the host's), which the
// read-only /proc/sys prevents; it would load kernel modules and set the
// clock, which the dropped capabilities prevent; it writes status lines
// to /dev/console and creates /dev/log, which the private /dev keeps in
// the box. mount(8) is always run with -n, or libmount would create
// /run/mount on the host's /run before the box's /run is mounted.
//
// # Cgroups
//
// The development machine has a hybrid layout: v1 controllers (cpu,
// cpuacct, cpuset, memory, devices, freezer, blkio, pids), the named v1
// hierarchy name=systemd, and cgroup2 at /sys/fs/cgroup/unified; the host's
// PID 1 is not systemd. A box gets a cgroup of its own in every hierarchy,
// sdbox.OWNERPID.OWNERSTART.RANDOM under the test process's own cgroup
// there (for a v1 cpuset, the parent's cpus and mems are copied in, or no
// task could join it). Its init moves itself in, then enters a new cgroup
// namespace, and the hierarchies are mounted again inside, so systemd sees
// its cgroup as the root (its /proc/1/cgroup says "/"), builds init.scope
// and system.slice below it, and cannot write above it. Two boxes
// therefore run side by side without touching the host's root cgroups or
// each other's. systemd 252 runs there in hybrid mode ("System is tainted:
// cgroupsv1"). A host with only cgroup2 gets the same with one hierarchy.
//
// # Tear-down
//
// Close, registered with t.Cleanup by Boot:
//
//  1. kills the commands entered with Run and Start inside the box and
//     sends SIGCONT to their nsenter, and repeats that until the box is
//     gone: at power-off systemd SIGSTOPs every process of the namespace,
//     an entered command included; its nsenter on the host then stops
//     itself too and never reaps it, and the namespace cannot end while
//     that zombie is unreaped. The nsenter is never killed while its child
//     lives: the child would be reparented to the host's init, which may
//     take seconds to reap it, and systemd-shutdown waits for it;
//  2. sends SIGRTMIN+4 to the box's PID 1 (clean power-off) and waits up to
//     StopTimeout, then sends SIGKILL, which ends every process of the
//     namespace;
//  3. checks that no process remains in the box's PID namespace (by the
//     namespace's inode), closes the console, removes the box's cgroups.
//
// Processes are only ever signalled by a handle that cannot outlive them:
// the box's PID 1 through os.Process (a pidfd), others after checking their
// start time (field 22 of /proc/PID/stat) once a pidfd on them is open.
//
// If the test process dies, even by SIGKILL, the kernel kills the box's
// PID 1 (PR_SET_PDEATHSIG, which fires when the thread that forked the
// child ends: that thread is locked to a goroutine that lives as long as
// the box), and with it the namespace. The empty cgroups left behind are
// removed by the next Boot of any test process, once their owner is gone.
//
// # Requirements
//
// Root; systemd (/lib/systemd/systemd), util-linux (unshare, nsenter,
// setpriv, mount), coreutils, D-Bus (dbus-daemon or dbus-broker: `apt-get
// install dbus`; .ci/run installs it); a kernel with overlayfs, openat2
// and pidfds (5.6 or later). Boot refuses to start without root; Require
// turns a missing requirement into a skip with the fix in the message, or
// into a failure when $CI is set.
package sdbox
