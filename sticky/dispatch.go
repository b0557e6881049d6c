package sticky

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
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
	// ProxyFrom lists the peers trusted to send a PROXY header on a Proxy
	// TCP listener (a single address is a /32 or /128 prefix). A peer
	// outside the list is closed as soon as it is accepted, before any of
	// its bytes is read, and counted in Stats.ProxyUntrusted. It is
	// required: Serve refuses a Proxy TCP listener with an empty list, and
	// a list on a listener without Proxy. Unix-socket listeners ignore it:
	// their peers have no address, and the socket file's permissions say
	// who may connect.
	ProxyFrom []netip.Prefix
	// File is the listening socket (TCP or unix stream), as systemd
	// passes it. Serve takes it over and closes it.
	File *os.File
}

// DispatcherOptions configure a Dispatcher. The zero value of each field
// means the documented default.
type DispatcherOptions struct {
	// Path returns the hand-off socket of instance id. Required.
	Path func(id int) string
	// QueueWait is how long a connection waits for room in the hand-off
	// queue of an instance before it goes to the next one in its order (a
	// sticky miss). Default 200ms: about the time a worker takes to
	// restart.
	QueueWait time.Duration
	// MaxQueued bounds, per instance, the connections the dispatcher holds
	// while that instance's hand-off queue is full. A connection that
	// finds the bound reached goes to the next instance with room at once
	// when its own is stalled (it handed nothing over for QueueWait);
	// when its own is making room, it waits for it, as one whose queue is
	// full does, for QueueWait at most, an instance whose queue is empty
	// taking it at once meanwhile. While it waits the accept loop holds it
	// and accepts nothing more (see Serve: backpressure). Default 1024.
	MaxQueued int
	// MaxQueuedTotal bounds the connections held that way over all
	// instances: each is a descriptor, and a group of many instances that
	// all stall would otherwise hold MaxQueued times their number, past
	// the process's descriptor limit, where accept, the dial of a healthy
	// instance's hand-off socket and everything else the supervisor does
	// would fail. A connection that finds the bound reached goes to an
	// instance that can take it at once, or is held by its accept loop,
	// which stops accepting until there is room (see Serve): the
	// dispatcher holds at most MaxQueuedTotal connections and one per
	// listener. Default: a quarter of RLIMIT_NOFILE (its soft limit when
	// NewDispatcher runs), at least MaxQueued when the limit allows.
	MaxQueuedTotal int
	// MaxWait bounds the time a connection waits in the dispatcher in all.
	// A connection whose QueueWait ended with no other instance able to
	// take or queue it keeps its place and tries again after another
	// QueueWait, in the order of the instances up then, until MaxWait has
	// passed since it was accepted; only then is it closed (Dropped).
	// Every instance may be short of room at once for longer than
	// QueueWait: a single instance restarting, workers that stopped
	// reading hand-offs near their descriptor limit. It is for a group
	// that makes no room at all: under overload the workers hand room
	// back long before (the dispatcher holds at most MaxQueued per
	// instance and accepts no more meanwhile). Default 10s.
	MaxWait time.Duration
	// Proxy tunes PROXY protocol header reading.
	Proxy ProxyOptions
	// MaxPendingProxy bounds connections whose PROXY header is still being
	// read, over all peers; more are closed at once. Default 4096.
	MaxPendingProxy int
	// MaxPendingProxyPerPeer bounds them per peer address, so that one
	// trusted peer holding many slow connections cannot spend the budget
	// of another. Default MaxPendingProxy/4: up to three peers may
	// misbehave before a fourth is short. Unix-socket peers have no
	// address and share MaxPendingProxy alone.
	MaxPendingProxyPerPeer int
	// Affinity says what connections are routed by (the client's address
	// by default) and bounds the instances' loads.
	Affinity AffinityOptions
	// Log receives rate-limited warnings. Default: slog.Default().
	Log *slog.Logger
}

// Stats are a dispatcher's counters since it started.
type Stats struct {
	HandedOff   uint64         // connections handed to a worker
	StickyMiss  uint64         // handed to another than the preferred instance
	Dropped     uint64         // closed: no instance up, or none made room within MaxWait
	ProxyErrors uint64         // closed because of a bad, slow or missing PROXY header
	PerInstance map[int]uint64 // HandedOff by instance

	// Queued is, by instance, how many connections wait now in the
	// dispatcher for room in that instance's hand-off queue (instances
	// with none are left out). One that moves from an instance to the
	// next counts in both for an instant.
	Queued map[int]int
	// QueueFull counts the times a connection's QueueWait ended with its
	// instance's queue still full (it went on to the next instance with
	// room, or kept its place when none had), and the times a new one
	// found an instance's bound reached.
	QueueFull uint64
	// SendErrors counts connections closed because their own hand-off
	// failed (a header that cannot be encoded, EMSGSIZE, ENOBUFS, ...);
	// the instance's hand-off socket is kept.
	SendErrors uint64
	// Redials counts hand-off sockets re-connected because the instance's
	// socket went away (it was re-created or stopped).
	Redials uint64
	// AcceptErrors counts failed accept calls; each is retried.
	AcceptErrors uint64
	// ProxyUntrusted counts PROXY connections closed at accept because
	// their peer is outside the listener's ProxyFrom.
	ProxyUntrusted uint64
	// ProxyBusy counts PROXY connections closed at accept because their
	// peer's (or the dispatcher's) pending-header budget was spent.
	ProxyBusy uint64
	// AcceptPauses counts the times an accept loop (or a PROXY header
	// reader) held a connection that no instance could take or queue
	// within the bounds, and stopped accepting until there was room: the
	// next connections waited in the listening socket's backlog
	// (backpressure) rather than being accepted and closed.
	AcceptPauses uint64
	// Held is how many connections are held that way now (at most one
	// per listener, plus one per PROXY connection whose header was read).
	Held int

	// Affinity keys (AffinityOptions). KeyRouted counts connections
	// placed by the hash of their key, TagRouted those placed on the
	// instance their session id names, Fallbacks those that had no key
	// (placed by the fallback), Spills those moved past their instance by
	// BalanceFactor, XFFIgnored the X-Forwarded-For headers of peers that
	// are not trusted proxies (ignored: the connection went by the
	// fallback).
	KeyRouted, TagRouted, Fallbacks, Spills, XFFIgnored uint64
	// PeekRejects counts, by reason (PeekTimeout, PeekTooLarge,
	// PeekMalformed, PeekClosed, PeekBusy; every reason is present), the
	// connections whose request head gave no key; each went by the
	// fallback (or was closed, for PeekClosed with nothing received).
	PeekRejects map[string]uint64
	// Closed is, by instance, the connections its workers reported
	// closed (Dispatcher.Closed); instances with none are left out.
	Closed map[int]uint64
	// Peeking is how many connections wait now for their request head
	// (at most AffinityOptions.MaxPeeking).
	Peeking int
	// Open is, by instance, the connections handed off and not yet
	// reported closed by the worker (Dispatcher.Closed); instances with
	// none are left out.
	Open map[int]uint64
}

// Dispatcher hands accepted connections to worker instances chosen by
// rendezvous hashing of the client address over the instances that are up.
type Dispatcher struct {
	// Up is the set of instances that take connections. The supervisor
	// changes it as instances come and go.
	Up Instances

	opts  DispatcherOptions
	insts sync.Map // id -> *inst

	budget proxyBudget
	aff    affinityStats

	// wake is an eventfd, readable once Serve ends, that the drainers
	// poll beside their instance's socket; stopped says the same to code
	// that does not poll. Both are set by Serve.
	wake     int
	stopped  atomic.Bool
	drainers sync.WaitGroup

	handedOff, miss, dropped, proxyErrs     atomic.Uint64
	queueFull, sendErrs, redials, acceptErr atomic.Uint64
	proxyUntrusted, proxyBusy, pauses       atomic.Uint64
	queued                                  atomic.Int64 // in every instance's pending queue

	// Backpressure: held counts the connections held by paused accept
	// loops (hold); while it is not zero, drainers that make room close
	// roomCh (under roomMu) to wake them.
	held   atomic.Int32
	roomMu sync.Mutex
	roomCh chan struct{}

	// peek waits for the request heads of key-affinity listeners; nil for
	// source affinity. Set by Serve.
	peek *headPeeker

	// testAccept, when set, replaces the accept(2) call of the plain accept
	// loop. Only tests set it, to produce errors the kernel cannot be made
	// to return on demand (EPROTO, EPERM from a firewall hook, ...).
	testAccept func(fd int) (int, netip.Addr, error)

	logMu   sync.Mutex
	lastLog time.Time
	quiet   int

	// beats has one counter per plain accept loop (see Beats).
	beatMu sync.Mutex
	beats  []*atomic.Uint64
}

// Beats returns, for each plain accept loop, a counter that is odd while
// the loop is dispatching a connection and grows by two with each one. A
// counter that stays odd and unchanged for a watchdog period is a loop
// wedged in one dispatch (which never blocks by design); an even one is a
// loop waiting for connections, or paused for backpressure (holding a
// connection until an instance has room, woken by every drainer that
// makes some: see Serve), which is alive. The supervisor gates its
// watchdog on it. It costs the hot path two atomic adds, no system call
// and no timer.
func (d *Dispatcher) Beats() []uint64 {
	d.beatMu.Lock()
	defer d.beatMu.Unlock()
	out := make([]uint64, len(d.beats))
	for i, b := range d.beats {
		out[i] = b.Load()
	}
	return out
}

func (d *Dispatcher) newBeat() *atomic.Uint64 {
	b := new(atomic.Uint64)
	d.beatMu.Lock()
	d.beats = append(d.beats, b)
	d.beatMu.Unlock()
	return b
}

// NewDispatcher returns a dispatcher with no instance up.
func NewDispatcher(o DispatcherOptions) *Dispatcher {
	if o.QueueWait <= 0 {
		o.QueueWait = 200 * time.Millisecond
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = 1024
	}
	if o.MaxQueuedTotal <= 0 {
		o.MaxQueuedTotal = defaultMaxQueuedTotal(o.MaxQueued)
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 10 * time.Second
	}
	if o.MaxPendingProxy <= 0 {
		o.MaxPendingProxy = 4096
	}
	if o.MaxPendingProxyPerPeer <= 0 {
		o.MaxPendingProxyPerPeer = max(1, o.MaxPendingProxy/4)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Affinity.PeekTimeout <= 0 {
		o.Affinity.PeekTimeout = time.Second
	}
	if o.Affinity.MaxPeeking <= 0 {
		o.Affinity.MaxPeeking = 4096
	}
	d := &Dispatcher{opts: o, wake: -1}
	d.budget = proxyBudget{max: o.MaxPendingProxy, perPeer: o.MaxPendingProxyPerPeer, byPeer: map[netip.Addr]int{}}
	d.Up.Replace()
	return d
}

// defaultMaxQueuedTotal is a quarter of the descriptor limit: the rest is
// for connections whose PROXY header is being read (MaxPendingProxy,
// 4,096), hand-off sockets (one per instance), the accept backlog's
// turnover and the supervisor's own files, D-Bus and journal sockets.
// Without a limit to read, it is perInstance.
func defaultMaxQueuedTotal(perInstance int) int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return perInstance
	}
	return int(max(1, min(rl.Cur/4, 1<<30)))
}

// Stats returns the counters.
func (d *Dispatcher) Stats() Stats {
	s := Stats{
		HandedOff: d.handedOff.Load(), StickyMiss: d.miss.Load(),
		Dropped: d.dropped.Load(), ProxyErrors: d.proxyErrs.Load(),
		PerInstance: map[int]uint64{}, Queued: map[int]int{},
		QueueFull: d.queueFull.Load(), SendErrors: d.sendErrs.Load(),
		Redials: d.redials.Load(), AcceptErrors: d.acceptErr.Load(),
		ProxyUntrusted: d.proxyUntrusted.Load(), ProxyBusy: d.proxyBusy.Load(),
		AcceptPauses: d.pauses.Load(), Held: int(d.held.Load()),
		KeyRouted: d.aff.keyRouted.Load(), TagRouted: d.aff.tagRouted.Load(),
		Fallbacks: d.aff.fallbacks.Load(), Spills: d.aff.spills.Load(),
		XFFIgnored: d.aff.xffIgnored.Load(), Peeking: int(d.aff.peeking.Load()), PeekRejects: map[string]uint64{}, Open: map[int]uint64{}, Closed: map[int]uint64{},
	}
	for i, r := range peekReasons {
		s.PeekRejects[r] = d.aff.rejects[i].Load()
	}
	d.insts.Range(func(k, v any) bool {
		in := v.(*inst)
		if n := in.handed.Load(); n > 0 {
			s.PerInstance[k.(int)] = n
		}
		if n := in.nAll.Load(); n > 0 {
			s.Queued[k.(int)] = int(n)
		}
		if n := in.open(); n > 0 {
			s.Open[k.(int)] = n
		}
		if n := in.closed.Load(); n > 0 {
			s.Closed[k.(int)] = n
		}
		return true
	})
	return s
}

// Serve accepts on every listener until ctx ends or a listener fails, and
// dispatches each connection. It closes the listeners when it returns.
//
// Backpressure: a connection that no instance can take or queue within
// the bounds (MaxQueued, MaxQueuedTotal) is held by its accept loop, which
// accepts nothing more until an instance has room for it: the next
// connections wait in the listening socket's backlog (with SYN cookies
// past it), as they would before a server that is behind, rather than
// being accepted and closed. A connection is closed only when no instance
// is up, or when none made room for it within MaxWait.
//
// The connections still waiting for room in a hand-off queue then go to
// any instance of their order with room (the next ones first, their own
// last), for at most QueueWait (and a second) more; only those that find none are closed,
// counted as dropped: a supervisor restart loses no connection that
// another instance can take. Call it once.
func (d *Dispatcher) Serve(ctx context.Context, ls []Listener) error {
	if len(ls) == 0 {
		return errors.New("dispatch: no listener")
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		for _, l := range ls {
			l.File.Close()
		}
		return fmt.Errorf("dispatch: eventfd: %w", err)
	}
	d.wake = wake
	ctx, cancel := context.WithCancel(ctx)
	var proxied sync.WaitGroup
	if d.opts.Affinity.Spec.IsKey() {
		if d.peek, err = d.newPeeker(ctx, &proxied); err != nil {
			cancel()
			for _, l := range ls {
				l.File.Close()
			}
			unix.Close(wake)
			return err
		}
	}
	errc := make(chan error, len(ls))
	var closers []io.Closer
	// shutdown stops the loops, then the header readers, then the
	// drainers: in that order nothing can dispatch after the hand-off
	// sockets are closed. It returns the first loop error, if any.
	shutdown := func(waited int) error {
		cancel()
		for _, c := range closers {
			c.Close()
		}
		var err error
		for range len(closers) - waited {
			if e := <-errc; err == nil {
				err = e
			}
		}
		if d.peek != nil {
			d.peek.close() // after the accept loops: nothing adds any more
		}
		proxied.Wait()
		d.stop()
		return err
	}
	for i, l := range ls {
		c, run, err := d.prepare(l, &proxied)
		if err != nil {
			for _, l := range ls[i+1:] {
				l.File.Close()
			}
			shutdown(0)
			return err
		}
		closers = append(closers, c)
		go func() { errc <- run(ctx) }()
	}
	select {
	case <-ctx.Done():
		return shutdown(0)
	case err = <-errc:
		if e := shutdown(1); err == nil {
			err = e
		}
		return err
	}
}

// stop ends the drainers (they close what they hold) and the hand-off
// sockets, once no accept loop or header reader can dispatch any more.
func (d *Dispatcher) stop() {
	d.stopped.Store(true)
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(d.wake, one[:]) // never read: stays readable for every drainer
	d.drainers.Wait()
	d.insts.Range(func(_, v any) bool {
		in := v.(*inst)
		if ic := in.conn.Load(); ic != nil && in.conn.CompareAndSwap(ic, nil) {
			ic.release()
		}
		return true
	})
	unix.Close(d.wake)
}

// prepare readies one listener: what to close to stop it, and its loop.
func (d *Dispatcher) prepare(l Listener, proxied *sync.WaitGroup) (io.Closer, func(context.Context) error, error) {
	defer l.File.Close()
	if !l.Proxy && len(l.ProxyFrom) > 0 {
		return nil, nil, fmt.Errorf("dispatch: listener %s: ProxyFrom is set but the listener does not read PROXY headers", l.Name)
	}
	if l.Proxy {
		nl, err := net.FileListener(l.File)
		if err != nil {
			return nil, nil, fmt.Errorf("dispatch: listener %s: %w", l.Name, err)
		}
		var trust []netip.Prefix
		if _, isUnix := nl.(*net.UnixListener); !isUnix {
			trust, err = trustList(l.ProxyFrom)
			if err != nil {
				nl.Close()
				return nil, nil, fmt.Errorf("dispatch: listener %s: %w", l.Name, err)
			}
		}
		return nl, func(ctx context.Context) error { return d.acceptProxied(ctx, l.Name, trust, nl, proxied) }, nil
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
	if d.peek != nil {
		return f, func(ctx context.Context) error { return d.acceptKeyLoop(ctx, l.Name, f, d.peek) }, nil
	}
	return f, func(ctx context.Context) error { return d.acceptLoop(ctx, l.Name, f) }, nil
}

// trustList validates a TCP PROXY listener's allow-list and returns it in
// the form peers are compared with: masked, and IPv4-mapped IPv6 prefixes
// as IPv4 (accepted peers are unmapped).
func trustList(ps []netip.Prefix) ([]netip.Prefix, error) {
	if len(ps) == 0 {
		return nil, errors.New("PROXY listener with no trusted peer: any client could choose its address and so its instance; list the load balancers' addresses in ProxyFrom (proxy_from)")
	}
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("invalid trusted PROXY prefix %q", p)
		}
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Errorf("trusted PROXY prefix %s: an IPv4-mapped prefix needs at least 96 bits", p)
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, netip.PrefixFrom(p.Addr().WithZone(""), p.Bits()).Masked())
	}
	return out, nil
}

func trusted(trust []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range trust {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// acceptNext is what an accept loop does after an error.
type acceptNext int

const (
	acceptAgain   acceptNext = iota // that connection failed: accept the next at once
	acceptBackoff                   // a condition that lasts: wait, then accept again
	acceptEnd                       // the listener is unusable
)

// acceptAction classifies an accept error. Linux reports a connection's
// pending network error from accept ("treat them like EAGAIN by
// retrying", accept(2)): the connection is consumed, the next one may be
// fine. Resource shortages (EMFILE, ENFILE, ENOBUFS, ENOMEM), EPERM from a
// firewall or LSM hook (which fails before dequeuing, so retrying at once
// would spin) and errors not known here last a while: back off. Only a
// descriptor that is not a listening socket ends the loop; a closed one is
// told apart by the callers (os.ErrClosed, net.ErrClosed).
func acceptAction(err error) acceptNext {
	var e syscall.Errno
	if !errors.As(err, &e) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return acceptAgain
		}
		return acceptBackoff
	}
	switch e {
	case unix.ECONNABORTED, unix.EINTR, unix.EPROTO, unix.ENETDOWN, unix.ENOPROTOOPT,
		unix.EHOSTDOWN, unix.ENONET, unix.EHOSTUNREACH, unix.EOPNOTSUPP, unix.ENETUNREACH,
		unix.ETIMEDOUT, unix.ECONNRESET:
		return acceptAgain
	case unix.EBADF, unix.ENOTSOCK, unix.EINVAL, unix.EFAULT:
		return acceptEnd
	}
	return acceptBackoff
}

// acceptFailed counts and handles one accept error: it returns an error
// to end the loop with, or nil after waiting as the error asks. backoff is
// the loop's state, doubled from 5ms to 1s while errors that last go on.
func (d *Dispatcher) acceptFailed(ctx context.Context, name string, aerr error, backoff *time.Duration) error {
	d.acceptErr.Add(1)
	switch acceptAction(aerr) {
	case acceptAgain:
		return nil
	case acceptEnd:
		return fmt.Errorf("dispatch: accept on %s: %w", name, aerr)
	}
	*backoff = min(max(2**backoff, 5*time.Millisecond), time.Second)
	d.warn("accept failed, backing off", "listener", name, "err", aerr, "backoff", *backoff)
	t := time.NewTimer(*backoff)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return nil
}

func (d *Dispatcher) acceptLoop(ctx context.Context, name string, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("dispatch: listener %s: %w", name, err)
	}
	hdr := handoff.Header{Name: name}
	var order []int
	backoff := time.Duration(0)
	acc := accept
	if d.testAccept != nil {
		acc = d.testAccept
	}
	beat := d.newBeat()
	bounded := d.opts.Affinity.BalanceFactor > 1
	for {
		var nfd int
		var peer netip.Addr
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			// The new descriptor stays blocking: it is the worker's to
			// configure, and Go's net.FileConn makes it non-blocking.
			nfd, peer, aerr = acc(int(fd))
			return aerr != unix.EAGAIN
		})
		if again, done, err := d.acceptEnded(ctx, name, err, aerr, &backoff); done {
			return err
		} else if again {
			continue
		}
		beat.Add(1)
		var held *waiting
		if bounded {
			order, held = d.dispatchTo(nfd, d.bounded(d.Up.Snapshot(), routeKey{bucket: Bucket(peer)}), &hdr, order[:0])
		} else {
			order, held = d.dispatch(nfd, peer, &hdr, order[:0])
		}
		beat.Add(1)
		if held != nil {
			// Backpressure: no instance can take or queue it; accept no
			// more until one can. The beat stays even: a loop waiting
			// for room is alive, as one waiting for connections.
			d.hold(ctx, held)
		}
	}
}

// acceptEnded sorts out how one accept on listener name ended: rerr from
// the listener's RawConn.Read, aerr from accept4 itself. again asks for
// another accept (a transient error, after acceptFailed's back-off);
// done ends the loop, with a nil error when ctx ended or the listener was
// closed. Both false: a connection was taken, and the back-off resets.
// The Read stays in each loop: passed here through the RawConn interface,
// its closure and what it captures would escape, allocations per
// connection.
func (d *Dispatcher) acceptEnded(ctx context.Context, name string, rerr, aerr error, backoff *time.Duration) (again, done bool, err error) {
	switch {
	case rerr != nil:
		if ctx.Err() != nil || errors.Is(rerr, os.ErrClosed) {
			return false, true, nil
		}
		return false, true, fmt.Errorf("dispatch: accept on %s: %w", name, rerr)
	case aerr != nil:
		if err := d.acceptFailed(ctx, name, aerr, backoff); err != nil {
			return false, true, err
		}
		return ctx.Err() == nil, ctx.Err() != nil, nil
	}
	*backoff = 0
	return false, false, nil
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

// inst is the dispatcher's state for one instance: its hand-off socket,
// the connections waiting for room in its queue, its counter. Created on
// first use and kept (instances are numbered 1..amount).
type inst struct {
	id     int
	conn   atomic.Pointer[instConn] // nil until dialled, and after a drop
	dialMu sync.Mutex               // one dial at a time

	// Connections waiting for room: own prefer this instance, fallback
	// come from another whose queue stayed full. Own ones go first, so a
	// stalled instance's backlog never delays the clients of the instance
	// it falls back to by more than that instance's kernel queue. nOwn
	// and nAll mirror the lengths for the lock-free paths: a connection
	// never overtakes others of its kind waiting for the same instance.
	nOwn, nAll    atomic.Int32
	mu            sync.Mutex // guards own, fallback and draining
	own, fallback []*waiting
	draining      bool

	handed atomic.Uint64
	closed atomic.Uint64 // reported by the worker (Dispatcher.Closed)
	// lastSent is when the drainer last handed a connection over
	// (UnixNano): an instance that made no room for QueueWait is stalled,
	// and a connection finding its bound reached does not wait for it.
	lastSent atomic.Int64
}

// waiting is a connection the dispatcher holds until an instance has
// room: it will go to order[idx], or the next ones after their deadline.
type waiting struct {
	fd       int
	h        handoff.Header
	order    []int
	idx      int
	deadline time.Time
	until    time.Time // the end of MaxWait
	rk       routeKey  // where it belongs, to take the order again
}

// routeKey is where a connection belongs: the rendezvous order of its
// bucket (of its client address, or of its affinity key), with first, when
// not 0, moved to the front (the instance a session id names, the least
// loaded one for a connection without a key, or the next in order when
// the preferred one holds more than its bounded load).
type routeKey struct {
	bucket int
	first  int
}

// order appends rk's order in up to dst.
func (rk routeKey) order(up *Set, dst []int) []int {
	start := len(dst)
	dst = up.OrderBucket(rk.bucket, dst)
	if rk.first != 0 {
		o := dst[start:]
		if i := slices.Index(o, rk.first); i > 0 {
			copy(o[1:i+1], o[:i])
			o[0] = rk.first
		}
	}
	return dst
}

// instConn is a unix datagram socket connected to one instance's hand-off
// socket. Connected, so the kernel resolves the path once, and so that
// writability (poll) reports room in that instance's queue.
//
// Sends use the raw descriptor with MSG_DONTWAIT and take no lock: the
// descriptor is reference-counted instead, so a concurrent drop (the
// instance's socket went away) never makes a send write to a closed or
// reused descriptor. inst.conn holds one reference, each user another;
// the last release closes the descriptor.
type instConn struct {
	fd   int
	refs atomic.Int32
}

func (ic *instConn) acquire() bool {
	for {
		n := ic.refs.Load()
		if n == 0 {
			return false
		}
		if ic.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (ic *instConn) release() {
	if ic.refs.Add(-1) == 0 {
		unix.Close(ic.fd)
	}
}

func (d *Dispatcher) inst(id int) *inst {
	if v, ok := d.insts.Load(id); ok {
		return v.(*inst)
	}
	v, _ := d.insts.LoadOrStore(id, &inst{id: id})
	return v.(*inst)
}

// conn returns in's hand-off socket, dialling it if needed, with a
// reference the caller releases.
func (d *Dispatcher) conn(in *inst) (*instConn, error) {
	if ic := in.conn.Load(); ic != nil && ic.acquire() {
		return ic, nil
	}
	in.dialMu.Lock()
	defer in.dialMu.Unlock()
	if ic := in.conn.Load(); ic != nil && ic.acquire() {
		return ic, nil
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("dispatch: hand-off socket: %w", err)
	}
	path := d.opts.Path(in.id)
	// connect(2) on a unix datagram socket never blocks.
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("dispatch: connect %s: %w", path, err)
	}
	ic := &instConn{fd: fd}
	ic.refs.Store(2) // in.conn's and the caller's
	in.conn.Store(ic)
	return ic, nil
}

// drop forgets in's hand-off socket ic (the instance's socket went away:
// its socket unit was restarted or stopped), so the next send dials again.
func (d *Dispatcher) drop(in *inst, ic *instConn) {
	if in.conn.CompareAndSwap(ic, nil) {
		d.redials.Add(1)
		ic.release()
	}
}

// sendResult is what one hand-off attempt came to.
type sendResult int

const (
	sent   sendResult = iota
	busy              // the instance's queue is full (EAGAIN)
	gone              // the instance's socket is not there: try another
	failed            // this connection cannot be handed off: close it
)

// classify tells errors that mean the instance's socket is gone (re-dial,
// then try another instance) from a full queue and from errors of this
// one connection, which must not cost the instance its socket.
func classify(err error) sendResult {
	if err == nil {
		return sent
	}
	var e syscall.Errno
	if !errors.As(err, &e) {
		return failed // the header could not be encoded
	}
	switch e {
	case unix.EAGAIN:
		return busy
	case unix.ECONNREFUSED, unix.ENOENT, unix.ENOTCONN, unix.EPIPE, unix.EBADF,
		unix.ECONNRESET, unix.EDESTADDRREQ, unix.ENOTSOCK, unix.EPROTOTYPE:
		return gone
	}
	// EMSGSIZE, ENOBUFS, ENOMEM, ETOOMANYREFS (too many descriptors in
	// flight for this user), EPERM from an LSM, ...
	return failed
}

// trySend makes one non-blocking hand-off attempt to in, re-dialling once
// if its socket is gone.
func (d *Dispatcher) trySend(in *inst, h *handoff.Header, fd int) (sendResult, error) {
	var err error
	for range 2 {
		var ic *instConn
		ic, err = d.conn(in)
		if err != nil {
			return gone, err
		}
		for {
			err = handoff.Send(ic.fd, "", h, fd)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		r := classify(err)
		if r != gone {
			ic.release()
			return r, err
		}
		d.drop(in, ic)
		ic.release()
	}
	return gone, err
}

// dispatch hands fd to the preferred up instance for key and closes it;
// when that instance's queue is full it leaves fd waiting for room (a
// drainer goroutine owns it then) or goes on in order. It never blocks:
// a connection that no instance can take or queue now is returned, for
// the caller to hold (hold) before it accepts any other.
// order is scratch space, returned for reuse.
func (d *Dispatcher) dispatch(fd int, key netip.Addr, h *handoff.Header, order []int) ([]int, *waiting) {
	return d.dispatchTo(fd, routeKey{bucket: Bucket(key)}, h, order)
}

// dispatchTo is dispatch for a connection that belongs where rk says.
func (d *Dispatcher) dispatchTo(fd int, rk routeKey, h *handoff.Header, order []int) ([]int, *waiting) {
	if rk.first == 0 {
		order = d.Up.OrderBucket(rk.bucket, order)
	} else {
		order = rk.order(d.Up.Snapshot(), order)
	}
	if len(order) == 0 {
		d.dropped.Add(1)
		d.warn("no instance is up: connection closed")
		unix.Close(fd)
		return order, nil
	}
	in := d.inst(order[0])
	full := in.nOwn.Load() > 0 // others wait for it already: no overtaking
	if !full {
		if ic := in.conn.Load(); ic != nil && ic.acquire() {
			err := handoff.Send(ic.fd, "", h, fd)
			ic.release()
			if err == nil {
				d.handed(in, false)
				// The worker holds the connection now: this close never blocks.
				unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
				return order, nil
			}
			full = errors.Is(err, unix.EAGAIN)
		}
	}
	// The preferred instance is busy, not dialled yet or gone: wait for
	// room in its queue (a drainer goroutine owns fd then), or go on in
	// order. Nothing here blocks the accept loop.
	now := time.Now()
	w := &waiting{fd: fd, h: *h, order: append([]int(nil), order...), until: now.Add(d.opts.MaxWait), rk: rk}
	start := 0
	if full {
		if d.enqueue(in, w, enqNew) {
			return order, nil
		}
		d.queueFull.Add(1)
		start = 1
	}
	if d.admit(w, now, start, true) {
		return order, nil
	}
	return order, w
}

func (d *Dispatcher) handed(in *inst, miss bool) {
	d.handedOff.Add(1)
	in.handed.Add(1)
	if miss {
		d.miss.Add(1)
	}
}

// admit places w, which no queue holds, without blocking: it hands it to
// the first instance of its order (from start on) that has nothing
// waiting and room, or queues it for the first one with room within the
// bounds. It reports false when none can take or queue it now; the caller
// holds w meanwhile and tries again (not first: start is then 0, and the
// order is taken again, as instances may have come), since is when that
// began.
//
// A connection whose preferred instance is at its bound waits for it (is
// held) rather than queue behind another, while that instance makes room
// (it handed a connection over within QueueWait) and for QueueWait at
// most; an instance with nothing waiting may take it at once meanwhile.
// In a storm every instance's queue is at its bound and room appears one
// connection at a time, here or there: a connection queued wherever room
// appeared first would lose its instance one time in two. A stalled
// instance makes no room: its clients go on at once, as before.
//
// admit closes w (Dropped) when no instance is up, or MaxWait has passed,
// and reports true.
func (d *Dispatcher) admit(w *waiting, since time.Time, start int, first bool) bool {
	now := time.Now()
	if !first {
		w.order = w.rk.order(d.Up.Snapshot(), w.order[:0])
	}
	if len(w.order) == 0 {
		d.closeWaiting(w, "no instance is up: connection closed", nil)
		return true
	}
	if !now.Before(w.until) {
		d.closeWaiting(w, "no instance made room for a connection within MaxWait: connection closed", nil)
		return true
	}
	up := d.Up.Snapshot()
	pref := d.inst(w.order[0])
	patient := up.Contains(pref.id) && now.Sub(since) < d.opts.QueueWait &&
		now.UnixNano()-pref.lastSent.Load() < int64(d.opts.QueueWait)
	var last error
	for i := start; i < len(w.order); i++ {
		id := w.order[i]
		if !up.Contains(id) {
			continue // left the set since w was accepted: its socket goes soon
		}
		in := d.inst(id)
		behind := in.nOwn.Load()
		if i > 0 {
			behind = in.nAll.Load()
		}
		if behind == 0 {
			switch r, err := d.handNow(in, w, i > 0); r {
			case sent, failed:
				return true
			case gone:
				last = err
				if i == 0 {
					patient = false
				}
				continue
			}
		}
		if i > 0 && patient {
			continue // only an instance with nothing waiting takes it now
		}
		w.idx = i
		if d.enqueue(in, w, enqNew) {
			return true
		}
		if first {
			d.queueFull.Add(1)
		}
	}
	if first {
		args := []any{"listener", w.h.Name, "preferred", w.order[0]}
		if last != nil {
			args = append(args, "err", last)
		}
		d.warn("every instance's hand-off queue is full: accepting no more connections until one has room (backpressure)", args...)
	}
	return false
}

// holdRetry is how often a held connection tries again without being
// woken: instances that come, and kernel queues that drain with nothing
// waiting in the dispatcher, wake no one.
const holdRetry = 50 * time.Millisecond

// hold keeps w, which no instance could take or queue (dispatch returned
// it), until one can, and returns then: its accept loop accepts no other
// meanwhile, so the next connections wait in the listening socket's
// backlog rather than being accepted and closed. It retries whenever a
// drainer makes room, and every holdRetry (or QueueWait, if shorter).
// When ctx ends w gets lastChance, as a connection waiting in a queue
// does when Serve ends.
func (d *Dispatcher) hold(ctx context.Context, w *waiting) {
	d.pauses.Add(1)
	d.held.Add(1)
	defer func() {
		d.held.Add(-1)
		d.wakeHeld() // for awaitRoom
	}()
	since := time.Now()
	retry := min(holdRetry, d.opts.QueueWait)
	t := time.NewTimer(retry)
	defer t.Stop()
	for {
		room := d.roomChan() // before admit: room made after admit looked closes it
		if d.admit(w, since, 0, false) {
			return
		}
		select {
		case <-room:
		case <-t.C:
		case <-ctx.Done():
			d.lastChance([]*waiting{w})
			return
		}
		t.Reset(retry)
	}
}

// roomChan returns a channel that a drainer closes when it next makes
// room (room).
func (d *Dispatcher) roomChan() <-chan struct{} {
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	if d.roomCh == nil {
		d.roomCh = make(chan struct{})
	}
	return d.roomCh
}

// room wakes the held connections' loops, if any: a drainer calls it
// after taking a connection out of its queue. Nothing is held almost
// always, and then it costs an atomic load.
func (d *Dispatcher) room() {
	if d.held.Load() == 0 {
		return
	}
	d.wakeHeld()
}

// wakeHeld closes the channel roomChan returned.
func (d *Dispatcher) wakeHeld() {
	d.roomMu.Lock()
	if d.roomCh != nil {
		close(d.roomCh)
		d.roomCh = nil
	}
	d.roomMu.Unlock()
}

// awaitRoom returns once no connection is held (hold), or ctx has ended.
// The PROXY accept loop calls it before each accept: its connections are
// held by their header readers, not by the loop, and each one accepted
// while the others wait for room would only take a slot of the PROXY
// budget, and past it be closed (ProxyBusy).
func (d *Dispatcher) awaitRoom(ctx context.Context) {
	if d.held.Load() == 0 {
		return
	}
	retry := min(holdRetry, d.opts.QueueWait)
	t := time.NewTimer(retry)
	defer t.Stop()
	for {
		room := d.roomChan()
		if d.held.Load() == 0 {
			return
		}
		select {
		case <-room:
		case <-t.C:
			t.Reset(retry)
		case <-ctx.Done():
			return
		}
	}
}

// closeWaiting closes w, counted as dropped.
func (d *Dispatcher) closeWaiting(w *waiting, msg string, err error) {
	d.dropped.Add(1)
	if !d.stopped.Load() { // else Serve ended: closing what waits is expected
		args := []any{"listener", w.h.Name}
		if len(w.order) > 0 {
			args = append(args, "preferred", w.order[0])
		}
		if err != nil {
			args = append(args, "err", err)
		}
		d.warn(msg, args...)
	}
	unix.Close(w.fd)
}

// handNow tries to hand w to in at once. When the result is sent or
// failed, w's connection is handed off or closed and counted; busy and
// gone (with its error) leave it to the caller.
func (d *Dispatcher) handNow(in *inst, w *waiting, miss bool) (sendResult, error) {
	r, err := d.trySend(in, &w.h, w.fd)
	switch r {
	case sent:
		d.handed(in, miss)
		unix.Close(w.fd)
	case failed:
		d.sendFailed(w, in.id, err)
	}
	return r, err
}

func (d *Dispatcher) sendFailed(w *waiting, id int, err error) {
	d.sendErrs.Add(1)
	d.warn("hand-off of one connection failed: connection closed", "instance", id, "listener", w.h.Name, "err", err)
	unix.Close(w.fd)
}

// enqueueMode says which bounds a connection queued for an instance is
// held to.
type enqueueMode int

const (
	enqNew   enqueueMode = iota // not held yet: MaxQueued and MaxQueuedTotal
	enqMove                     // moves from another queue with its slot in MaxQueuedTotal: MaxQueued
	enqForce                    // moves, and must go somewhere (its instance left): none
)

// enqueue queues w for in (its own queue if w.idx is 0), starting in's
// drainer if needed. It reports false when the bounds of mode are
// reached or Serve has ended.
func (d *Dispatcher) enqueue(in *inst, w *waiting, mode enqueueMode) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if d.stopped.Load() || mode != enqForce && len(in.own)+len(in.fallback) >= d.opts.MaxQueued {
		return false
	}
	if mode == enqNew && d.queued.Add(1) > int64(d.opts.MaxQueuedTotal) {
		d.queued.Add(-1)
		return false
	}
	w.deadline = time.Now().Add(d.opts.QueueWait)
	if w.deadline.After(w.until) {
		w.deadline = w.until
	}
	if w.idx == 0 {
		in.own = append(in.own, w)
		in.nOwn.Add(1)
	} else {
		in.fallback = append(in.fallback, w)
	}
	in.nAll.Add(1)
	if !in.draining {
		in.draining = true
		d.drainers.Add(1)
		go d.drain(in)
	}
	return true
}

// pop removes the head of in's own (or fallback) queue; in.mu is held.
// Only the drainer removes, and only heads.
func (in *inst) pop(own bool) *waiting {
	q := &in.fallback
	if own {
		q = &in.own
		in.nOwn.Add(-1)
	}
	in.nAll.Add(-1)
	w := (*q)[0]
	(*q)[0] = nil
	*q = (*q)[1:]
	return w
}

// done removes the head of in's own (or fallback) queue, giving its slot
// in MaxQueuedTotal back unless it moved with the connection, and wakes
// the held connections: in has room now.
func (d *Dispatcher) done(in *inst, own, release bool) {
	in.mu.Lock()
	in.pop(own)
	in.mu.Unlock()
	if release {
		d.queued.Add(-1)
	}
	d.room()
}

// drain hands in's waiting connections over, own ones first, as its
// queue makes room, waiting for writability without any lock; a
// connection that waited QueueWait goes on to its next instance if one
// has room (expire). It returns when nothing waits, or after closing what
// waits once Serve has ended.
func (d *Dispatcher) drain(in *inst) {
	defer d.drainers.Done()
	for {
		in.mu.Lock()
		if len(in.own)+len(in.fallback) == 0 || d.stopped.Load() {
			left := append(in.own, in.fallback...)
			d.queued.Add(-int64(len(left)))
			in.own, in.fallback = nil, nil
			in.nOwn.Store(0)
			in.nAll.Store(0)
			in.draining = false
			in.mu.Unlock()
			d.lastChance(left)
			return
		}
		now := time.Now()
		// An instance that left the set (stopped, failed, scaled away)
		// loses its hand-off socket soon, with what is queued in it: what
		// waits for it goes on at once rather than into that socket.
		left := !d.Up.Snapshot().Contains(in.id)
		var expired *waiting
		own := false
		switch {
		case len(in.own) > 0 && (left || !now.Before(in.own[0].deadline)):
			expired, own = in.own[0], true
		case len(in.fallback) > 0 && (left || !now.Before(in.fallback[0].deadline)):
			expired = in.fallback[0]
		}
		if expired != nil {
			in.mu.Unlock()
			if !left {
				d.queueFull.Add(1)
			}
			d.expire(in, expired, own, left)
			continue
		}
		var w *waiting
		own = len(in.own) > 0
		deadline := time.Time{}
		if own {
			w = in.own[0]
			deadline = w.deadline
		}
		if len(in.fallback) > 0 {
			if w == nil {
				w = in.fallback[0]
			}
			if deadline.IsZero() || in.fallback[0].deadline.Before(deadline) {
				deadline = in.fallback[0].deadline
			}
		}
		in.mu.Unlock()
		r, err := d.trySend(in, &w.h, w.fd)
		switch r {
		case busy:
			d.waitRoom(in, deadline)
		case sent:
			in.lastSent.Store(time.Now().UnixNano())
			d.done(in, own, true)
			d.handed(in, w.idx > 0)
			unix.Close(w.fd)
		case failed:
			d.done(in, own, true)
			d.sendFailed(w, in.id, err)
		default: // in's socket is gone
			d.expire(in, w, own, true)
		}
	}
}

// expire moves w, the head of in's own (or fallback) queue, on: to the
// next instance of its order that can take it now or queue it within its
// MaxQueued (its slot in MaxQueuedTotal moves with it), then to those of
// its order as the set is now. When none can, every instance is short of
// room too: w keeps its place for another QueueWait rather than be
// closed, a connection accepted for nothing; after MaxWait it is closed.
// When in cannot take it any more (force: it left the set, or its socket
// is gone), w goes to the first other instance up, past that one's
// MaxQueued if need be: it is already held, the descriptor limit is kept.
func (d *Dispatcher) expire(in *inst, w *waiting, own, force bool) {
	up := d.Up.Snapshot()
	fresh := w.rk.order(up, nil)
	for _, o := range []struct {
		order []int
		from  int
	}{{w.order, w.idx + 1}, {fresh, 0}} {
		switch d.moveAlong(in, w, up, o.order, o.from) {
		case moveQueued:
			d.done(in, own, false)
			return
		case moveDone:
			d.done(in, own, true)
			return
		}
	}
	if i := slices.Index(fresh, in.id); i >= 0 {
		w.order, w.idx = fresh, i
	}
	now := time.Now()
	if !now.Before(w.until) {
		d.done(in, own, true)
		d.closeWaiting(w, "every instance's hand-off queue stayed full for MaxWait: connection closed", nil)
		return
	}
	if !force {
		// w stays at the head, the next to go when in makes room: sent
		// to the back, a connection in a queue that takes longer than
		// QueueWait to drain (a storm) would go round for ever. The
		// others whose QueueWait ended behind it had the same instances
		// to try, and wait another too.
		if n := d.renew(in, now); n > 1 {
			d.queueFull.Add(uint64(n - 1)) // drain counted w's
		}
		return
	}
	for i, id := range fresh {
		if id == in.id {
			continue
		}
		w.order, w.idx = fresh, i
		if d.enqueue(d.inst(id), w, enqForce) {
			d.done(in, own, false)
		}
		return // else Serve ended: the drainer hands w over last
	}
	d.done(in, own, true)
	d.closeWaiting(w, "no other instance is up to take a connection whose instance left or is unreachable: connection closed", nil)
}

// renew gives every connection of in's queues whose QueueWait has ended
// another (within its MaxWait), and returns how many it renewed.
func (d *Dispatcher) renew(in *inst, now time.Time) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	next := now.Add(d.opts.QueueWait)
	n := 0
	for _, q := range [][]*waiting{in.own, in.fallback} {
		for _, w := range q {
			if now.Before(w.deadline) {
				continue
			}
			n++
			w.deadline = next
			if w.deadline.After(w.until) {
				w.deadline = w.until
			}
		}
	}
	return n
}

// moveResult is what moveAlong did with a connection.
type moveResult int

const (
	moveNone   moveResult = iota // nothing: no instance had room
	moveQueued                   // queued for another instance, with its slot
	moveDone                     // handed off, or failed and closed
)

// moveAlong tries the instances of order from index from on, but from
// itself, for w (still at the head of from's queue, and counted there):
// one with nothing waiting and room takes it, else the first whose queue
// is below MaxQueued. It never blocks.
func (d *Dispatcher) moveAlong(from *inst, w *waiting, up *Set, order []int, start int) moveResult {
	for i := start; i < len(order); i++ {
		id := order[i]
		if id == from.id || !up.Contains(id) {
			continue
		}
		in := d.inst(id)
		behind := in.nOwn.Load()
		if i > 0 {
			behind = in.nAll.Load()
		}
		if behind == 0 {
			switch r, _ := d.handNow(in, w, i > 0); r {
			case sent, failed:
				return moveDone
			case gone:
				continue
			}
		}
		idx, ord := w.idx, w.order
		w.order, w.idx = order, i
		if d.enqueue(in, w, enqMove) {
			return moveQueued
		}
		w.order, w.idx = ord, idx
	}
	return moveNone
}

// stopWait bounds lastChance's wait, so that a long QueueWait never holds
// up a supervisor's stop.
const stopWait = time.Second

// lastChance hands the connections still waiting when Serve ends to any
// instance of their order that has room, the next ones first and their
// own last, waiting for room at most QueueWait (and stopWait); what is
// left is closed,
// counted as dropped. Serve ends when the supervisor stops or restarts,
// and the connections it held were lost with it: at 400 connections a
// second for an instance whose worker is stuck, about 80 clients (those in
// QueueWait) got a reset at every supervisor restart although the other
// instances had room. One attempt each is not enough: so many at once fill
// the other instances' kernel queues (max_dgram_qlen, often 10) before
// their workers read.
func (d *Dispatcher) lastChance(ws []*waiting) {
	deadline := time.Now().Add(min(d.opts.QueueWait, stopWait))
	for len(ws) > 0 {
		left := ws[:0]
		for _, w := range ws {
			if !d.tryEach(w) {
				left = append(left, w)
			}
		}
		ws = left
		if len(ws) == 0 || !d.waitAnyRoom(ws, deadline) {
			break
		}
	}
	for _, w := range ws {
		d.dropped.Add(1)
		unix.Close(w.fd)
	}
}

// tryEach makes one non-blocking attempt at each instance of w's order,
// from the one after w.idx on, and reports whether w is done with (handed
// off, or failed and closed).
func (d *Dispatcher) tryEach(w *waiting) bool {
	up := d.Up.Snapshot()
	for i := range len(w.order) {
		id := w.order[(w.idx+1+i)%len(w.order)]
		if !up.Contains(id) {
			continue
		}
		in := d.inst(id)
		r, err := d.trySend(in, &w.h, w.fd)
		switch r {
		case sent:
			d.handed(in, in.id != w.order[0])
			unix.Close(w.fd)
			return true
		case failed:
			d.sendFailed(w, in.id, err)
			return true
		}
	}
	return false
}

// waitAnyRoom waits until the hand-off socket of an instance in the orders
// of ws is writable, and reports false when deadline passed first or none
// can be waited on.
func (d *Dispatcher) waitAnyRoom(ws []*waiting, deadline time.Time) bool {
	var fds []unix.PollFd
	seen := map[int]bool{}
	for _, w := range ws {
		for _, id := range w.order {
			if seen[id] {
				continue
			}
			seen[id] = true
			ic, err := d.conn(d.inst(id))
			if err != nil {
				continue
			}
			defer ic.release()
			fds = append(fds, unix.PollFd{Fd: int32(ic.fd), Events: unix.POLLOUT})
		}
	}
	if len(fds) == 0 {
		return false
	}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		n, err := unix.Poll(fds, int((left+time.Millisecond-1)/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// waitRoom waits until in's hand-off socket is writable (its queue has
// room, or the peer is gone and a send will say so), deadline passes or
// Serve ends.
func (d *Dispatcher) waitRoom(in *inst, deadline time.Time) {
	ic, err := d.conn(in)
	if err != nil {
		return // trySend will report it
	}
	defer ic.release()
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		fds := [2]unix.PollFd{{Fd: int32(ic.fd), Events: unix.POLLOUT}, {Fd: int32(d.wake), Events: unix.POLLIN}}
		// Round up: a poll that ends a little early would spin.
		n, err := unix.Poll(fds[:], int((left+time.Millisecond-1)/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			return
		}
	}
}

// proxyBudget bounds the connections whose PROXY header is being read: in
// all, and per peer address. Per address rather than per ProxyFrom entry:
// an entry may be a whole subnet of load balancers, and one of them must
// not spend its siblings' share.
type proxyBudget struct {
	mu           sync.Mutex
	total        int
	max, perPeer int
	byPeer       map[netip.Addr]int
}

// take reserves one slot for peer; the zero address (unix-socket peers,
// which cannot be told apart) is bounded by the total alone.
func (b *proxyBudget) take(peer netip.Addr) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.total >= b.max {
		return false
	}
	if peer.IsValid() {
		if b.byPeer[peer] >= b.perPeer {
			return false
		}
		b.byPeer[peer]++
	}
	b.total++
	return true
}

func (b *proxyBudget) give(peer netip.Addr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total--
	if peer.IsValid() {
		if b.byPeer[peer] <= 1 {
			delete(b.byPeer, peer)
		} else {
			b.byPeer[peer]--
		}
	}
}

// acceptProxied accepts connections whose first bytes are a PROXY header.
// A peer outside trust (nil for unix sockets: no check) is closed before
// any byte is read; each header is then read in its own goroutine, under
// a deadline and within its peer's budget, so a slow client never holds up
// the others.
func (d *Dispatcher) acceptProxied(ctx context.Context, name string, trust []netip.Prefix, nl net.Listener, proxied *sync.WaitGroup) error {
	backoff := time.Duration(0)
	for {
		d.awaitRoom(ctx) // backpressure
		c, err := nl.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if err := d.acceptFailed(ctx, name, err, &backoff); err != nil {
				return err
			}
			continue
		}
		backoff = 0
		peer := peerAddr(c)
		if trust != nil && !trusted(trust, peer) {
			d.proxyUntrusted.Add(1)
			d.warn("PROXY header from an untrusted peer refused: connection closed before reading", "listener", name, "peer", peer)
			c.Close()
			continue
		}
		if !d.budget.take(peer) {
			d.proxyBusy.Add(1)
			d.warn("too many connections of this peer waiting for their PROXY header: connection closed", "listener", name, "peer", peer)
			c.Close()
			continue
		}
		proxied.Add(1)
		go func() {
			defer proxied.Done()
			d.proxied(ctx, name, c, func() { d.budget.give(peer) })
		}()
	}
}

// proxied reads c's PROXY header and dispatches c. It calls read once the
// header is read (or refused), and for key affinity the request's head
// peeked: the budget bounds headers (and heads) being read; a connection
// held afterwards for want of room (hold) is bounded by the accept loop,
// which accepts no more while one is (awaitRoom).
func (d *Dispatcher) proxied(ctx context.Context, name string, c net.Conn, read func()) {
	defer c.Close()
	ph, err := ReadProxyHeader(ctx, c, d.opts.Proxy)
	if err != nil {
		read()
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
	rk := routeKey{bucket: Bucket(key)}
	switch {
	case d.opts.Affinity.Spec.IsKey():
		// The PROXY header is consumed: what follows is the request. The
		// peek keeps the connection's slot in the pending-header budget,
		// which so bounds slow requests per peer as it bounds headers.
		r, found := d.peekProxied(c, key)
		rk = d.route(r, found, key)
	case d.opts.Affinity.BalanceFactor > 1:
		rk = d.bounded(d.Up.Snapshot(), rk)
	}
	read()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		d.dropped.Add(1)
		return
	}
	var held *waiting
	rc.Control(func(fd uintptr) {
		// dispatch closes the descriptor it is given; give it a copy so
		// that c keeps its own until the deferred Close.
		nfd, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			d.dropped.Add(1)
			return
		}
		_, held = d.dispatchTo(nfd, rk, &h, nil)
	})
	if held != nil {
		// This reader holds it until an instance has room; the accept
		// loop accepts no more meanwhile (awaitRoom).
		d.hold(ctx, held)
	}
}

// peerAddr returns c's peer IP address, unmapped and without zone, or the
// zero address for a unix socket.
func peerAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return ap.Addr().Unmap().WithZone("")
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
