package sdbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// User is a regular user of a box whose service manager runs
// (user@UID.service), made by Box.UserManager. Its paths are the box's;
// Box.Path gives their host side. Its methods are safe for concurrent
// use.
type User struct {
	box      *Box
	name     string
	uid, gid int
	home     string
	bus      bool // the user bus (dbus-user-session) listens in RuntimeDir
}

// userHomes is the directory of the homes UserManager makes: on the box's
// /var overlay, so a home, like the user, exists in the box alone (the
// host's /home is not the box's to write).
const userHomes = "/var/lib/sdbox-home"

// userManagerTimeout bounds UserManager when its ctx has no deadline.
const userManagerTimeout = 30 * time.Second

var validUserName = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}$`)

// UserManager creates the regular user name in the box (useradd, with a
// home under /var/lib/sdbox-home) unless it exists there, starts its
// service manager, user@UID.service, as logind would at its first login
// (logind is masked in a box; user-runtime-dir@UID.service mounts
// /run/user/UID first), and waits until that manager has finished
// starting up (running or degraded). The box must have been booted with
// Options.UserManagers.
//
// The user lands in the box's private /etc only: UserManager checks that
// /etc is the box's overlay before running useradd, which the box's
// safety gate checked already at boot. It is idempotent: called again for
// the same name, it returns the same user.
//
// When the user bus socket (dbus-user-session) is there once the manager
// runs, the user's commands get DBUS_SESSION_BUS_ADDRESS for it; without
// it, systemctl --user still works (over RuntimeDir/systemd/private), but
// go-systemd's NewUserConnectionContext, which uses the session bus,
// would not.
func (b *Box) UserManager(ctx context.Context, name string) (*User, error) {
	u, err := b.userManager(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("sdbox user manager %s: %w", name, err)
	}
	return u, nil
}

func (b *Box) userManager(ctx context.Context, name string) (*User, error) {
	if !validUserName.MatchString(name) {
		return nil, errors.New(`want a user name of at most 31 of a-z, 0-9, "_" and "-", not starting with a digit or "-"`)
	}
	if !b.userManagers {
		return nil, errors.New("the box was booted without Options.UserManagers: user@.service is masked in it")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, userManagerTimeout)
		defer cancel()
	}
	if err := b.privateEtc(); err != nil {
		return nil, err
	}
	home := userHomes + "/" + name
	if _, err := b.Run(ctx, "getent", "passwd", name); err != nil {
		if out, err := b.Run(ctx, "mkdir", "-p", "-m", "0755", userHomes); err != nil {
			return nil, fmt.Errorf("%w: %s", err, out)
		}
		if out, err := b.Run(ctx, "useradd", "--create-home", "--home-dir", home, "--shell", "/bin/sh",
			"--user-group", "--comment", "sdbox user", name); err != nil {
			return nil, fmt.Errorf("%w: %s", err, out)
		}
	}
	out, err := b.Run(ctx, "getent", "passwd", name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	u := &User{box: b, name: name}
	if err := u.parsePasswd(out); err != nil {
		return nil, err
	}
	unit := fmt.Sprintf("user@%d.service", u.uid)
	// why is what the box says about the user's units when they fail.
	why := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, _ := b.Systemctl(ctx, "status", "--no-pager", "-n", "0", unit, fmt.Sprintf("user-runtime-dir@%d.service", u.uid))
		j, _ := b.Run(ctx, "journalctl", "--no-pager", "-n", "40", "-o", "short-monotonic")
		return fmt.Sprintf("%s\njournal (tail):\n%s", st, j)
	}
	if out, err := b.Systemctl(ctx, "start", unit); err != nil {
		return nil, fmt.Errorf("start %s: %w: %s\n%s", unit, err, out, why())
	}
	if err := u.waitRunning(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", unit, err, why())
	}
	var st unix.Stat_t
	u.bus = unix.Stat(b.Path(u.RuntimeDir()+"/bus"), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK
	return u, nil
}

// privateEtc checks that the box's /etc is its overlay, where useradd's
// writes stay.
func (b *Box) privateEtc() error {
	root, err := b.openRoot()
	if err != nil {
		return err
	}
	defer unix.Close(root)
	fd, err := openDirIn(root, "etc", false)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return err
	}
	if st.Type != unix.OVERLAYFS_SUPER_MAGIC {
		return errors.New("the box's /etc is not its overlay: refusing to create a user")
	}
	return nil
}

// parsePasswd reads the user's line of getent passwd.
func (u *User) parsePasswd(line []byte) error {
	f := strings.Split(strings.TrimSpace(string(line)), ":")
	if len(f) != 7 || f[0] != u.name {
		return fmt.Errorf("getent passwd: unexpected %q", line)
	}
	var err1, err2 error
	u.uid, err1 = strconv.Atoi(f[2])
	u.gid, err2 = strconv.Atoi(f[3])
	if err := errors.Join(err1, err2); err != nil || u.uid <= 0 || u.gid <= 0 {
		return fmt.Errorf("getent passwd: ids of %q: %v", line, err)
	}
	u.home = f[5]
	if !path.IsAbs(u.home) {
		return fmt.Errorf("getent passwd: home %q", u.home)
	}
	return nil
}

// waitRunning polls the user manager until it has started up. systemctl
// start returns once user@UID.service is ready, which systemd --user says
// at basic.target, before default.target and the sockets (the user bus)
// are all up.
func (u *User) waitRunning(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond) // nothing tells the host when startup finishes
	defer tick.Stop()
	var last []byte
	for {
		out, _ := u.Systemctl(ctx, "is-system-running")
		switch s := string(bytes.TrimSpace(out)); s {
		case "running", "degraded":
			return nil
		case "stopping", "offline", "maintenance":
			return fmt.Errorf("user manager is %s", s)
		}
		last = out
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the user manager to start up (last: %q): %w", bytes.TrimSpace(last), ctx.Err())
		case <-tick.C:
		}
	}
}

// Name returns the user's name.
func (u *User) Name() string { return u.name }

// UID returns the user's numeric id in the box.
func (u *User) UID() int { return u.uid }

// GID returns the user's primary group id in the box.
func (u *User) GID() int { return u.gid }

// Home returns the user's home directory in the box.
func (u *User) Home() string { return u.home }

// RuntimeDir returns the user's runtime directory in the box,
// /run/user/UID: its $XDG_RUNTIME_DIR, systemd's %t in user units.
func (u *User) RuntimeDir() string { return "/run/user/" + strconv.Itoa(u.uid) }

// HasBus tells whether the user bus listens in RuntimeDir (it does when
// dbus-user-session is installed).
func (u *User) HasBus() bool { return u.bus }

// env is the environment of the user's commands, as a login would set it
// up: the same variables as root's commands, the user's own, and the ones
// systemctl --user and the D-Bus libraries find the user's manager by.
func (u *User) env() []string {
	rt := u.RuntimeDir()
	env := []string{"PATH=" + boxPath, "HOME=" + u.home, "USER=" + u.name, "LOGNAME=" + u.name, "SHELL=/bin/sh",
		"LANG=C.UTF-8", "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0", "TERM=dumb", "XDG_RUNTIME_DIR=" + rt}
	if u.bus {
		env = append(env, "DBUS_SESSION_BUS_ADDRESS=unix:path="+rt+"/bus")
	}
	return env
}

// Run runs name with args inside the box as the user, in its home, with
// its environment (HOME, USER, XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS
// when the user bus exists), and returns the combined output. When ctx is
// done the command is killed.
func (u *User) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := u.box.run(ctx, u.box.commandAs(u, name, args...), name, args)
	if err != nil {
		return out, fmt.Errorf("as %s: %w", u.name, err)
	}
	return out, nil
}

// Start starts name with args as the user, like Run, and returns at once.
// The command is killed when ctx is done, and by the box's Close.
func (u *User) Start(ctx context.Context, name string, args ...string) (*Process, error) {
	p, err := u.box.startOutput(ctx, u.box.commandAs(u, name, args...), name)
	if err != nil {
		return nil, fmt.Errorf("as %s: %w", u.name, err)
	}
	return p, nil
}

// Systemctl runs systemctl --user with args as the user.
func (u *User) Systemctl(ctx context.Context, args ...string) ([]byte, error) {
	return u.Run(ctx, "systemctl", append([]string{"--user"}, args...)...)
}

// WriteFile writes data to the file p inside the box as the user (so the
// user owns it and the directories it creates, 0700), with mode perm. p
// must be absolute; the user's permissions decide where it may write.
func (u *User) WriteFile(ctx context.Context, p string, data []byte, perm os.FileMode) error {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return fmt.Errorf("sdbox write %s as %s: not a clean absolute path", p, u.name)
	}
	cmd := u.box.commandAs(u, "/bin/sh", "-c", `umask 077 && mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"`,
		"sdbox-write", p, strconv.FormatUint(uint64(perm.Perm()), 8))
	cmd.Stdin = bytes.NewReader(data)
	if out, err := u.box.run(ctx, cmd, "write", []string{p}); err != nil {
		return fmt.Errorf("sdbox write %s as %s: %w: %s", p, u.name, err, out)
	}
	return nil
}

// Journal returns what the box's journal holds of the user's unit: its
// output and the user manager's messages about it. It runs journalctl as
// root: journalctl --user-unit would match root's own uid, and the user
// cannot read the box's journal, which is a runtime one (journald splits
// per user only in persistent journals).
func (u *User) Journal(ctx context.Context, unit string) ([]byte, error) {
	return u.box.Run(ctx, "journalctl", "--no-pager", "-o", "short-monotonic",
		"_SYSTEMD_USER_UNIT="+unit, "+", "USER_UNIT="+unit, "_UID="+strconv.Itoa(u.uid))
}

// Manager connects go-systemd to the user's service manager over its
// private socket (RuntimeDir/systemd/private, as systemctl --user does),
// connected by the user from inside the box. The connection closes when
// ctx is done or with Close.
func (u *User) Manager(ctx context.Context) (*sddbus.Conn, error) {
	c, err := sddbus.NewConnection(func() (*godbus.Conn, error) {
		return u.box.dialBus(ctx, u.RuntimeDir()+"/systemd/private", false, u)
	})
	if err != nil {
		return nil, fmt.Errorf("sdbox user manager %s: %w", u.name, err)
	}
	return c, nil
}

// Bus connects to the user bus (RuntimeDir/bus) as the user and says
// Hello: what go-systemd's NewUserConnectionContext and a program run by
// the user with DBUS_SESSION_BUS_ADDRESS connect to. It fails when there
// is no user bus (HasBus).
func (u *User) Bus(ctx context.Context) (*godbus.Conn, error) {
	if !u.bus {
		return nil, fmt.Errorf("sdbox user bus %s: no bus socket in %s (package dbus-user-session)", u.name, u.RuntimeDir())
	}
	conn, err := u.box.dialBus(ctx, u.RuntimeDir()+"/bus", true, u)
	if err != nil {
		return nil, fmt.Errorf("sdbox user bus %s: %w", u.name, err)
	}
	return conn, nil
}
