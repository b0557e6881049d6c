package sticky

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/handoff"
)

// Listener is one public socket the dispatcher accepts on.
type Listener struct {
	// Name travels in every hand-off header of this listener.
	Name string
	// Proxy says that clients send a PROXY protocol header first.
	Proxy bool
	// File is the listening socket (TCP or unix stream), as systemd
	// passes it. Serve takes it over and closes it.
	File *os.File
}

// DispatcherOptions configure a Dispatcher. The zero value of each field
// means the documented default.
type DispatcherOptions struct {
	// Path returns the hand-off socket of instance id. Required.
	Path func(id int) string
	// QueueWait is how long a connection waits for a full hand-off queue of
	// its preferred instance before it goes to the next one (a sticky
	// miss). Default 200ms: about the time a worker takes to restart.
	QueueWait time.Duration
	// Proxy tunes PROXY protocol header reading.
	Proxy ProxyOptions
	// MaxPendingProxy bounds connections whose PROXY header is still being
	// read; more are closed at once. Default 4096.
	MaxPendingProxy int
	// Log receives rate-limited warnings. Default: slog.Default().
	Log *slog.Logger
}

// Stats are a dispatcher's counters since it started.
type Stats struct {
	HandedOff   uint64         // connections handed to a worker
	StickyMiss  uint64         // handed to another than the preferred instance
	Dropped     uint64         // closed because no instance could take them
	ProxyErrors uint64         // closed because of a bad, slow or missing PROXY header
	PerInstance map[int]uint64 // HandedOff by instance
}

// Dispatcher hands accepted connections to worker instances chosen by
// rendezvous hashing of the client address over the instances that are up.
type Dispatcher struct {
	// Up is the set of instances that take connections. The supervisor
	// changes it as instances come and go.
	Up Instances

	opts    DispatcherOptions
	mu      sync.Mutex // guards dialling into conns
	conns   sync.Map   // id -> *instConn
	pending chan struct{}

	handedOff, miss, dropped, proxyErrs atomic.Uint64
	perInst                             sync.Map // id -> *atomic.Uint64

	logMu   sync.Mutex
	lastLog time.Time
	quiet   int
}

// NewDispatcher returns a dispatcher with no instance up.
func NewDispatcher(o DispatcherOptions) *Dispatcher {
	if o.QueueWait <= 0 {
		o.QueueWait = 200 * time.Millisecond
	}
	if o.MaxPendingProxy <= 0 {
		o.MaxPendingProxy = 4096
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	d := &Dispatcher{opts: o, pending: make(chan struct{}, o.MaxPendingProxy)}
	d.Up.Replace()
	return d
}

// Stats returns the counters.
func (d *Dispatcher) Stats() Stats {
	s := Stats{
		HandedOff: d.handedOff.Load(), StickyMiss: d.miss.Load(),
		Dropped: d.dropped.Load(), ProxyErrors: d.proxyErrs.Load(),
		PerInstance: map[int]uint64{},
	}
	d.perInst.Range(func(k, v any) bool {
		s.PerInstance[k.(int)] = v.(*atomic.Uint64).Load()
		return true
	})
	return s
}

// Serve accepts on every listener until ctx ends or a listener fails, and
// dispatches each connection. It closes the listeners when it returns.
func (d *Dispatcher) Serve(ctx context.Context, ls []Listener) error {
	if len(ls) == 0 {
		return errors.New("dispatch: no listener")
	}
	errc := make(chan error, len(ls))
	var closers []io.Closer
	for _, l := range ls {
		c, run, err := d.prepare(l)
		if err != nil {
			for _, c := range closers {
				c.Close()
			}
			return err
		}
		closers = append(closers, c)
		go func() { errc <- run(ctx) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, c := range closers {
		c.Close()
	}
	for range ls[1:] {
		<-errc
	}
	d.conns.Range(func(k, v any) bool { v.(*instConn).c.Close(); return true })
	return err
}

// prepare readies one listener: what to close to stop it, and its loop.
func (d *Dispatcher) prepare(l Listener) (io.Closer, func(context.Context) error, error) {
	defer l.File.Close()
	if l.Proxy {
		nl, err := net.FileListener(l.File)
		if err != nil {
			return nil, nil, fmt.Errorf("dispatch: listener %s: %w", l.Name, err)
		}
		return nl, func(ctx context.Context) error { return d.acceptProxied(ctx, l.Name, nl) }, nil
	}
	// The plain path accepts with accept4(2) on the raw descriptor, through
	// the runtime poller: no net.Conn is made for a connection that only
	// passes through (that would cost epoll registration, socket options
	// and allocations for nothing). A non-blocking duplicate wrapped by
	// os.NewFile is pollable; net.Listener's RawConn cannot Read.
	var nfd int
	var derr error
	rc, err := l.File.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("dispatch: listener %s: %w", l.Name, err)
	}
	rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		return nil, nil, fmt.Errorf("dispatch: listener %s: dup: %w", l.Name, derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, nil, fmt.Errorf("dispatch: listener %s: %w", l.Name, err)
	}
	f := os.NewFile(uintptr(nfd), l.Name)
	return f, func(ctx context.Context) error { return d.acceptLoop(ctx, l.Name, f) }, nil
}

func (d *Dispatcher) acceptLoop(ctx context.Context, name string, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("dispatch: listener %s: %w", name, err)
	}
	l := Listener{Name: name}
	hdr := handoff.Header{Name: l.Name}
	var order []int
	backoff := time.Duration(0)
	for {
		var nfd int
		var peer netip.Addr
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			// The new descriptor stays blocking: it is the worker's to
			// configure, and Go's net.FileConn makes it non-blocking.
			nfd, peer, aerr = accept(int(fd))
			return aerr != unix.EAGAIN
		})
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("dispatch: accept on %s: %w", l.Name, err)
		}
		if aerr != nil {
			switch aerr {
			case unix.ECONNABORTED, unix.EINTR:
				continue
			case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
				// Out of descriptors: back off as net/http does, and let
				// the kernel queue connections meanwhile.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				d.warn("accept failed, backing off", "listener", l.Name, "err", aerr, "backoff", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("dispatch: accept on %s: %w", l.Name, aerr)
		}
		backoff = 0
		order = d.dispatch(nfd, peer, &hdr, order[:0])
	}
}

// accept takes one connection from the listening socket fd and returns it
// with the stickiness key of its peer: the IP address, or the zero address
// for unix socket peers (they all hash alike). It calls accept4(2) itself:
// x/sys/unix's Accept4 adds a getsockopt per connection (to tell L2TP from
// TCP) and allocates the address.
func accept(fd int) (int, netip.Addr, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	// RawSyscall: the socket is non-blocking, so the call never blocks,
	// and telling the runtime about a syscall wakes its sysmon thread
	// (measured: half of the dispatcher's CPU per connection).
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)), unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.Addr{}, e
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return int(nfd), netip.AddrFrom4(sa.Addr), nil
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		return int(nfd), netip.AddrFrom16(sa.Addr).Unmap(), nil
	}
	return int(nfd), netip.Addr{}, nil
}

// dispatch hands fd to the preferred up instance for key and closes it, or
// leaves that to a slow path when the preferred queue is full. order is
// scratch space, returned for reuse.
func (d *Dispatcher) dispatch(fd int, key netip.Addr, h *handoff.Header, order []int) []int {
	order = d.Up.Order(key, order)
	if len(order) == 0 {
		d.dropped.Add(1)
		d.warn("no instance is up: connection closed")
		unix.Close(fd)
		return order
	}
	err := d.send(order[0], h, fd)
	if err == nil {
		d.count(order[0])
		// The worker holds the connection now: this close never blocks.
		unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
		return order
	}
	// The preferred instance is busy or gone: wait for it a little in a
	// goroutine, so the accept loop goes on with other clients.
	hc := *h
	o := append([]int(nil), order...)
	go d.slow(fd, &hc, o, err)
	return order
}

// slow tries the preferred instance again for QueueWait, then the others in
// order, then waits once more on each before dropping the connection.
func (d *Dispatcher) slow(fd int, h *handoff.Header, order []int, first error) {
	defer unix.Close(fd)
	if errors.Is(first, unix.EAGAIN) {
		if d.sendWait(order[0], h, fd, d.opts.QueueWait) == nil {
			d.count(order[0])
			return
		}
	}
	for _, id := range order[1:] {
		if d.send(id, h, fd) == nil {
			d.count(id)
			d.miss.Add(1)
			return
		}
	}
	for _, id := range order {
		if d.sendWait(id, h, fd, d.opts.QueueWait) == nil {
			d.count(id)
			if id != order[0] {
				d.miss.Add(1)
			}
			return
		}
	}
	d.dropped.Add(1)
	d.warn("every instance's hand-off queue is full or unreachable: connection closed", "preferred", order[0], "err", first)
}

func (d *Dispatcher) count(id int) {
	d.handedOff.Add(1)
	v, ok := d.perInst.Load(id)
	if !ok {
		v, _ = d.perInst.LoadOrStore(id, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// instConn is a unix datagram socket connected to one instance's hand-off
// socket. Connected, so the kernel resolves the path once, and so that
// writability (poll) reports room in that instance's queue.
type instConn struct {
	c  *net.UnixConn
	rc syscall.RawConn
}

// try makes one non-blocking send through the runtime's descriptor
// reference, so a concurrent drop can never make it write to a closed or
// reused descriptor.
func (ic *instConn) try(h *handoff.Header, fd int) error {
	var serr error
	if err := ic.rc.Write(func(s uintptr) bool {
		serr = handoff.Send(int(s), "", h, fd)
		return true
	}); err != nil {
		return err
	}
	return serr
}

func (d *Dispatcher) conn(id int) (*instConn, error) {
	if v, ok := d.conns.Load(id); ok {
		return v.(*instConn), nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.conns.Load(id); ok {
		return v.(*instConn), nil
	}
	path := d.opts.Path(id)
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	ic := &instConn{c: c, rc: rc}
	d.conns.Store(id, ic)
	return ic, nil
}

// drop forgets the connection to id (its socket went away: the instance's
// socket unit was restarted or stopped), so the next send dials again.
func (d *Dispatcher) drop(id int, ic *instConn) {
	if d.conns.CompareAndDelete(id, ic) {
		ic.c.Close()
	}
}

// send makes one non-blocking attempt.
func (d *Dispatcher) send(id int, h *handoff.Header, fd int) error {
	ic, err := d.conn(id)
	if err != nil {
		return err
	}
	err = ic.try(h, fd)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		d.drop(id, ic)
		// Reconnect once: the socket may have been re-created.
		if ic, err = d.conn(id); err == nil {
			err = ic.try(h, fd)
		}
	}
	return err
}

// sendWait waits up to wait for room in id's queue.
func (d *Dispatcher) sendWait(id int, h *handoff.Header, fd int, wait time.Duration) error {
	ic, err := d.conn(id)
	if err != nil {
		return err
	}
	ic.c.SetWriteDeadline(time.Now().Add(wait))
	var serr error
	err = ic.rc.Write(func(s uintptr) bool {
		serr = handoff.Send(int(s), "", h, fd)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err != nil {
		return err
	}
	return serr
}

// acceptProxied accepts connections whose first bytes are a PROXY header:
// each header is read in its own goroutine, under a deadline, so a slow
// client never holds up the others.
func (d *Dispatcher) acceptProxied(ctx context.Context, name string, nl net.Listener) error {
	l := Listener{Name: name}
	for {
		c, err := nl.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			d.warn("accept failed", "listener", l.Name, "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		select {
		case d.pending <- struct{}{}:
		default:
			d.proxyErrs.Add(1)
			d.warn("too many connections waiting for their PROXY header: connection closed", "listener", l.Name)
			c.Close()
			continue
		}
		go func() {
			defer func() { <-d.pending }()
			d.proxied(ctx, l.Name, c)
		}()
	}
}

func (d *Dispatcher) proxied(ctx context.Context, name string, c net.Conn) {
	defer c.Close()
	ph, err := ReadProxyHeader(ctx, c, d.opts.Proxy)
	if err != nil {
		d.proxyErrs.Add(1)
		d.warn("PROXY header refused: connection closed", "listener", name, "peer", c.RemoteAddr().String(), "err", err)
		return
	}
	h := handoff.Header{Name: name, Flags: handoff.FlagProxy}
	key := peerAddr(c)
	if !ph.Local {
		h.Source, h.Destination = ph.Source, ph.Dest
		key = ph.Source.Addr().Unmap()
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		d.dropped.Add(1)
		return
	}
	rc.Control(func(fd uintptr) {
		// dispatch closes the descriptor it is given; give it a copy so
		// that c keeps its own until the deferred Close.
		nfd, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			d.dropped.Add(1)
			return
		}
		d.dispatch(nfd, key, &h, nil)
	})
}

func peerAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// warn logs at most one message a second; the others are counted and the
// count is reported with the next one.
func (d *Dispatcher) warn(msg string, args ...any) {
	d.logMu.Lock()
	now := time.Now()
	if now.Sub(d.lastLog) < time.Second {
		d.quiet++
		d.logMu.Unlock()
		return
	}
	q := d.quiet
	d.quiet, d.lastLog = 0, now
	d.logMu.Unlock()
	if q > 0 {
		args = append(args, "suppressed", q)
	}
	d.opts.Log.Warn(msg, args...)
}
