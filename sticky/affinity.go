package sticky

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/affinity"
	"github.com/powerhouse/powerhouse/handoff"
)

// AffinityOptions say how a dispatcher places connections when it does
// not go by the client's address alone. The zero value is source affinity
// without a load bound: today's path, unchanged.
type AffinityOptions struct {
	// Spec is what to route by: affinity.Source (the zero value) or a key
	// in the first HTTP/1.x request, which every listener of the
	// dispatcher then peeks (see the package documentation: Affinity keys).
	Spec affinity.Spec
	// TrustedProxies are the peers whose X-Forwarded-For is honoured, and
	// the hops skipped in it (Spec "header:X-Forwarded-For").
	TrustedProxies []netip.Prefix
	// Spread places a connection without a key on the instance with the
	// fewest open connections rather than by its address.
	Spread bool
	// BalanceFactor, when above 1, bounds each instance's open connections
	// to BalanceFactor times the average: a connection whose instance holds
	// more goes to the next in its rendezvous order (Stats.Spills).
	// Connections routed by a session id's instance tag are never moved.
	BalanceFactor float64
	// PeekTimeout bounds the wait for a request head (default 1s); a
	// connection that sends none within it goes by the fallback.
	PeekTimeout time.Duration
	// MaxPeeking bounds the connections whose head is awaited at once
	// (default 4096); past it a new connection goes by the fallback at
	// once (PeekRejects "busy").
	MaxPeeking int
}

// Reasons a peek found no key, the keys of Stats.PeekRejects.
const (
	PeekTimeout   = "timeout"   // no complete head within PeekTimeout
	PeekTooLarge  = "too_large" // no complete head within affinity.MaxHead bytes
	PeekMalformed = "malformed" // not an HTTP/1.x request head (TLS, another protocol)
	PeekClosed    = "closed"    // the client closed or reset before a complete head
	PeekBusy      = "busy"      // MaxPeeking connections were being peeked already
)

var peekReasons = [...]string{PeekTimeout, PeekTooLarge, PeekMalformed, PeekClosed, PeekBusy}

// affinityStats are the key path's counters.
type affinityStats struct {
	peeking                                             atomic.Int64  // heads awaited now
	waited                                              atomic.Uint64 // connections that went to the epoll loop
	keyRouted, tagRouted, fallbacks, spills, xffIgnored atomic.Uint64
	rejects                                             [len(peekReasons)]atomic.Uint64
}

func (a *affinityStats) reject(reason string) {
	for i, r := range peekReasons {
		if r == reason {
			a.rejects[i].Add(1)
		}
	}
}

// Closed records that instance's worker closed n connections it was
// handed (the library's report.Closed): with what was handed off, it gives
// the instance's open connections, which balance_factor bounds and
// fallback = "spread" compares. A worker that does not report is counted
// as holding every connection it was handed.
func (d *Dispatcher) Closed(instance int, n uint64) {
	d.inst(instance).closed.Add(n)
}

// Forget sets instance's open connections to zero: its process ended,
// and every connection it held with it, whether its worker reported them
// closed or not (a killed worker reports nothing). The supervisor calls it
// when an instance's only process ends. The closed count takes the
// difference, so it stays monotonic.
func (d *Dispatcher) Forget(instance int) {
	in := d.inst(instance)
	for {
		h, c := in.handed.Load(), in.closed.Load()
		if c >= h || in.closed.CompareAndSwap(c, h) {
			return
		}
	}
}

// open returns in's open connections: handed off less closed, never
// below zero (a report may overtake the count of its hand-off).
func (in *inst) open() uint64 {
	h, c := in.handed.Load(), in.closed.Load()
	if c >= h {
		return 0
	}
	return h - c
}

// route returns where a connection belongs, from the key r found (or not)
// and its client address, and counts how it was routed. found is false
// when the connection has no key (it goes by the fallback).
func (d *Dispatcher) route(r affinity.Result, found bool, peer netip.Addr) routeKey {
	a := &d.opts.Affinity
	up := d.Up.Snapshot()
	if found && r.Key != "" {
		if id, ok := affinity.InstanceOfID(r.Key); ok && up.Contains(id) {
			d.aff.tagRouted.Add(1)
			return routeKey{bucket: KeyBucket(r.Key), first: id}
		}
		d.aff.keyRouted.Add(1)
		rk := routeKey{bucket: KeyBucket(r.Key)}
		if r.Addr.IsValid() {
			rk.bucket = Bucket(r.Addr)
		}
		return d.bounded(up, rk)
	}
	d.aff.fallbacks.Add(1)
	rk := routeKey{bucket: Bucket(peer)}
	if a.Spread {
		rk.first = d.leastOpen(up, rk)
		return rk
	}
	return d.bounded(up, rk)
}

// leastOpen returns the instance of up with the fewest open connections,
// the earliest in rk's order among equals (0 when none is up).
func (d *Dispatcher) leastOpen(up *Set, rk routeKey) int {
	var buf [64]int
	best, bestOpen := 0, uint64(0)
	for _, id := range rk.order(up, buf[:0]) {
		if o := d.inst(id).open(); best == 0 || o < bestOpen {
			best, bestOpen = id, o
		}
	}
	return best
}

// bounded applies consistent hashing with bounded loads (Mirrokni,
// Thorup, Zadimoghaddam): the connection goes to the first instance of its
// order whose open connections are below BalanceFactor times the average
// (counting this one); moving past the first is a spill.
func (d *Dispatcher) bounded(up *Set, rk routeKey) routeKey {
	f := d.opts.Affinity.BalanceFactor
	if f <= 1 || up.Len() < 2 {
		return rk
	}
	var buf [64]int
	order := rk.order(up, buf[:0])
	total := uint64(1)
	for _, id := range order {
		total += d.inst(id).open()
	}
	limit := f * float64(total) / float64(len(order))
	for i, id := range order {
		if float64(d.inst(id).open()+1) <= limit {
			if i > 0 {
				d.aff.spills.Add(1)
				rk.first = id
			}
			return rk
		}
	}
	return rk
}

// headPeeker waits for the first request head of the connections of
// key-affinity listeners and dispatches each once its key is known. The
// connections stay blocking and out of Go's netpoller (their file status
// flags are shared with the worker that receives them): one goroutine
// waits on an epoll instance of its own, edge-triggered so that a head
// that is still incomplete wakes it only when more arrives, and peeks
// with recv(MSG_PEEK|MSG_DONTWAIT), so every byte stays for the worker.
type headPeeker struct {
	d     *Dispatcher
	epfd  int
	wake  int // eventfd: new work or stop
	done  chan struct{}
	ctx   context.Context
	holds *sync.WaitGroup

	mu    sync.Mutex
	conns map[int32]*peekConn
	fifo  []*peekConn // by deadline, which is accept order
	stop  bool
	buf   [affinity.MaxHead]byte
}

type peekConn struct {
	fd       int
	peer     netip.Addr
	name     string
	deadline time.Time
	finished bool
	// scanned is how many bytes of the head have been seen: a wake-up
	// that completes no line cannot change what the head says (but its
	// size), so it is not parsed again. A client trickling its head a byte
	// at a time costs a peek and a memchr over the new bytes per wake-up,
	// not a parse of the whole head.
	scanned int
}

func (d *Dispatcher) newPeeker(ctx context.Context, holds *sync.WaitGroup) (*headPeeker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("dispatch: epoll: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("dispatch: eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("dispatch: epoll: %w", err)
	}
	p := &headPeeker{d: d, epfd: epfd, wake: wake, done: make(chan struct{}), ctx: ctx, holds: holds, conns: map[int32]*peekConn{}}
	go p.loop()
	return p, nil
}

// add takes over fd, a connection just accepted on listener name: it is
// dispatched at once when its head is already there, else when it comes,
// or by the fallback after PeekTimeout.
func (p *headPeeker) add(fd int, peer netip.Addr, name string) {
	d := p.d
	// Most clients send their request with or right after the handshake:
	// try before paying for epoll.
	if p.tryNow(fd, peer, name) {
		return
	}
	pc := &peekConn{fd: fd, peer: peer, name: name, deadline: time.Now().Add(d.opts.Affinity.PeekTimeout)}
	p.mu.Lock()
	if p.stop || len(p.conns) >= d.opts.Affinity.MaxPeeking {
		p.mu.Unlock()
		d.aff.reject(PeekBusy)
		p.dispatch(fd, affinity.Result{}, false, peer, name)
		return
	}
	// Edge-triggered: data that came between tryNow and here is reported
	// too, as an initial edge (EPOLL_CTL_ADD reports current readiness).
	// Under the lock, so that the loop cannot finish pc (and its
	// descriptor) before it is in epoll.
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)})
	wasEmpty := false
	if err == nil {
		p.conns[int32(fd)] = pc
		d.aff.peeking.Add(1)
		d.aff.waited.Add(1)
		wasEmpty = len(p.fifo) == 0
		p.fifo = append(p.fifo, pc)
	}
	p.mu.Unlock()
	if err != nil {
		d.warn("epoll: connection dispatched without its key", "listener", name, "err", err)
		d.aff.reject(PeekBusy)
		p.dispatch(fd, affinity.Result{}, false, peer, name)
		return
	}
	if wasEmpty {
		p.kick()
	}
}

func (p *headPeeker) kick() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(p.wake, one[:])
}

// tryNow peeks fd once, from the accept loop, into a small buffer of its
// own, and dispatches it when that settles its key.
func (p *headPeeker) tryNow(fd int, peer netip.Addr, name string) bool {
	var buf [1024]byte
	n, _ := peekNow(fd, buf[:])
	if n <= 0 {
		return false
	}
	r, err := affinity.Extract(p.d.opts.Affinity.Spec, buf[:n], peer, affinity.Options{TrustedProxies: p.d.opts.Affinity.TrustedProxies})
	switch {
	case err == nil:
		p.found(fd, r, peer, name)
		return true
	case errors.Is(err, affinity.ErrMalformed):
		p.d.aff.reject(PeekMalformed)
		p.dispatch(fd, affinity.Result{}, false, peer, name)
		return true
	}
	return false // incomplete: wait (a head longer than buf is read in full later)
}

func (p *headPeeker) found(fd int, r affinity.Result, peer netip.Addr, name string) {
	if r.XFFIgnored {
		p.d.aff.xffIgnored.Add(1)
	}
	p.dispatch(fd, r, r.Key != "", peer, name)
}

// dispatch routes fd and hands it off; a connection no instance can take
// now is held by a goroutine of its own (the accept loops wait meanwhile:
// awaitRoom), so the headPeeker never blocks.
func (p *headPeeker) dispatch(fd int, r affinity.Result, found bool, peer netip.Addr, name string) {
	d := p.d
	rk := d.route(r, found, peer)
	h := handoff.Header{Name: name}
	var order [64]int
	if _, held := d.dispatchTo(fd, rk, &h, order[:0]); held != nil {
		p.holds.Add(1)
		go func() {
			defer p.holds.Done()
			d.hold(p.ctx, held)
		}()
	}
}

// peekNow copies what fd has received into buf without consuming it, and
// without blocking.
func peekNow(fd int, buf []byte) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(n), nil
	}
}

// loop waits for heads and deadlines until stopped; then it dispatches
// what it still waits for by the fallback (nothing accepted is lost to a
// supervisor restart) and closes its descriptors.
func (p *headPeeker) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		timeout := p.nextTimeout()
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if err != nil && err != unix.EINTR {
			p.d.warn("epoll_wait failed", "err", err)
		}
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == int32(p.wake) {
				var b [8]byte
				unix.Read(p.wake, b[:])
				continue
			}
			p.mu.Lock()
			pc := p.conns[ev.Fd]
			p.mu.Unlock()
			if pc != nil {
				p.peekHead(pc, ev.Events)
			}
		}
		p.expire(time.Now())
		p.mu.Lock()
		stop := p.stop
		p.mu.Unlock()
		if stop {
			p.expire(time.Time{})
			unix.Close(p.epfd)
			unix.Close(p.wake)
			return
		}
	}
}

// nextTimeout is the milliseconds until the oldest connection's deadline,
// rounded up; -1 when none waits.
func (p *headPeeker) nextTimeout() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.fifo) > 0 && p.fifo[0].finished {
		p.fifo[0] = nil
		p.fifo = p.fifo[1:]
	}
	if len(p.fifo) == 0 {
		return -1
	}
	return max(0, int((time.Until(p.fifo[0].deadline)+time.Millisecond-1)/time.Millisecond))
}

// expire dispatches by the fallback every connection whose deadline is
// not after now (all of them for the zero time: stopping).
func (p *headPeeker) expire(now time.Time) {
	for {
		p.mu.Lock()
		for len(p.fifo) > 0 && p.fifo[0].finished {
			p.fifo[0] = nil
			p.fifo = p.fifo[1:]
		}
		if len(p.fifo) == 0 || !now.IsZero() && p.fifo[0].deadline.After(now) {
			p.mu.Unlock()
			return
		}
		pc := p.fifo[0]
		p.mu.Unlock()
		p.d.aff.reject(PeekTimeout)
		p.finish(pc, affinity.Result{}, false)
	}
}

// peekHead reads what pc's connection has received so far and dispatches it
// once the key is known or cannot be.
func (p *headPeeker) peekHead(pc *peekConn, ev uint32) {
	n, err := peekNow(pc.fd, p.buf[:])
	switch {
	case err == unix.EAGAIN:
		return
	case err != nil || n == 0:
		// Reset, or closed before sending anything: there is nothing for
		// a worker to serve.
		p.d.aff.reject(PeekClosed)
		p.remove(pc)
		unix.Close(pc.fd)
		return
	}
	hup := ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	if !hup && n < len(p.buf) && pc.scanned > 0 && n >= pc.scanned && bytes.IndexByte(p.buf[pc.scanned:n], '\n') < 0 {
		pc.scanned = n
		return
	}
	pc.scanned = n
	r, xerr := affinity.Extract(p.d.opts.Affinity.Spec, p.buf[:n], pc.peer, affinity.Options{TrustedProxies: p.d.opts.Affinity.TrustedProxies})
	switch {
	case xerr == nil:
		if r.XFFIgnored {
			p.d.aff.xffIgnored.Add(1)
		}
		p.finish(pc, r, r.Key != "")
	case errors.Is(xerr, affinity.ErrMalformed):
		p.d.aff.reject(PeekMalformed)
		p.finish(pc, affinity.Result{}, false)
	case n >= len(p.buf):
		p.d.aff.reject(PeekTooLarge)
		p.finish(pc, affinity.Result{}, false)
	case hup:
		// Half a head and the client stopped sending: the worker gets
		// what there is.
		p.d.aff.reject(PeekClosed)
		p.finish(pc, affinity.Result{}, false)
	}
}

// remove forgets pc: out of epoll (before its descriptor is closed or
// handed on, so a reused number is never reported for it) and the table.
func (p *headPeeker) remove(pc *peekConn) {
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, pc.fd, nil)
	p.mu.Lock()
	delete(p.conns, int32(pc.fd))
	pc.finished = true
	p.d.aff.peeking.Add(-1)
	p.mu.Unlock()
}

func (p *headPeeker) finish(pc *peekConn, r affinity.Result, found bool) {
	p.remove(pc)
	p.dispatch(pc.fd, r, found, pc.peer, pc.name)
}

// close stops the loop once the accept loops have ended, after it has
// dispatched what it waits for.
func (p *headPeeker) close() {
	p.mu.Lock()
	p.stop = true
	p.mu.Unlock()
	p.kick()
	<-p.done
}

// acceptKeyLoop accepts on a key-affinity listener as acceptLoop does, and
// gives each connection to the headPeeker. Since the headPeeker holds a connection
// no instance can take in a goroutine of its own, the loop waits for room
// before each accept (awaitRoom), as the PROXY loop does.
func (d *Dispatcher) acceptKeyLoop(ctx context.Context, name string, f *os.File, p *headPeeker) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("dispatch: listener %s: %w", name, err)
	}
	backoff := time.Duration(0)
	beat := d.newBeat()
	for {
		d.awaitRoom(ctx)
		var nfd int
		var peer netip.Addr
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			// Blocking, as on the plain path: the worker's to configure.
			nfd, peer, aerr = accept(int(fd))
			return aerr != unix.EAGAIN
		})
		if again, done, err := d.acceptEnded(ctx, name, err, aerr, &backoff); done {
			return err
		} else if again {
			continue
		}
		beat.Add(1)
		p.add(nfd, peer, name)
		beat.Add(1)
	}
}

// peekProxied waits for the request head of c, a PROXY connection whose
// header was read (so c is in Go's netpoller already, as every PROXY
// connection is), within PeekTimeout, and returns its key. client is the
// address the PROXY header gave (the peer whose X-Forwarded-For is
// trusted or not).
func (d *Dispatcher) peekProxied(c net.Conn, client netip.Addr) (affinity.Result, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		d.aff.reject(PeekMalformed)
		return affinity.Result{}, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		d.aff.reject(PeekClosed)
		return affinity.Result{}, false
	}
	c.SetReadDeadline(time.Now().Add(d.opts.Affinity.PeekTimeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, affinity.MaxHead)
	var r affinity.Result
	reason := ""
	err = rc.Read(func(fd uintptr) bool {
		n, err := peekNow(int(fd), buf)
		switch {
		case err == unix.EAGAIN:
			return false
		case err != nil || n == 0:
			reason = PeekClosed
			return true
		}
		var xerr error
		r, xerr = affinity.Extract(d.opts.Affinity.Spec, buf[:n], client, affinity.Options{TrustedProxies: d.opts.Affinity.TrustedProxies})
		switch {
		case xerr == nil:
		case errors.Is(xerr, affinity.ErrMalformed):
			reason = PeekMalformed
		case n >= len(buf):
			reason = PeekTooLarge
		case peerShutdown(int(fd)):
			reason = PeekClosed
		default:
			return false // wait for more (the poller is edge-triggered)
		}
		return true
	})
	if err != nil && reason == "" {
		reason = PeekTimeout
	}
	if reason != "" {
		d.aff.reject(reason)
		return affinity.Result{}, false
	}
	if r.XFFIgnored {
		d.aff.xffIgnored.Add(1)
	}
	return r, r.Key != ""
}
