//go:build linux

package report

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxRecvFDs is how many descriptors Recv makes room for, so that a
// datagram carrying a few is recognised and every one closed. Beyond that
// the kernel sets MSG_CTRUNC and discards those that did not fit: nothing
// leaks either way.
const maxRecvFDs = 16

// oobLen is the control buffer: the credentials, which the kernel writes
// first, then one SCM_RIGHTS message with maxRecvFDs descriptors.
var oobLen = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(4*maxRecvFDs)

// Receiver is the supervisor's end of a group's report socket. See Listen.
type Receiver struct {
	uc   *net.UnixConn
	path string

	mu  sync.Mutex // one Recv at a time; guards buf and oob
	buf []byte
	oob []byte
}

// Listen binds the report socket at path: an AF_UNIX SOCK_DGRAM socket with
// SO_PASSCRED set before it is bound, so that every datagram it ever
// queues carries its sender's credentials.
//
// A socket file left at path by a receiver that is gone (a supervisor that
// restarted) is removed first; a socket that a live process still reads
// is not, and Listen fails. Anything else at path (a regular file, a
// directory) makes it fail too.
//
// The file gets group gid (-1: leave it) and then mode perm: 0660 with the
// workers' group lets every worker of the group send, and no one else.
// Between bind and those two calls, the file has the mode the umask gave
// it. The directory must let the workers search it.
func Listen(path string, perm os.FileMode, gid int) (*Receiver, error) {
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("report: listen %s: %w", path, err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setting SO_PASSCRED: %w", serr)
		}
		return nil
	}}
	pc, err := lc.ListenPacket(context.Background(), "unixgram", path)
	if err != nil {
		return nil, fmt.Errorf("report: listen: %w", err)
	}
	uc := pc.(*net.UnixConn) // "unixgram" gives nothing else
	fail := func(err error) (*Receiver, error) {
		uc.Close()
		os.Remove(path)
		return nil, fmt.Errorf("report: listen %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(path, perm); err != nil {
		return fail(err)
	}
	return &Receiver{uc: uc, path: path, buf: make([]byte, MaxDatagramLen+1), oob: make([]byte, oobLen)}, nil
}

// removeStale removes the socket at path when no process reads it: a
// datagram connect to a socket whose receiver is gone fails with
// ECONNREFUSED.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%v)", path, fi.Mode().Type())
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s is in use by a running process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probing the socket left at %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the stale socket: %w", err)
	}
	return nil
}

// Path returns the socket's path.
func (r *Receiver) Path() string { return r.path }

// Recv waits for the next datagram and returns its message and sender.
//
// A datagram that cannot be served gives a *DatagramError, per datagram,
// and the receiver stays usable: call Recv again. Its Err matches
// ErrDescriptors (the datagram carried descriptors: every one is closed),
// ErrNoCredentials (it carried no SCM_CREDENTIALS, which cannot happen
// while SO_PASSCRED is set), or ErrMalformed (too long, or Decode refused
// it; a newer version is a *VersionError naming both versions). Its
// Sender is set when the kernel reported one, so that the caller can say
// which instance sent it. Anyone who can write to the socket can cause
// these errors: count them and log at a bounded rate.
//
// Any other error ends receiving: one matching ctx.Err() when ctx is done,
// one matching net.ErrClosed after Close, or the socket's error. Recv
// calls are serialised.
func (r *Receiver) Recv(ctx context.Context) (Message, Sender, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, Sender{}, fmt.Errorf("report: receive: %w", err)
	}
	r.uc.SetReadDeadline(time.Time{})
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		// Wakes the read below; it is cleared at the next Recv.
		r.uc.SetReadDeadline(time.Unix(1, 0))
		close(woken)
	})
	n, oobn, flags, _, err := r.uc.ReadMsgUnix(r.buf, r.oob)
	if !stop() {
		// The function runs or ran: let it finish, or its deadline could
		// land after the next Recv cleared it and fail that one.
		<-woken
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, Sender{}, fmt.Errorf("report: receive: %w", cerr)
		}
		return nil, Sender{}, fmt.Errorf("report: receive: %w", err)
	}
	snd, hasCred, nfds := parseControl(r.oob[:oobn])
	derr := func(err error) (Message, Sender, error) {
		return nil, snd, &DatagramError{Sender: snd, Err: err}
	}
	switch {
	case nfds > 0 || flags&unix.MSG_CTRUNC != 0:
		return derr(fmt.Errorf("%w (%d received, all closed)", ErrDescriptors, nfds))
	case !hasCred:
		return derr(ErrNoCredentials)
	case flags&unix.MSG_TRUNC != 0:
		return derr(fmt.Errorf("%w: datagram longer than %d bytes", ErrMalformed, MaxDatagramLen))
	}
	m, err := Decode(r.buf[:n])
	if err != nil {
		return derr(err)
	}
	return m, snd, nil
}

// parseControl closes every descriptor of every SCM_RIGHTS message in oob
// and returns how many there were, and the SCM_CREDENTIALS sender, if any.
// It walks the buffer itself rather than with unix.ParseSocketControlMessage,
// which returns nothing at all on a fault, and would leak the descriptors
// of the messages before it.
func parseControl(oob []byte) (snd Sender, hasCred bool, nfds int) {
	hdrLen := unix.CmsgLen(0)
	for off := 0; off+hdrLen <= len(oob); {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		l := int(h.Len)
		if l < hdrLen || off+l > len(oob) {
			break // the kernel never writes this; stop rather than read garbage
		}
		data := oob[off+hdrLen : off+l]
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS:
			for i := 0; i+4 <= len(data); i += 4 {
				unix.Close(int(*(*int32)(unsafe.Pointer(&data[i]))))
				nfds++
			}
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_CREDENTIALS && len(data) >= unix.SizeofUcred:
			uc := (*unix.Ucred)(unsafe.Pointer(&data[0]))
			snd, hasCred = Sender{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}, true
		}
		off += unix.CmsgSpace(l - hdrLen)
	}
	return snd, hasCred, nfds
}

// Close closes the socket; a Recv blocked in it returns an error matching
// net.ErrClosed. The socket file stays (the next Listen removes it).
func (r *Receiver) Close() error {
	if err := r.uc.Close(); err != nil {
		return fmt.Errorf("report: close: %w", err)
	}
	return nil
}

// Client is a worker's end: it sends reports to the report socket at a
// path. It is safe for concurrent use.
type Client struct {
	path string
	addr unix.SockaddrUnix

	mu sync.Mutex // guards fd against Close
	fd int        // -1 once closed
}

// NewClient returns a client of the report socket at path. It opens an
// unbound AF_UNIX SOCK_DGRAM socket and does not connect it: each Send
// addresses path anew, so a supervisor that restarted (a new socket at the
// same path) gets the next report, and a supervisor that is not there yet
// costs only a failed Send.
func NewClient(path string) (*Client, error) {
	if path == "" || len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("report: client: socket path %q: want 1 to %d bytes", path, len(unix.RawSockaddrUnix{}.Path)-1)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("report: client: %w", os.NewSyscallError("socket", err))
	}
	return &Client{path: path, addr: unix.SockaddrUnix{Name: path}, fd: fd}, nil
}

// Send sends m as one datagram and never blocks (MSG_DONTWAIT): when the
// supervisor's queue is full the error matches syscall.EAGAIN and nothing
// was sent; when no supervisor reads the socket, it matches ENOENT or
// ECONNREFUSED. The kernel attaches this process's credentials, which the
// receiver reads.
func (c *Client) Send(m Message) error {
	var buf [maxLen1]byte
	p, err := m.AppendBinary(buf[:0])
	if err != nil {
		return fmt.Errorf("report: send: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return fmt.Errorf("report: send %s: %w", m.Kind(), net.ErrClosed)
	}
	for {
		err = unix.Sendto(c.fd, p, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, &c.addr)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("report: send %s to %s: %w", m.Kind(), c.path, err)
	}
	return nil
}

// Close closes the client's socket.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return fmt.Errorf("report: close: %w", net.ErrClosed)
	}
	err := unix.Close(c.fd)
	c.fd = -1
	if err != nil {
		return fmt.Errorf("report: close: %w", err)
	}
	return nil
}
