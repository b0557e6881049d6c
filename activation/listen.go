package activation

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	sdactivation "github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// EnvListen names the address a worker listens on when it was not started
// by systemd: "host:port", ":port" or an absolute unix socket path.
const EnvListen = "POWERHOUSE_LISTEN"

// ListenConfig says where a worker gets its listener. The zero value uses
// what systemd passed, else $POWERHOUSE_LISTEN.
type ListenConfig struct {
	// Addr is where to listen when no socket was inherited: "host:port",
	// ":port" or an absolute unix socket path. Empty means $POWERHOUSE_LISTEN.
	Addr string
	// Files are the inherited sockets to use. Nil means those systemd
	// passed (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), which are taken once:
	// Listen removes those variables from the environment, so children do
	// not see them, and closes the original descriptors after duplicating
	// them. Files given here stay the caller's.
	Files []*os.File
}

// Listen returns this instance's listener, with the inherited sockets if
// there are any (ListenConfig.Files or LISTEN_FDS), else on Addr or
// $POWERHOUSE_LISTEN:
//
//   - an AF_UNIX datagram socket is a hand-off socket (sticky mode): it
//     becomes a *HandoffListener;
//   - a listening stream socket (TCP or unix) is used as it is (shared
//     mode, the kernel spreads connections over the group's instances);
//   - several sockets are merged into one net.Listener whose Accept returns
//     connections from all of them and whose Addr is the first one's;
//   - anything else (a UDP socket, a connected socket from Accept=yes, a
//     pipe) is an error that names it.
//
// With no inherited socket and no address, the error says to set
// POWERHOUSE_LISTEN. A unix socket path must not exist yet; it is removed
// when the listener is closed.
func (lc *ListenConfig) Listen(ctx context.Context) (net.Listener, error) {
	files, owned := lc.Files, false
	if files == nil {
		files, owned = sdactivation.Files(true), true
	}
	if len(files) > 0 {
		l, err := fromFiles(files)
		if owned {
			for _, f := range files {
				f.Close()
			}
		}
		return l, err
	}
	addr := lc.Addr
	if addr == "" {
		addr = os.Getenv(EnvListen)
	}
	if addr == "" {
		return nil, fmt.Errorf("activation: listen: no socket from systemd (LISTEN_FDS) and no address: set %s (\"127.0.0.1:8080\", \":8080\" or an absolute unix socket path)", EnvListen)
	}
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("activation: listen: %w", err)
	}
	return l, nil
}

// Listen returns this instance's listener: ListenConfig{}.Listen.
func Listen() (net.Listener, error) {
	return (&ListenConfig{}).Listen(context.Background())
}

func fromFiles(files []*os.File) (net.Listener, error) {
	ls := make([]net.Listener, 0, len(files))
	fail := func(err error) (net.Listener, error) {
		for _, l := range ls {
			l.Close()
		}
		return nil, err
	}
	for _, f := range files {
		l, err := fileListener(f)
		if err != nil {
			return fail(err)
		}
		ls = append(ls, l)
	}
	if len(ls) == 1 {
		return ls[0], nil // the real *net.TCPListener, *net.UnixListener or *HandoffListener
	}
	return newMultiListener(ls), nil
}

func fileListener(f *os.File) (net.Listener, error) {
	typ, err := sockopt(f, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("activation: inherited descriptor %q is not a socket: %w", f.Name(), err)
	}
	switch typ {
	case unix.SOCK_DGRAM:
		return NewHandoffListener(f)
	case unix.SOCK_STREAM:
		acc, err := sockopt(f, unix.SO_ACCEPTCONN)
		if err == nil && acc == 0 {
			return nil, fmt.Errorf("activation: inherited socket %q is a connection, not a listening socket (Accept=yes is not supported)", f.Name())
		}
		l, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("activation: inherited socket %q: %w", f.Name(), err)
		}
		return l, nil
	default:
		return nil, fmt.Errorf("activation: inherited socket %q has type %d; want a listening stream socket or a unix datagram hand-off socket", f.Name(), typ)
	}
}

// Malformed returns how many hand-off datagrams l dropped as malformed and
// why the last one was: l is what Listen returned. It is 0, nil for
// listeners that do not receive hand-offs.
func Malformed(l net.Listener) (count uint64, last error) {
	if m, ok := l.(interface{ Malformed() (uint64, error) }); ok {
		return m.Malformed()
	}
	return 0, nil
}

// Rejected returns how many hand-offs l refused because their sender was
// not the supervisor, and why the last one was: l is what Listen returned.
// It is 0, nil for listeners that do not receive hand-offs.
func Rejected(l net.Listener) (count uint64, last error) {
	if r, ok := l.(interface{ Rejected() (uint64, error) }); ok {
		return r.Rejected()
	}
	return 0, nil
}

// sockopt reads an integer SOL_SOCKET option through SyscallConn, which,
// unlike File.Fd, leaves the descriptor's blocking mode alone.
func sockopt(f *os.File, opt int) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt) }); err != nil {
		return 0, err
	}
	return v, serr
}
