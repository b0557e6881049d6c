package sockettest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// SendAll hands every server connection over uc, in order, with send (sock
// is uc's descriptor, fd the connection's), waiting in the poller while
// the receiver's queue is full, as the dispatcher does before it falls
// back, and closes each connection once it is sent. blocked is signalled
// when the queue was full; done receives nil once everything was sent, or
// the first error. timeout bounds the whole run.
func SendAll(uc *net.UnixConn, servers []*net.TCPConn, timeout time.Duration, send func(sock, fd int) error) (blocked <-chan struct{}, done <-chan error) {
	b := make(chan struct{}, 1)
	d := make(chan error, 1)
	go func() {
		rc, err := uc.SyscallConn()
		if err != nil {
			d <- err
			return
		}
		uc.SetWriteDeadline(time.Now().Add(timeout))
		for i, s := range servers {
			src, err := s.SyscallConn()
			if err != nil {
				d <- err
				return
			}
			var serr error
			err = rc.Write(func(sock uintptr) bool {
				src.Control(func(fd uintptr) { serr = send(int(sock), int(fd)) })
				if errors.Is(serr, syscall.EAGAIN) {
					select {
					case b <- struct{}{}:
					default:
					}
					return false
				}
				return true
			})
			if err == nil {
				err = serr
			}
			if err != nil {
				d <- fmt.Errorf("hand-off %d: %w", i, err)
				return
			}
			s.Close()
		}
		d <- nil
	}()
	return b, d
}

// Held watches client connections that a worker must hold open: one
// closed before Release was dropped by the worker.
type Held struct {
	conns    []net.Conn
	released atomic.Bool
	lost     atomic.Int32
	// Lost is signalled when a held connection was dropped.
	Lost chan struct{}
	wg   sync.WaitGroup
}

// WatchHeld watches conns for at most timeout each. read blocks on a
// connection until the worker answers or closes it, and says whether the
// answer shows the worker holds it (then it is watched no more).
func WatchHeld(conns []net.Conn, timeout time.Duration, read func(net.Conn) (held bool)) *Held {
	h := &Held{conns: conns, Lost: make(chan struct{}, 1)}
	for _, c := range conns {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			c.SetReadDeadline(time.Now().Add(timeout))
			if read(c) || h.released.Load() {
				return
			}
			h.lost.Add(1)
			select {
			case h.Lost <- struct{}{}:
			default:
			}
		}()
	}
	return h
}

// Dropped returns how many held connections the worker dropped so far.
func (h *Held) Dropped() int { return int(h.lost.Load()) }

// Release closes the held connections, as the clients would, and waits for
// the watchers.
func (h *Held) Release() {
	h.released.Store(true)
	for _, c := range h.conns {
		c.Close()
	}
	h.wg.Wait()
}

// SenderFiles returns, as files a child process can inherit, a datagram
// socket connected to the hand-off socket at path and a copy of conn: what
// a sender of another uid needs to hand conn over. The caller closes both
// once the child has them: a copy of conn left open would keep its client
// from seeing the worker close it.
func SenderFiles(t testing.TB, path string, conn *net.TCPConn) (sock, connFile *os.File) {
	t.Helper()
	uc, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	sock, err = uc.File()
	if err != nil {
		t.Fatal(err)
	}
	connFile, err = conn.File()
	if err != nil {
		sock.Close()
		t.Fatal(err)
	}
	return sock, connFile
}

// FailingListener makes Accept fail with queued errors, one per call, then
// accepts on the real listener it wraps. It is the one fake of the
// accept-error tests: the kernel cannot be made to return these errors on
// demand (a full file table, EPERM from a firewall hook, EPROTO, no
// buffers), and what follows them is a real accept.
type FailingListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

// NewFailingListener wraps l; each of errs is reported as
// net.TCPListener.Accept reports an accept4 error.
func NewFailingListener(l net.Listener, errs ...error) *FailingListener {
	f := &FailingListener{Listener: l}
	for _, err := range errs {
		f.errs = append(f.errs, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", err)})
	}
	return f
}

// Accept returns the next queued error, or a real connection.
func (l *FailingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// Left returns how many queued errors Accept has not returned yet.
func (l *FailingListener) Left() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.errs)
}
