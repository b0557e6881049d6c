package sdbox

import (
	"context"
	"errors"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The box's systemd refuses a connection to /run/systemd/private whose
// peer PID it cannot see ("Incoming private connection from unprivileged
// client, refusing: No data available"): SO_PEERCRED reports PID 0 for a
// process outside its PID namespace, as the test process is. So the
// connection is made by a helper inside the box's PID namespace, and the
// socket passed back over SCM_RIGHTS. The kernel records the peer at
// connect() time, so the connection keeps working for the test process.
//
// The helper is the running binary itself, re-executed with dialEnv set:
// the init function below then dials and exits before any test runs.
//
// A user's manager and bus (User.Manager, User.Bus) want the connection
// made by that user: with dialAsEnv set to "UID:GID", the helper enters
// the socket's directory while still root (the path goes through
// /proc/PID/root, which only root may cross), drops to the user, and
// connects to the socket by its name in there.
const (
	dialEnv   = "SDBOX_INTERNAL_DIAL"
	dialAsEnv = "SDBOX_INTERNAL_DIAL_AS"
)

func init() {
	if p := os.Getenv(dialEnv); p != "" {
		os.Exit(dialHelper(p, os.Getenv(dialAsEnv)))
	}
}

// dialHelper connects to the unix socket at path, as the user "UID:GID"
// as says when not empty, and sends the connected socket on fd 3, then
// waits for the other side to close fd 3.
func dialHelper(path, as string) int {
	back := os.NewFile(3, "sdbox-back")
	if as != "" {
		if err := becomeUser(path, as); err != nil {
			fmt.Fprintf(os.Stderr, "sdbox dial helper: %v\n", err)
			return 1
		}
		path = filepath.Base(path)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdbox dial helper: %s: %v\n", path, err)
		return 1
	}
	if err := unix.Sendmsg(int(back.Fd()), []byte{0}, unix.UnixRights(fd), nil, 0); err != nil {
		fmt.Fprintf(os.Stderr, "sdbox dial helper: send: %v\n", err)
		return 1
	}
	var b [1]byte
	_, _ = back.Read(b[:]) // EOF once the test process has the socket
	return 0
}

// becomeUser enters the directory of path and becomes the user "UID:GID"
// with no supplementary groups; Go applies the change to every thread.
func becomeUser(path, as string) error {
	u, g, ok := strings.Cut(as, ":")
	uid, uerr := strconv.Atoi(u)
	gid, gerr := strconv.Atoi(g)
	if !ok || uerr != nil || gerr != nil || uid <= 0 || gid <= 0 {
		return fmt.Errorf("bad user %q", as)
	}
	if err := os.Chdir(filepath.Dir(path)); err != nil {
		return err
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	return nil
}

// dialInside connects to the unix socket at p inside the box from a
// process in the box's PID namespace and returns the connection.
func (b *Box) dialInside(ctx context.Context, sock string) (net.Conn, error) {
	return b.dialInsideAs(ctx, sock, nil)
}

// dialInsideAs is dialInside with the connection made by u (nil: root).
func (b *Box) dialInsideAs(ctx context.Context, sock string, u *User) (net.Conn, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "sdbox-dial"), os.NewFile(uintptr(pair[1]), "sdbox-dial")
	defer ours.Close()
	// Only the PID namespace is entered: the helper runs the host's copy
	// of this binary and reaches the socket through /proc/PID/root.
	cmd := exec.Command("nsenter", "--target", strconv.Itoa(b.pid), "--pid", "--", exe)
	// GORACE: a race-enabled test binary would otherwise linger a second
	// at exit.
	cmd.Env = []string{dialEnv + "=" + b.Path(sock), "PATH=" + boxPath, "GORACE=atexit_sleep_ms=0"}
	if u != nil {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d:%d", dialAsEnv, u.uid, u.gid))
	}
	cmd.ExtraFiles = []*os.File{theirs}
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	p, err := b.start(ctx, cmd)
	theirs.Close()
	if err != nil {
		return nil, err
	}

	type result struct {
		fd  int
		err error
	}
	got := make(chan result, 1)
	go func() {
		buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			got <- result{-1, err}
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			got <- result{-1, errors.Join(errors.New("no socket received"), err)}
			return
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			for _, fd := range fds {
				unix.Close(fd)
			}
			got <- result{-1, errors.Join(errors.New("no socket received"), err)}
			return
		}
		got <- result{fds[0], nil}
	}()
	// The helper exits once it has sent the socket and we close our end;
	// it is reaped in the background (and Close kills one that is stuck).
	// If it fails instead, its end closes and Recvmsg returns.
	r := <-got
	ours.Close()
	if r.err != nil {
		werr := p.Wait()
		return nil, fmt.Errorf("dial %s in the box: %w (helper: %v %s)", sock, r.err, werr, stderr.Bytes())
	}
	f := os.NewFile(uintptr(r.fd), sock)
	defer f.Close()
	return net.FileConn(f)
}
