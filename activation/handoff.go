package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/powerhouse/powerhouse/handoff"
)

// HandoffListener is the net.Listener of a sticky worker: it receives the
// connections the dispatcher hands over on the instance's hand-off socket
// (docs/handoff.md) and returns each as the connection it is.
//
// Accept blocks in the runtime's poller until a datagram is queued, so it
// costs nothing while idle, and it is safe for concurrent use. A malformed
// datagram is counted (Malformed), its descriptors are closed and Accept
// goes on with the next one; it never returns such a datagram as an error.
//
// Close stops reading at once and does not drain the socket: datagrams
// still queued stay with the socket systemd holds, for the next instance.
// A datagram that an Accept was reading at the very moment of Close is
// returned to that Accept and served, rather than dropped.
type HandoffListener struct {
	uc   *net.UnixConn
	rc   syscall.RawConn
	recv func(uintptr) bool // l.receive, bound once: binding it per Accept would allocate

	mu  sync.Mutex // serialises receiving; guards the fields below
	hdr handoff.Header
	fd  int
	err error

	closed    atomic.Bool
	malformed atomic.Uint64
	lastBad   atomic.Pointer[error]
}

// NewHandoffListener returns a listener reading hand-offs from f, an
// AF_UNIX SOCK_DGRAM socket. Like net.FileListener it works on a duplicate
// of the descriptor: closing f afterwards is the caller's business and does
// not affect the listener.
func NewHandoffListener(f *os.File) (*HandoffListener, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("activation: hand-off socket %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok || uc.LocalAddr().Network() != "unixgram" {
		c.Close()
		return nil, fmt.Errorf("activation: hand-off socket %s is a %s socket, want unixgram", f.Name(), c.LocalAddr().Network())
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("activation: hand-off socket %s: %w", f.Name(), err)
	}
	l := &HandoffListener{uc: uc, rc: rc, fd: -1}
	l.recv = l.receive
	return l, nil
}

// receive runs inside rc.Read, with the socket's descriptor, when the poller
// says it is readable. Returning false on EAGAIN parks the goroutine in the
// poller until the next datagram; there is no busy loop.
func (l *HandoffListener) receive(fd uintptr) bool {
	l.fd, l.err = handoff.Receive(int(fd), &l.hdr)
	return l.err != syscall.EAGAIN // handoff.Receive returns EAGAIN unwrapped
}

// Accept waits for and returns the next handed-off connection: a
// *net.TCPConn or *net.UnixConn, or a *Conn when the dispatcher read a PROXY
// protocol header that gave the original client address.
//
// After Close it returns an error matching net.ErrClosed.
func (l *HandoffListener) Accept() (net.Conn, error) {
	c, _, err := l.AcceptHandoff()
	return c, err
}

// AcceptHandoff is Accept that also returns the hand-off header: the name
// of the public listener the connection arrived on and its PROXY
// addresses, if any.
func (l *HandoffListener) AcceptHandoff() (net.Conn, handoff.Header, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.closed.Load() {
			return nil, handoff.Header{}, l.opError(net.ErrClosed)
		}
		if err := l.rc.Read(l.recv); err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil, handoff.Header{}, l.opError(net.ErrClosed)
			}
			return nil, handoff.Header{}, l.opError(err)
		}
		if l.err != nil {
			if errors.Is(l.err, handoff.ErrMalformed) {
				l.countMalformed(l.err)
				continue
			}
			return nil, handoff.Header{}, l.opError(l.err)
		}
		c, err := newConn(l.fd, &l.hdr)
		if err != nil {
			l.countMalformed(err)
			continue
		}
		return c, l.hdr, nil
	}
}

func (l *HandoffListener) countMalformed(err error) {
	l.lastBad.Store(&err)
	l.malformed.Add(1)
}

func (l *HandoffListener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: "unixgram", Addr: l.uc.LocalAddr(), Err: err}
}

// Close stops reading the hand-off socket and closes this process's copy
// of it, without draining it; see HandoffListener. Blocked Accept calls
// return net.ErrClosed.
func (l *HandoffListener) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return &net.OpError{Op: "close", Net: "unixgram", Addr: l.uc.LocalAddr(), Err: net.ErrClosed}
	}
	return l.uc.Close()
}

// Addr returns the hand-off socket's address, a *net.UnixAddr.
func (l *HandoffListener) Addr() net.Addr { return l.uc.LocalAddr() }

// Malformed returns how many datagrams were dropped as malformed since the
// listener was made, and why the last one was (nil if none was).
func (l *HandoffListener) Malformed() (count uint64, last error) {
	count = l.malformed.Load()
	if p := l.lastBad.Load(); p != nil {
		last = *p
	}
	return count, last
}
