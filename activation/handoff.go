package activation

import (
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/report"
)

// EnvSupervisorUID names the user id whose hand-offs a worker accepts: the
// generated unit sets it to the supervisor's (the dispatcher's) uid.
const EnvSupervisorUID = "POWERHOUSE_SUPERVISOR_UID"

// HandoffListener is the net.Listener of a sticky worker: it receives the
// connections the dispatcher hands over on the instance's hand-off socket
// (docs/handoff.md) and returns each as the connection it is.
//
// Accept blocks in the runtime's poller until a datagram is queued, so it
// costs nothing while idle, and it is safe for concurrent use. A malformed
// datagram is counted (Malformed), its descriptors are closed and Accept
// goes on with the next one; it never returns such a datagram as an error.
// One whose header version this library does not know (a supervisor of
// another release) is also logged, at most every 10 seconds, naming both
// versions: every connection it hands over would otherwise be dropped
// without a word.
//
// Only the supervisor may hand off. The listener sets SO_PASSCRED on the
// socket, so that the kernel tells it who sent each datagram, and serves
// those sent by $POWERHOUSE_SUPERVISOR_UID, or, when that is unset
// (outside systemd, powerhouse run, tests), by this process's effective
// uid or root. Any other datagram is rejected: counted (Rejected), logged
// at most every 10 seconds, its descriptors closed.
//
// Accept does not read a hand-off while the process is within a margin of
// its descriptor limit (RLIMIT_NOFILE), since the kernel would drop the
// connection it carries: the datagram waits in the socket until the
// worker closes connections (see fdGate). Paused counts such pauses.
//
// Close stops reading at once and does not drain the socket: datagrams
// still queued stay with the socket systemd holds, for the next instance.
// A datagram that an Accept was reading at the very moment of Close is
// returned to that Accept and served, rather than dropped.
type HandoffListener struct {
	uc      *net.UnixConn
	rc      syscall.RawConn
	recv    func(uintptr) bool // l.receive, bound once: binding it per Accept would allocate
	senders senders
	done    chan struct{} // closed by Close: ends a pause

	mu   sync.Mutex // serialises receiving; guards the fields below
	hdr  handoff.Header
	fd   int
	cred handoff.Ucred
	err  error
	gate fdGate

	closed     atomic.Bool
	malformed  atomic.Uint64
	lastBad    atomic.Pointer[error]
	rejected   atomic.Uint64
	lastReject atomic.Pointer[error]
	rejectLog  time.Time // under mu: when a rejection was last logged
	versionLog time.Time // under mu: when a version mismatch was last logged
}

// senders is the set of uids whose hand-offs are served: one or two.
type senders struct {
	uids [2]uint32
	n    int
}

func (s *senders) allowed(uid uint32) bool {
	for _, u := range s.uids[:s.n] {
		if u == uid {
			return true
		}
	}
	return false
}

// supervisorUIDs reads $POWERHOUSE_SUPERVISOR_UID: a decimal uid, or unset
// for this process's effective uid and 0.
func supervisorUIDs() (senders, error) {
	v, ok := os.LookupEnv(EnvSupervisorUID)
	if !ok || v == "" {
		return senders{uids: [2]uint32{uint32(os.Geteuid()), 0}, n: 2}, nil
	}
	u, err := strconv.ParseUint(v, 10, 32)
	if err != nil || u == math.MaxUint32 { // (uid_t)-1 is no user
		return senders{}, fmt.Errorf("%s=%q: want a numeric user id", EnvSupervisorUID, v)
	}
	return senders{uids: [2]uint32{uint32(u)}, n: 1}, nil
}

// rejectLogEvery bounds how often rejected hand-offs are logged: a local
// user who can write to the socket must not flood the journal.
const rejectLogEvery = 10 * time.Second

// NewHandoffListener returns a listener reading hand-offs from f, an
// AF_UNIX SOCK_DGRAM socket. Like net.FileListener it works on a duplicate
// of the descriptor: closing f afterwards is the caller's business and does
// not affect the listener.
//
// It sets SO_PASSCRED on the socket. The option belongs to the socket,
// which systemd and the instance's next process share: they want it too
// (the unit sets PassCredentials=yes), and it changes nothing for a reader
// whose control buffer has room for the credentials (docs/handoff.md) or
// for the dispatcher, which sends from a socket of its own. It fails when
// $POWERHOUSE_SUPERVISOR_UID is set but not a user id.
func NewHandoffListener(f *os.File) (*HandoffListener, error) {
	snd, err := supervisorUIDs()
	if err != nil {
		return nil, fmt.Errorf("activation: hand-off socket %s: %w", f.Name(), err)
	}
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
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = passCred(int(fd))
	}); err != nil || serr != nil {
		uc.Close()
		return nil, fmt.Errorf("activation: hand-off socket %s: setting SO_PASSCRED: %w", f.Name(), errors.Join(err, serr))
	}
	l := &HandoffListener{uc: uc, rc: rc, fd: -1, senders: snd, done: make(chan struct{})}
	l.recv = l.receive
	return l, nil
}

// receive runs inside rc.Read, with the socket's descriptor, when the poller
// says it is readable. Returning false on EAGAIN parks the goroutine in the
// poller until the next datagram; there is no busy loop.
func (l *HandoffListener) receive(fd uintptr) bool {
	l.fd, l.cred, l.err = handoff.ReceiveFrom(int(fd), &l.hdr)
	return l.err != syscall.EAGAIN // handoff.ReceiveFrom returns EAGAIN unwrapped
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
		if l.closed.Load() || !l.gate.wait(l.done, l.uc.LocalAddr()) {
			return nil, handoff.Header{}, l.opError(net.ErrClosed)
		}
		if err := l.rc.Read(l.recv); err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil, handoff.Header{}, l.opError(net.ErrClosed)
			}
			return nil, handoff.Header{}, l.opError(err)
		}
		if errors.Is(l.err, handoff.ErrNoCredentials) {
			l.reject(l.err) // cannot happen with SO_PASSCRED set; never served
			continue
		}
		if (l.err == nil || errors.Is(l.err, handoff.ErrMalformed)) && !l.senders.allowed(l.cred.Uid) {
			if l.fd >= 0 {
				unix.Close(l.fd)
			}
			l.reject(fmt.Errorf("hand-off from uid %d (pid %d), not the supervisor's", l.cred.Uid, l.cred.Pid))
			continue
		}
		if l.err != nil {
			if errors.Is(l.err, handoff.ErrMalformed) {
				l.countMalformed(l.err)
				if ve := (*handoff.VersionError)(nil); errors.As(l.err, &ve) {
					l.versionMismatch(ve)
				}
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

// versionMismatch logs a hand-off whose header version this library does
// not know, at most every rejectLogEvery: the supervisor runs a release
// this worker cannot work with, and every connection it hands over is
// closed unserved, which must not go unnoticed. Called with mu held.
func (l *HandoffListener) versionMismatch(ve *handoff.VersionError) {
	if now := time.Now(); l.versionLog.IsZero() || now.Sub(l.versionLog) >= rejectLogEvery {
		l.versionLog = now
		n, _ := l.Malformed()
		log.Printf("activation: hand-off socket %s: the supervisor sent a hand-off header of version %d, but this worker's library (powerhouse %s) understands hand-off header versions [%d]: the connection was closed unserved; run a supervisor and workers of compatible releases (%d malformed hand-offs so far)",
			l.uc.LocalAddr(), ve.Version, report.Release(), handoff.Version, n)
	}
}

func (l *HandoffListener) countMalformed(err error) {
	l.lastBad.Store(&err)
	l.malformed.Add(1)
}

// reject counts a hand-off from a sender that is not the supervisor, whose
// descriptors are closed already, and logs it unless one was logged less
// than rejectLogEvery ago. Called with mu held.
func (l *HandoffListener) reject(err error) {
	l.lastReject.Store(&err)
	n := l.rejected.Add(1)
	if now := time.Now(); l.rejectLog.IsZero() || now.Sub(l.rejectLog) >= rejectLogEvery {
		l.rejectLog = now
		log.Printf("activation: hand-off socket %s: rejected %v (%d rejected so far)", l.uc.LocalAddr(), err, n)
	}
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
	close(l.done)
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

// Rejected returns how many hand-offs were refused because their sender
// was not the supervisor (see HandoffListener) since the listener was
// made, and why the last one was (nil if none was).
func (l *HandoffListener) Rejected() (count uint64, last error) {
	count = l.rejected.Load()
	if p := l.lastReject.Load(); p != nil {
		last = *p
	}
	return count, last
}

// Paused returns how many times Accept stopped receiving hand-offs because
// the process was close to its descriptor limit.
func (l *HandoffListener) Paused() uint64 { return l.gate.pauses.Load() }
