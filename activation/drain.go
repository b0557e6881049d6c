package activation

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// DrainResult says what became of a server's connections while it
// drained: from the start of the drain (SIGTERM) to its deadline, 90% of
// the stop timeout.
type DrainResult struct {
	// Drained counts the connections that ended before the deadline:
	// requests that finished, idle keep-alives closed by the server,
	// hijacked connections (WebSockets) and long-polls that ended on
	// their own, including connections taken during the drain.
	Drained uint64
	// Cut counts the connections still open at the deadline (or at a
	// second SIGTERM), which were closed.
	Cut uint64
}

// Draining returns a channel that is closed when the server that made ctx
// starts to drain: ctx is a request's context (http.Request.Context) or
// any context derived from it, of a server run by Serve or prepared with
// Track. A long-poll handler returns early on it; a WebSocket handler
// tells its client to reconnect (the new process is ready by then) and
// closes. For any other ctx it returns nil, a channel that never fires, so
// a select on it falls through to its other cases.
func Draining(ctx context.Context) <-chan struct{} {
	if t, ok := ctx.Value(trackerKey{}).(*Tracker); ok {
		return t.draining
	}
	return nil
}

// trackerKey is the context key of a server's *Tracker, set in the
// server's BaseContext so that every request context carries it.
type trackerKey struct{}

// connKey is the context key of a connection's *connEntry, set by the
// server's ConnContext.
type connKey struct{}

// connEntry is what a request knows of its connection: the connection as
// Accept returned it (the key of the tracker's maps), and whether a
// request of it reached the handler.
type connEntry struct {
	c       net.Conn
	handled atomic.Bool
}

// Tracker follows the connections of one http.Server so that its drain
// can wait for them and count them: requests in flight, idle keep-alives,
// and hijacked connections (WebSockets), which http.Server.Shutdown does
// not wait for. Serve uses one by itself; a worker that runs its own
// http.Server loop makes one with Track before the server serves and
// calls its Shutdown on SIGTERM.
type Tracker struct {
	srv      *http.Server
	sc       ServeConfig
	draining chan struct{}
	start    sync.Once
	closed   func() // Serve's report of a closed connection; nil otherwise

	mu       sync.Mutex
	open     int                   // connections in StateNew, StateActive or StateIdle
	fresh    map[net.Conn]bool     // accepted, no request handled yet
	hijacked map[net.Conn]struct{} // hijacked, not seen closed yet
	pruneAt  int                   // prune hijacked when it grows to this
	inAccept int                   // Accept calls inside Serve's listener
	accepted int                   // returned by Serve's listener, not yet seen by ConnState
	started  bool                  // the drain started: closes count as drained
	frozen   bool                  // the drain ended: nothing counts any more
	ended    uint64                // connections that ended since the drain started
	changed  chan struct{}         // closed and replaced when a count shrinks
}

// Track prepares srv for a drain by Tracker.Shutdown, with the settings of
// sc (StopTimeout, ReportSocket, OnDrain); see the package-level Track.
func (sc *ServeConfig) Track(srv *http.Server) *Tracker {
	t := &Tracker{srv: srv, sc: *sc, draining: make(chan struct{}), pruneAt: 64}
	userState, userConnCtx, userBase := srv.ConnState, srv.ConnContext, srv.BaseContext
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		t.track(c, st)
		if userState != nil {
			userState(c, st)
		}
	}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if userConnCtx != nil {
			ctx = userConnCtx(ctx, c)
			if ctx == nil {
				return nil // net/http panics and names the hook: the caller's
			}
		}
		return context.WithValue(ctx, connKey{}, &connEntry{c: c})
	}
	srv.BaseContext = func(l net.Listener) context.Context {
		ctx := context.Background()
		if userBase != nil {
			if ctx = userBase(l); ctx == nil {
				return nil
			}
		}
		return context.WithValue(ctx, trackerKey{}, t)
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Once a request reaches the handler, Shutdown waits for it.
		// Before, net/http drops a request it finishes reading after
		// Shutdown began, unanswered: see drainNew.
		if e, ok := r.Context().Value(connKey{}).(*connEntry); ok && !e.handled.Load() {
			e.handled.Store(true)
			t.handled(e.c)
		}
		h.ServeHTTP(w, r)
	})
	return t
}

// Track prepares srv for Tracker.Shutdown, for a worker that runs its own
// http.Server loop rather than Serve: it makes srv's request contexts
// carry the Draining channel and follows srv's connections, hijacked ones
// included. Call it before srv serves, and not for a server given to
// Serve (Serve does it). It wraps srv.ConnState, srv.ConnContext,
// srv.BaseContext and srv.Handler, each calling the caller's own (the
// handler being http.DefaultServeMux when srv.Handler is nil). Settings
// come from the environment as for Serve; use ServeConfig.Track for
// others.
func Track(srv *http.Server) *Tracker { return (&ServeConfig{}).Track(srv) }

func (t *Tracker) track(c net.Conn, st http.ConnState) {
	gone := 0
	t.mu.Lock()
	switch st {
	case http.StateNew:
		if t.accepted > 0 {
			t.accepted--
		}
		if t.fresh == nil {
			t.fresh = map[net.Conn]bool{}
		}
		t.fresh[c] = true
		t.open++
	case http.StateHijacked:
		delete(t.fresh, c)
		t.open--
		if t.hijacked == nil {
			t.hijacked = map[net.Conn]struct{}{}
		}
		t.hijacked[c] = struct{}{}
		if len(t.hijacked) >= t.pruneAt {
			// Forget those closed since: without this a worker serving
			// WebSockets for months would keep every one it ever had.
			// Doubling the mark keeps the cost per hijack constant.
			gone = t.pruneLocked()
			t.pruneAt = max(64, 2*len(t.hijacked))
		}
	case http.StateClosed:
		delete(t.fresh, c)
		t.open--
		if t.started && !t.frozen {
			t.ended++
		}
	default:
		t.mu.Unlock()
		return
	}
	t.signalLocked()
	t.mu.Unlock()
	if st == http.StateClosed {
		gone++
	}
	t.reportGone(gone)
}

// handled marks c as having had a request reach the handler.
func (t *Tracker) handled(c net.Conn) {
	t.mu.Lock()
	if t.fresh[c] {
		delete(t.fresh, c)
		t.signalLocked()
	}
	t.mu.Unlock()
}

// signalLocked wakes drainNew, if it waits, to count again; t.mu is held.
func (t *Tracker) signalLocked() {
	if t.changed != nil {
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

// pruneLocked forgets the hijacked connections that are closed, counting
// them as drained once the drain started; t.mu is held. It returns how
// many it forgot, for reportGone once t.mu is released.
func (t *Tracker) pruneLocked() (gone int) {
	for c := range t.hijacked {
		if isClosed(c) {
			delete(t.hijacked, c)
			gone++
			if t.started && !t.frozen {
				t.ended++
			}
		}
	}
	return gone
}

// reportGone reports n hijacked connections closed to the supervisor (the
// report socket's Closed count): net/http's accounting lost them at the
// hijack, and the dispatcher's open count per instance, which
// balance_factor and fallback = "spread" read, would hold them for the
// life of the process. t.mu must not be held.
func (t *Tracker) reportGone(n int) {
	for range n {
		if t.closed != nil {
			t.closed()
		}
	}
}

// hijackSweep is how often a serving worker looks which hijacked
// connections were closed, to report them: a WebSocket's close is seen
// within about a second.
const hijackSweep = time.Second

// sweep reports closed hijacked connections every hijackSweep until ctx
// ends.
func (t *Tracker) sweep(ctx context.Context) {
	tick := time.NewTicker(hijackSweep)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.mu.Lock()
		gone := 0
		if len(t.hijacked) > 0 {
			gone = t.pruneLocked()
		}
		t.mu.Unlock()
		t.reportGone(gone)
	}
}

// isClosed reports whether c was closed, by asking its socket: a closed
// net.Conn refuses SyscallConn().Control. Hijacked connections are seen
// this way, not through a wrapper around every accepted connection,
// because a wrapper would hide what Accept returned: the *tls.Conn that
// http.Server needs to see to serve HTTPS and HTTP/2, and the
// *net.TCPConn a handler may assert after Hijack. A connection that gives
// no socket (a net.Pipe) is taken as open until the drain deadline.
func isClosed(c net.Conn) bool {
	for {
		u, ok := c.(interface{ NetConn() net.Conn }) // *tls.Conn, *Conn
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	return rc.Control(func(uintptr) {}) != nil
}

// begin starts the drain, once: connections that end from now on count
// as drained, handlers see Draining, and OnDrain runs on a goroutine of
// its own (so that a slow one cannot hold the drain up).
func (t *Tracker) begin() {
	t.start.Do(func() {
		t.mu.Lock()
		gone := t.pruneLocked() // those closed before the drain do not count
		t.started = true
		t.mu.Unlock()
		t.reportGone(gone)
		close(t.draining)
		if t.sc.OnDrain != nil {
			go t.sc.OnDrain()
		}
	})
}

// hijackPoll is how often a drain looks whether its hijacked connections
// closed: a connection's end is noticed within it.
const hijackPoll = 25 * time.Millisecond

// waitHijacked waits until every hijacked connection closed, or until ctx
// ends, when it cuts those still open (and any other connection left).
func (t *Tracker) waitHijacked(ctx context.Context) DrainResult {
	tick := time.NewTicker(hijackPoll)
	defer tick.Stop()
	for {
		t.mu.Lock()
		gone := t.pruneLocked()
		if len(t.hijacked) == 0 && t.open <= 0 {
			res := DrainResult{Drained: t.ended}
			t.frozen = true
			t.mu.Unlock()
			t.reportGone(gone)
			return res
		}
		t.mu.Unlock()
		t.reportGone(gone)
		select {
		case <-ctx.Done():
			return t.cut()
		case <-tick.C:
		}
	}
}

// cut ends the drain at its deadline: every connection still open is
// closed and counted as cut. The server's own (requests still running)
// are closed by the caller with srv.Close, after this counted them.
func (t *Tracker) cut() DrainResult {
	t.mu.Lock()
	gone := t.pruneLocked()
	res := DrainResult{Drained: t.ended, Cut: uint64(max(t.open, 0) + len(t.hijacked))}
	t.frozen = true
	left := make([]net.Conn, 0, len(t.hijacked))
	for c := range t.hijacked {
		left = append(left, c)
	}
	t.hijacked = nil
	t.mu.Unlock()
	for _, c := range left {
		c.Close()
	}
	t.reportGone(gone + len(left))
	return res
}

// Shutdown drains the server t tracks, as Serve does on SIGTERM: it sends
// STOPPING=1 to systemd, Draining to the supervisor (when the group has a
// report socket) and closes the Draining channel (OnDrain runs); then
// srv.Shutdown closes the listeners (close(), never shutdown(): a
// listening socket stays with systemd and the next process of the slot),
// closes idle keep-alives and waits for requests in flight; hijacked
// connections may end on their own. All of it until the drain deadline,
// 90% of the stop timeout, or until ctx ends: then what is left is closed
// and counted as cut. Last, the DrainResult is reported to the supervisor
// (best effort, it never blocks) and returned.
//
// The error wraps context.DeadlineExceeded (or ctx's error) when requests
// were still running at the deadline, as Serve's does; hijacked
// connections cut at the deadline are counted, not an error. Outside
// systemd and PowerHouse the notifications and reports are skipped.
func (t *Tracker) Shutdown(ctx context.Context) (DrainResult, error) {
	grace, err := t.sc.grace()
	if err != nil {
		return DrainResult{}, fmt.Errorf("activation: shutdown: %w", err)
	}
	rep := newReporter(t.sc.reportSocket())
	defer rep.stop()
	notify(daemon.SdNotifyStopping)
	rep.draining()
	t.begin()
	sctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	res, err := t.finish(sctx, grace)
	rep.drainResult(res)
	return res, err
}

// finish runs srv.Shutdown, then waits for the hijacked connections, both
// until sctx ends; it cuts what is left then.
func (t *Tracker) finish(sctx context.Context, grace time.Duration) (DrainResult, error) {
	if err := t.srv.Shutdown(sctx); err != nil {
		res := t.cut()
		t.srv.Close()
		logCut(res, grace)
		return res, fmt.Errorf("activation: shutdown: requests still running after %v: %w", grace, err)
	}
	res := t.waitHijacked(sctx)
	logCut(res, grace)
	return res, nil
}

func logCut(res DrainResult, grace time.Duration) {
	if res.Cut > 0 {
		log.Printf("activation: drain: %d connections still open after %v were closed (%d ended on their own)", res.Cut, grace, res.Drained)
	}
}
