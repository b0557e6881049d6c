package sdbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
	"maps"
	"os"
	"os/exec"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// Options configure a box. The zero value is a box named "sdbox" with no
// generators and nothing of the host bound into it.
type Options struct {
	// Name is the box's host name and the value of $container that its
	// systemd sees. Lower-case letters, digits and '-', at most 63
	// characters. Default "sdbox".
	Name string

	// Generators is a host directory of systemd generators. It is bound
	// read-only into the box and is the only generator directory its
	// systemd runs (symbolic links in it resolve inside the box). Empty:
	// no generator runs at all; the host's (fstab, getty, sysv, ...)
	// never do.
	Generators string

	// Binds are host files or directories made visible inside the box,
	// such as the repository's bin/ at a path of the box's own:
	// Bind{Source: repo + "/bin", Target: "/run/test-bin"}.
	Binds []Bind

	// BootTimeout bounds the boot, from starting the box until its
	// manager reports running or degraded. Default 30s.
	BootTimeout time.Duration

	// StopTimeout bounds the clean power-off in Close; the box is then
	// killed. Default 10s.
	StopTimeout time.Duration

	// Sysusers is sysusers.d(5) text (such as units.Sysusers) that
	// systemd-sysusers applies to the box's private /etc before systemd
	// starts, so that units can run as the users it declares. The users
	// exist in the box alone: its /etc is an overlay whose writes go to a
	// tmpfs, checked before systemd-sysusers runs.
	Sysusers []byte

	// UserManagers lets the box run users' service managers (see
	// UserManager): user@.service and user-runtime-dir@.service, masked
	// otherwise, are left as the host has them, and the user managers get
	// masks of their own (see userMasks) and bounded timeouts.
	UserManagers bool
}

// Bind makes a host path visible inside a box.
type Bind struct {
	// Source is the host path, a directory or a file. It must exist, and
	// may not be under /run (the box's /run is mounted over it first).
	Source string
	// Target is the path inside the box; empty means Source. When it does
	// not exist in the box it is created, which is only allowed where the
	// box's writes stay private: under /run, /tmp, /etc or /var.
	Target string
	// Writable binds read-write; the default is read-only.
	Writable bool
}

const (
	defaultName        = "sdbox"
	defaultBootTimeout = 30 * time.Second
	defaultStopTimeout = 10 * time.Second

	// sigRTMIN is the C library's SIGRTMIN, which systemd's signal
	// numbers count from (the kernel's first two real-time signals are
	// reserved by glibc). SIGRTMIN+4 asks systemd to power off.
	sigRTMIN    = 34
	sigPoweroff = syscall.Signal(sigRTMIN + 4)

	consoleLimit = 1 << 20 // bytes of the console kept by the harness
)

// sysusersLines returns the configuration lines of a sysusers.d text,
// without blank lines and comments, for systemd-sysusers --inline.
func sysusersLines(text []byte) []string {
	var out []string
	for _, l := range strings.Split(string(text), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ErrClosed is returned by the methods of a Box that has been closed, or
// whose systemd has exited.
var ErrClosed = errors.New("sdbox: box is closed")

// Box is a running throwaway systemd: PID 1 of its own PID namespace.
// Its methods are safe for concurrent use.
type Box struct {
	name        string
	pid         int    // host PID of the box's PID 1
	startTime   uint64 // and its start time, to recognise it
	ns          nsID   // its PID namespace
	cmd         *exec.Cmd
	exited      chan struct{} // closed once PID 1 has been reaped
	waitErr     error         // PID 1's exit, valid after exited
	console     *console
	cgroups     *boxCgroups
	stopTimeout time.Duration
	// userManagers: booted with Options.UserManagers.
	userManagers bool

	bootTime, poweroffTime time.Duration // measured, for the tests

	mu     sync.Mutex
	closed bool
	procs  map[*Process]struct{}

	closeOnce sync.Once
	closeErr  error
}

// Boot starts a box and waits until its manager answers and has finished
// starting up (SystemState running or degraded). ctx bounds the boot only;
// the box lives until Close. When t is not nil, Close is registered with
// t.Cleanup, and the box's console is logged if the test failed.
//
// Boot needs root. Tests call Require first.
func Boot(ctx context.Context, t testing.TB, opts Options) (*Box, error) {
	if t != nil {
		t.Helper()
	}
	b, err := boot(ctx, opts)
	if err != nil {
		return nil, err
	}
	if t != nil {
		t.Cleanup(func() {
			if err := b.Close(); err != nil {
				t.Errorf("sdbox %s: %v", b.name, err)
			}
			if t.Failed() {
				t.Logf("sdbox %s: console (tail):\n%s", b.name, tail(b.Console(), 16<<10))
			}
		})
	}
	return b, nil
}

// Start is Boot for a program that is not a test (the benchmark's
// bench/sdrow): it boots a box the same way and returns it; the caller
// owns it and must Close it, on every path out, signals included. If the
// caller dies without closing it, the box dies with it all the same
// (PR_SET_PDEATHSIG), and the next Start or Boot removes its empty
// cgroups.
func Start(ctx context.Context, opts Options) (*Box, error) {
	return boot(ctx, opts)
}

func boot(ctx context.Context, opts Options) (_ *Box, err error) {
	began := time.Now()
	if opts.Name == "" {
		opts.Name = defaultName
	}
	if !validName.MatchString(opts.Name) {
		return nil, fmt.Errorf("sdbox boot: name %q: want lower-case letters, digits and '-', at most 63", opts.Name)
	}
	if opts.BootTimeout <= 0 {
		opts.BootTimeout = defaultBootTimeout
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = defaultStopTimeout
	}
	if err := missing(); err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	binds, err := resolveBinds(opts)
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	hostDev := map[string]uint64{}
	for _, p := range []string{"/run", "/tmp", "/var/tmp", "/dev", "/var/log/journal", "/etc/systemd/system"} {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil {
			hostDev[p] = st.Dev
		}
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("sdbox boot: machine id: %w", err)
	}

	// Boxes killed with their test process leave empty cgroups behind.
	_, _ = collectStaleCgroups()
	cgName, err := newBoxCgroupName()
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	cg, err := createBoxCgroups(cgName)
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	defer func() {
		if err != nil && cg != nil {
			_ = cg.remove(time.Now().Add(5 * time.Second))
		}
	}()
	links, err := cgroupSymlinks()
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	procs := make([]string, len(cg.Dirs))
	for i, d := range cg.Dirs {
		procs[i] = path.Join(d, "cgroup.procs")
	}
	stage1, stage2 := buildScript(scriptParams{
		Name:        opts.Name,
		MachineID:   hex.EncodeToString(id[:]),
		CgroupProcs: procs,
		Hierarchies: cg.Hierarchies,
		Symlinks:    links,
		HostDev:     hostDev,
		Binds:       binds,
		Generators:  opts.Generators != "",
		Sysusers:    sysusersLines(opts.Sysusers),
	})
	var userMasked []string
	if opts.UserManagers {
		userMasked = userMasks(userUnitDirs)
	}
	archive, err := runArchive(masks(unitDirs, opts.UserManagers), userMasked, hasBus())
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	fd3, err := memFile("sdbox-run.tar", archive)
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	defer fd3.Close()

	con, err := newConsole()
	if err != nil {
		return nil, fmt.Errorf("sdbox boot: %w", err)
	}
	cmd := exec.Command("/bin/sh", "-c", stage1, "sdbox-init", stage2)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=" + boxPath}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = con.slave, con.slave, con.slave
	cmd.ExtraFiles = []*os.File{fd3}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Setsid:     true,
		// The kernel kills the box when the thread that started it
		// dies: with the test process, even on SIGKILL. SIGKILL from
		// the parent's namespace reaches a namespace's init, and its
		// death ends every process in the namespace.
		Pdeathsig: syscall.SIGKILL,
	}
	b := &Box{
		name:         opts.Name,
		cmd:          cmd,
		exited:       make(chan struct{}),
		console:      con,
		cgroups:      cg,
		stopTimeout:  opts.StopTimeout,
		userManagers: opts.UserManagers,
		procs:        map[*Process]struct{}{},
	}
	started := make(chan error, 1)
	go b.keep(started)
	if err := <-started; err != nil {
		con.close()
		return nil, fmt.Errorf("sdbox boot: start init: %w", err)
	}
	b.pid = cmd.Process.Pid

	ctx, cancel := context.WithTimeout(ctx, opts.BootTimeout)
	defer cancel()
	if err := b.waitBooted(ctx); err != nil {
		cerr := b.Close()
		cg = nil // Close removed them
		return nil, errors.Join(fmt.Errorf("sdbox boot %s: %w\nconsole (tail):\n%s", b.name, err, tail(b.Console(), 8<<10)), cerr)
	}
	b.bootTime = time.Since(began)
	return b, nil
}

// keep starts the box's init and reaps it. Pdeathsig fires when the
// thread that forked the child exits, not the process, so this goroutine
// holds its thread locked for the box's whole life: no other goroutine
// can end that thread early, and it exits only after the box is dead.
func (b *Box) keep(started chan<- error) {
	runtime.LockOSThread()
	if err := b.cmd.Start(); err != nil {
		started <- err
		return
	}
	started <- nil
	b.waitErr = b.cmd.Wait()
	close(b.exited)
}

// missing reports what Boot needs and this machine lacks.
func missing() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	var miss []string
	for _, p := range []string{boxSystemdPath, "/bin/sh"} {
		if _, err := os.Stat(p); err != nil {
			miss = append(miss, p)
		}
	}
	for _, c := range []string{"unshare", "nsenter", "setpriv", "mount", "mknod", "hostname", "stat", "env", "tar"} {
		if _, err := exec.LookPath(c); err != nil {
			miss = append(miss, c)
		}
	}
	if len(miss) > 0 {
		return fmt.Errorf("missing %s (packages systemd, util-linux, coreutils, tar)", strings.Join(miss, ", "))
	}
	return nil
}

// hasBus tells whether a D-Bus system bus daemon is installed.
func hasBus() bool {
	for _, p := range []string{"/usr/bin/dbus-daemon", "/usr/bin/dbus-broker"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// privatePrefixes are where a path that does not exist on the host may be
// created inside a box: private tmpfs or overlay mounts.
var privatePrefixes = []string{"/run/", "/tmp/", "/etc/", "/var/"}

func resolveBinds(opts Options) ([]resolvedBind, error) {
	binds := slices.Clone(opts.Binds)
	if opts.Generators != "" {
		binds = append(binds, Bind{Source: opts.Generators, Target: boxGenDir})
	}
	out := make([]resolvedBind, 0, len(binds))
	for _, b := range binds {
		if !path.IsAbs(b.Source) {
			return nil, fmt.Errorf("bind %q: source must be an absolute path", b.Source)
		}
		src := path.Clean(b.Source)
		if src == "/run" || strings.HasPrefix(src, "/run/") {
			return nil, fmt.Errorf("bind %q: a source under /run is hidden by the box's /run", b.Source)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("bind: %w", err)
		}
		tgt := b.Target
		if tgt == "" {
			tgt = src
		}
		if !path.IsAbs(tgt) {
			return nil, fmt.Errorf("bind %q: target %q must be an absolute path", b.Source, tgt)
		}
		tgt = path.Clean(tgt)
		if tgt == "/" {
			return nil, fmt.Errorf("bind %q: cannot bind over /", b.Source)
		}
		if _, err := os.Lstat(tgt); err != nil && !slices.ContainsFunc(privatePrefixes, func(p string) bool { return strings.HasPrefix(tgt, p) }) {
			return nil, fmt.Errorf("bind %q: target %q does not exist, and creating it would write to the host outside %s",
				b.Source, tgt, strings.Join(privatePrefixes, ", "))
		}
		out = append(out, resolvedBind{Source: src, Target: tgt, Dir: fi.IsDir(), Writable: b.Writable})
	}
	return out, nil
}

// waitBooted waits until PID 1 runs systemd, checks that the box's /tmp
// is not the host's, then polls the manager's SystemState.
func (b *Box) waitBooted(ctx context.Context) error {
	var want unix.Stat_t
	if err := unix.Stat(boxSystemdPath, &want); err != nil {
		return err
	}
	tick := time.NewTicker(5 * time.Millisecond) // poll: nothing signals "exec done" or "socket bound" to the host
	defer tick.Stop()
	wait := func() error {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the manager: %w", ctx.Err())
		case <-b.exited:
			return fmt.Errorf("init exited during boot: %v", b.waitErr)
		case <-tick.C:
			return nil
		}
	}
	exe := fmt.Sprintf("/proc/%d/exe", b.pid)
	for {
		var st unix.Stat_t
		if unix.Stat(exe, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			break
		}
		if err := wait(); err != nil {
			return err
		}
	}
	// PID 1 cannot exit or be recycled before we reap it, so from now on
	// the PID, its start time and namespace are the box's.
	st, err := readStat(b.pid)
	if err != nil {
		return err
	}
	b.startTime = st.StartTime
	if b.ns, err = pidNamespace(b.pid); err != nil {
		return err
	}
	var host, box unix.Stat_t
	if err := unix.Stat("/tmp", &host); err != nil {
		return err
	}
	if err := unix.Stat(b.Path("/tmp"), &box); err != nil {
		return err
	}
	if host.Dev == box.Dev {
		return errors.New("the box's /tmp is the host's: refusing to go on")
	}

	var conn *godbus.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		if _, err := os.Stat(b.PrivateSocket()); conn == nil && err == nil {
			conn, _ = b.dialPrivate(ctx)
		}
		if conn != nil {
			var v godbus.Variant
			err := conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
				CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, "org.freedesktop.systemd1.Manager", "SystemState").Store(&v)
			if err != nil {
				conn.Close()
				conn = nil
			} else {
				switch s, _ := v.Value().(string); s {
				case "running", "degraded":
					return nil
				case "initializing", "starting":
				default:
					return fmt.Errorf("system state %q", s)
				}
			}
		}
		if err := wait(); err != nil {
			return err
		}
	}
}

// PID returns the host PID of the box's systemd (PID 1 inside).
func (b *Box) PID() int { return b.pid }

// Name returns the box's name (its host name).
func (b *Box) Name() string { return b.name }

// Console returns what the box's systemd and its init script have written
// to the box's console so far (the last megabyte).
func (b *Box) Console() string { return b.console.String() }

// Path returns the host-side path of p inside the box, through
// /proc/PID/root. It is valid while the box runs. Absolute symbolic links
// met on the way resolve against the host's root, not the box's, and the
// box's root file system is the host's outside its private mounts: use
// WriteFile and ReadFile to change or read files safely.
func (b *Box) Path(p string) string {
	return fmt.Sprintf("/proc/%d/root%s", b.pid, path.Clean("/"+p))
}

// PrivateSocket returns the host-side path of the box manager's private
// D-Bus socket (/run/systemd/private inside). systemd refuses connections
// made to it from outside the box's PID namespace, as the test process
// is: use Manager, which has one made from inside.
func (b *Box) PrivateSocket() string { return b.Path("/run/systemd/private") }

// SystemBusSocket returns the host-side path of the box's system bus
// socket (/run/dbus/system_bus_socket inside). SystemBus connects to it.
func (b *Box) SystemBusSocket() string { return b.Path("/run/dbus/system_bus_socket") }

// alive tells whether PID 1 still is the box's systemd. Checked after
// opening something through /proc/PID, it proves that what was opened is
// the box's even if the PID has been recycled since.
func (b *Box) alive() bool {
	select {
	case <-b.exited:
		return false
	default:
	}
	st, err := readStat(b.pid)
	return err == nil && st.StartTime == b.startTime
}

// dialPrivate connects to the box manager's private socket and
// authenticates.
func (b *Box) dialPrivate(ctx context.Context) (*godbus.Conn, error) {
	return b.dialBus(ctx, "/run/systemd/private", false, nil)
}

// dialBus connects to a D-Bus socket inside the box, as u (nil: root),
// and authenticates with EXTERNAL and the numeric uid, as go-systemd
// does; hello says Hello, which a bus daemon wants and systemd's private
// socket does not.
func (b *Box) dialBus(ctx context.Context, p string, hello bool, u *User) (*godbus.Conn, error) {
	nc, err := b.dialInsideAs(ctx, p, u)
	if err != nil {
		return nil, err
	}
	conn, err := godbus.NewConn(nc, godbus.WithContext(ctx))
	if err != nil {
		nc.Close()
		return nil, err
	}
	uid := os.Getuid()
	if u != nil {
		uid = u.uid
	}
	if err := conn.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(uid))}); err != nil {
		conn.Close()
		return nil, err
	}
	if hello {
		if err := conn.Hello(); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	if err := settle(ctx, conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// settle pings systemd on a new private connection until it answers.
// systemd 252's sd-bus server can leave the first message sent right
// after the authentication in its read buffer unprocessed until more data
// arrives on the socket (seen when systemd is busy booting: the message
// and BEGIN are read together); the call then never gets an answer. Each
// further ping is such data. Once one is answered, the connection runs.
func settle(ctx context.Context, conn *godbus.Conn) error {
	const maxPings = 500
	replies := make(chan *godbus.Call, maxPings) // never full: godbus must not block on it
	obj := conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for range maxPings {
		obj.GoWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0, replies)
		select {
		case c := <-replies:
			return c.Err
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return errors.New("systemd does not answer on its private socket")
}

// Process is a command started in a box with Start.
type Process struct {
	// Output reads the command's standard output and standard error,
	// merged. It ends when the command and everything that inherited them
	// has exited; Close of the box closes it.
	Output *os.File

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Wait waits for the command to exit and returns its error, as
// exec.Cmd.Wait does. It may be called more than once.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Kill kills the command inside the box. Its nsenter on the host then
// reaps it and exits; Wait returns.
func (p *Process) Kill() error {
	p.kill()
	return nil
}

// kill sends SIGKILL to the process that nsenter forked into the box, or
// to nsenter itself if it has not forked yet. Not to both: a child whose
// nsenter is gone is reparented to the host's init, which may take
// seconds to reap it, and until then the zombie holds the box's PID
// namespace (systemd-shutdown waits for it at power-off).
func (p *Process) kill() {
	if !p.killInside() {
		_ = p.cmd.Process.Kill()
	}
}

// PID returns the host PID of the command inside the box, or 0 when it
// has not been started yet or has exited.
func (p *Process) PID() int {
	kids, err := childrenOf(p.cmd.Process.Pid)
	if err != nil {
		return 0
	}
	for pid := range kids {
		return pid
	}
	return 0
}

// killInside kills the processes that nsenter forked into the box and
// tells whether there were any.
func (p *Process) killInside() bool {
	kids, _ := childrenOf(p.cmd.Process.Pid)
	for pid, st := range kids {
		_ = signalExact(pid, st, syscall.SIGKILL)
	}
	return len(kids) > 0
}

// command prepares nsenter running name inside the box's mount, UTS, IPC,
// PID and cgroup namespaces, at its root, as root, with a clean
// environment.
func (b *Box) command(name string, args ...string) *exec.Cmd {
	return b.commandAs(nil, name, args...)
}

// commandAs is command run as u (nil: root), with u's environment
// (User.env) and in u's home directory. setpriv, inside the box, takes
// the user's groups from the box's own user database.
func (b *Box) commandAs(u *User, name string, args ...string) *exec.Cmd {
	a := []string{"--target", strconv.Itoa(b.pid), "--mount", "--uts", "--ipc", "--pid", "--cgroup", "--root", "--wd", "--"}
	env := []string{"PATH=" + boxPath, "HOME=/root", "LANG=C.UTF-8", "SYSTEMD_PAGER=cat", "SYSTEMD_COLORS=0", "TERM=dumb"}
	if u != nil {
		a = append(a, "/usr/bin/setpriv", "--reuid="+strconv.Itoa(u.uid), "--regid="+strconv.Itoa(u.gid), "--init-groups", "--")
		env = append([]string{"--chdir=" + u.home}, u.env()...)
	}
	a = append(append(append(a, "/usr/bin/env", "-i"), env...), name)
	cmd := exec.Command("nsenter", append(a, args...)...)
	cmd.Dir = "/"
	return cmd
}

// start starts cmd, tracked so that Close can stop it first.
func (b *Box) start(ctx context.Context, cmd *exec.Cmd) (*Process, error) {
	p := &Process{cmd: cmd, done: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || !b.alive() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b.procs[p] = struct{}{}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	go func() {
		var err error
		select {
		case err = <-waited:
		case <-ctx.Done():
			p.kill()
			select {
			case err = <-waited:
			case <-time.After(2 * time.Second):
				_ = cmd.Process.Kill() // nsenter did not exit: no choice left
				err = <-waited
			}
			if err == nil || errors.As(err, new(*exec.ExitError)) {
				err = ctx.Err()
			}
		}
		p.err = err
		close(p.done)
		b.mu.Lock()
		delete(b.procs, p)
		b.mu.Unlock()
	}()
	return p, nil
}

// Run runs name with args inside the box (with nsenter, as root, at the
// box's root, with a minimal environment) and returns its combined output.
// When ctx is done the command is killed inside the box.
func (b *Box) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return b.run(ctx, b.command(name, args...), name, args)
}

func (b *Box) run(ctx context.Context, cmd *exec.Cmd, name string, args []string) ([]byte, error) {
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A daemon left behind by the command keeps the output pipe open: give
	// up waiting for it shortly after the command itself exits.
	cmd.WaitDelay = 2 * time.Second
	p, err := b.start(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("sdbox run %s: %w", name, err)
	}
	if err := p.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("sdbox run %s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.Bytes(), nil
}

// Start starts name with args inside the box, like Run, and returns at
// once. The command is killed when ctx is done, and by Close.
func (b *Box) Start(ctx context.Context, name string, args ...string) (*Process, error) {
	return b.startOutput(ctx, b.command(name, args...), name)
}

func (b *Box) startOutput(ctx context.Context, cmd *exec.Cmd, name string) (*Process, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("sdbox start %s: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	p, err := b.start(ctx, cmd)
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("sdbox start %s: %w", name, err)
	}
	p.Output = r
	return p, nil
}

// Systemctl runs systemctl with args inside the box.
func (b *Box) Systemctl(ctx context.Context, args ...string) ([]byte, error) {
	return b.Run(ctx, "systemctl", args...)
}

// Close tears the box down, in this order: the commands entered with Run
// and Start are killed inside the box and their nsenter is continued
// (systemd stops every process of the namespace at power-off, and a
// stopped command's nsenter would stop with it and never return); then
// systemd is asked to power off cleanly (SIGRTMIN+4) and, if it has not
// exited within StopTimeout, killed, which ends every process left in its
// namespace; last the box's cgroups are removed. Close is idempotent, and
// returns an error if anything of the box remains.
func (b *Box) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.close() })
	return b.closeErr
}

func (b *Box) close() error {
	b.mu.Lock()
	b.closed = true
	procs := slices.Collect(maps.Keys(b.procs))
	b.mu.Unlock()

	var errs []error
	// kick kills the entered commands and continues their nsenter. It is
	// repeated until the box is gone: an nsenter may fork its child only
	// now, and one stopped by the power-off would never reap it, which
	// would keep the namespace, and so its init, from ever ending.
	kick := func() {
		for _, p := range procs {
			select {
			case <-p.done:
			default:
				p.killInside()
				_ = p.cmd.Process.Signal(syscall.SIGCONT)
			}
		}
	}
	kick()

	// os.Process signals through a pidfd: PID 1 is never confused with a
	// process that recycled its PID, even after it was reaped.
	began := time.Now()
	sig := sigPoweroff
	if b.startTime == 0 {
		// systemd never started (a failed boot): the init script, as
		// the namespace's init, would ignore the request.
		sig = syscall.SIGKILL
	}
	if err := b.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("power off: %w", err))
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	stop := time.After(b.stopTimeout)
wait:
	for {
		select {
		case <-b.exited:
			break wait
		case <-tick.C:
			kick()
		case <-stop:
			errs = append(errs, fmt.Errorf("box %s did not power off within %v; killed it", b.name, b.stopTimeout))
			_ = b.cmd.Process.Kill()
		}
	}
	if len(errs) == 0 {
		b.poweroffTime = time.Since(began)
	}

	// Everything that held their output died with the box.
	deadline := time.After(2 * time.Second)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-deadline:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if p.Output != nil {
			p.Output.Close()
		}
	}
	b.console.close()

	// Every process of the namespace is gone once its init is reaped; say
	// so loudly if not.
	if b.ns != (nsID{}) {
		if left, err := processesIn(b.ns); err != nil {
			errs = append(errs, err)
		} else if len(left) > 0 {
			errs = append(errs, fmt.Errorf("processes %v of box %s outlived it", left, b.name))
		}
	}
	if err := b.cgroups.remove(time.Now().Add(5 * time.Second)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sdbox close: %w", err)
	}
	return nil
}

// console is the pty that is the box's /dev/console and its init's
// standard input, output and error. The harness keeps the terminal side
// open for the box's whole life: systemd closes its standard streams at
// start and opens /dev/console only to write, and a pty whose terminal
// side nobody holds reports EIO to its reader, which would stop the
// draining. A goroutine drains it all the time, keeping the tail: a full
// pty would block systemd.
type console struct {
	master, slave *os.File
	done          chan struct{}
	mu            sync.Mutex
	buf           []byte
}

func newConsole() (*console, error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	var slaveFD int
	var cerr error
	rc, err := master.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			if cerr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); cerr != nil {
				return
			}
			r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
			if errno != 0 {
				cerr = errno
				return
			}
			slaveFD = int(r)
		})
	}
	if err = errors.Join(err, cerr); err != nil {
		master.Close()
		return nil, fmt.Errorf("console: %w", err)
	}
	// No output processing: keep the box's "\n" as is.
	if tio, err := unix.IoctlGetTermios(slaveFD, unix.TCGETS); err == nil {
		tio.Oflag &^= unix.OPOST
		tio.Lflag &^= unix.ECHO | unix.ICANON
		_ = unix.IoctlSetTermios(slaveFD, unix.TCSETS, tio)
	}
	c := &console{master: master, slave: os.NewFile(uintptr(slaveFD), "sdbox-console"), done: make(chan struct{})}
	go c.drain()
	return c, nil
}

func (c *console) drain() {
	defer close(c.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.master.Read(buf)
		if n > 0 {
			c.mu.Lock()
			c.buf = append(c.buf, buf[:n]...)
			if len(c.buf) > consoleLimit {
				c.buf = slices.Clone(c.buf[len(c.buf)-consoleLimit:])
			}
			c.mu.Unlock()
		}
		if err != nil {
			return // EIO once no process holds the terminal side, or closed
		}
	}
}

// close is called once the box is dead: it lets the reader take what is
// left, then closes the pty.
func (c *console) close() {
	c.slave.Close()
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	c.master.Close()
	<-c.done
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// memFile returns a memory file holding data, read from its start.
func memFile(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return f, nil
}
