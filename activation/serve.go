package activation

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/powerhouse/powerhouse/report"
)

// EnvStopTimeout optionally tells a worker its unit's stop timeout
// (TimeoutStopSec), which systemd does not export: a Go duration ("30s")
// or a number of seconds.
const EnvStopTimeout = "POWERHOUSE_STOP_TIMEOUT"

// DefaultStopTimeout is the stop timeout assumed when neither
// ServeConfig.StopTimeout nor $POWERHOUSE_STOP_TIMEOUT gives one.
const DefaultStopTimeout = 30 * time.Second

// ServeConfig holds Serve's settings; the zero value gives the documented
// defaults.
type ServeConfig struct {
	// StopTimeout is the unit's stop timeout: after SIGTERM, systemd kills
	// the worker when it runs out. The drain (see Serve) takes up to 90%
	// of it, keeping the rest to close connections and exit. Zero means
	// $POWERHOUSE_STOP_TIMEOUT, else DefaultStopTimeout.
	StopTimeout time.Duration
	// ReportSocket is the group's report socket, where Serve tells the
	// supervisor what the worker supports and how it is doing (package
	// report). Empty means $POWERHOUSE_REPORT_SOCKET; with neither,
	// nothing is reported.
	ReportSocket string
	// OnDrain, when set, runs once when the drain starts (SIGTERM, or the
	// end of Serve's ctx, or Tracker.Shutdown), on a goroutine of its own:
	// the place to tell long-lived connections (WebSockets) to reconnect.
	// Handlers can watch Draining instead.
	OnDrain func()
	// ReloadOnSIGHUP declares that the caller re-reads its configuration
	// on SIGHUP itself (ConfigFile.Reload from its own signal handling),
	// so that the supervisor signals the worker instead of restarting it.
	// It need not be set when the package's SIGHUP handler runs (Serve,
	// OnReconfigure): that is declared by itself.
	ReloadOnSIGHUP bool
}

// Serve runs srv on l for the life of the worker; see ServeConfig.Serve. It
// also makes SIGHUP re-read the configuration and run the OnReconfigure
// functions, so a reconfiguration never terminates a serving worker.
func Serve(ctx context.Context, srv *http.Server, l net.Listener) error {
	handleSIGHUP()
	return (&ServeConfig{}).Serve(ctx, srv, l)
}

// Serve runs srv on l and does the worker's side of the systemd lifecycle:
//
//   - when the group has a report socket (ServeConfig.ReportSocket,
//     $POWERHOUSE_REPORT_SOCKET), a Hello is sent to the supervisor before
//     serving starts, and every 30 s after: this library's release, the
//     hand-off versions it understands, and whether SIGHUP reloads the
//     configuration (the package's SIGHUP handler runs, or
//     ReloadOnSIGHUP); then Draining when the worker stops accepting, the
//     count of closed connections at most every 100 ms while it changes,
//     and a DrainResult when the drain is over. Reports never block or
//     fail serving; the first failure is logged;
//   - READY=1 is sent to $NOTIFY_SOCKET when srv first calls Accept, that
//     is once the worker is accepting;
//   - when $WATCHDOG_USEC is set (and $WATCHDOG_PID is this process or
//     unset), WATCHDOG=1 is sent every half interval until Serve returns;
//   - on SIGTERM or SIGINT, or when ctx is done, the worker drains. Under
//     PowerHouse the slot's new process is already ready then (handover
//     reload), so the drain may take its time: STOPPING=1 is sent, the
//     Draining channel of srv's requests is closed and OnDrain runs; the
//     worker stops taking connections (l is closed: a listening socket is
//     close()d, never shut down, since systemd and the slot's next process
//     share it; a hand-off listener first keeps taking hand-offs until
//     none came for 20 ms, at most 250 ms, since the dispatcher learns of
//     the stop a moment later, then leaves what is queued to the socket);
//     requests in flight finish, idle keep-alives are closed, and
//     long-lived connections (hijacked ones such as WebSockets, long-poll
//     requests) may end on their own, all of it for at most 90% of the
//     stop timeout. Then what is left is closed and counted as cut. A
//     second SIGTERM or SIGINT cuts the drain short.
//
// An error from l.Accept other than a closed listener (EMFILE, ENOBUFS,
// EPROTO, EPERM, a hand-off socket's recvmsg error, ...) never ends
// serving: Serve logs it (at most every 10 s while it lasts), backs off
// from 5 ms doubling up to 1 s, and accepts again. Only a listener closed
// under it (an error matching net.ErrClosed) makes srv stop by itself.
//
// It returns nil after a clean drain, also when hijacked connections were
// cut at its end (they are counted in the DrainResult report and logged).
// When requests outlive the drain, their connections are closed and the
// error wraps context.DeadlineExceeded (context.Canceled after a second
// signal). If srv stops by itself, its error is returned (nil if the
// caller shut it down). Serve wraps srv's ConnState, ConnContext,
// BaseContext and Handler (see Track), each calling the caller's own.
//
// Outside systemd the notifications are skipped (go-systemd's SdNotify does
// nothing without $NOTIFY_SOCKET) and the signals work the same.
func (sc *ServeConfig) Serve(ctx context.Context, srv *http.Server, l net.Listener) error {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("activation: serve: %w", err)
	}
	grace, err := sc.grace()
	if err != nil {
		return fmt.Errorf("activation: serve: %w", err)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if interval > 0 {
		go watchdog(ctx, interval/2)
	}

	rep := newReporter(sc.reportSocket())
	defer rep.stop()
	var features report.Features
	if sc.ReloadOnSIGHUP || std.hupOn.Load() {
		features |= report.FeatureReloadOnSIGHUP
	}

	// The tracker follows srv's connections, for drainNew and for the
	// drain's counts; srv keeps its hooks (connection goroutines may
	// still call them after Serve).
	t := sc.Track(srv)
	t.closed = rep.connClosed
	go t.sweep(ctx) // hijacked connections' closes, reported as they come
	rl := &readyListener{Listener: l, t: t, closed: make(chan struct{})}
	defer rl.stopping()
	// Before READY=1 (the first Accept): the supervisor knows what the
	// worker supports by the time systemd reports it started.
	rep.hello(features)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(rl) }()
	select {
	case err := <-served:
		if errors.Is(err, http.ErrServerClosed) {
			return nil // the caller shut srv down itself
		}
		return fmt.Errorf("activation: serve: %w", err)
	case <-ctx.Done():
	case <-sigs:
	}

	// STOPPING=1 goes once the listener is closed (drainNew): a client
	// that sees it may count on the next process taking its connection.
	rep.draining()
	t.begin()
	sctx, scancel := context.WithTimeout(context.Background(), grace)
	defer scancel()
	go func() {
		select {
		case <-sigs:
			scancel()
		case <-sctx.Done():
		}
	}()
	rl.drainNew(sctx)
	res, err := t.finish(sctx, grace)
	if serr := <-served; err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = fmt.Errorf("activation: serve: %w", serr)
	}
	rep.drainResult(res)
	return err
}

// grace is how long Shutdown may wait: 90% of the stop timeout.
func (sc *ServeConfig) grace() (time.Duration, error) {
	t := sc.StopTimeout
	if t == 0 {
		t = DefaultStopTimeout
		if s := os.Getenv(EnvStopTimeout); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				n, nerr := strconv.ParseFloat(s, 64)
				if nerr != nil {
					return 0, fmt.Errorf("%s=%q: want a duration (\"30s\") or seconds", EnvStopTimeout, s)
				}
				d = time.Duration(n * float64(time.Second))
			}
			t = d
		}
	}
	if t <= 0 {
		return 0, fmt.Errorf("stop timeout %v is not positive", t)
	}
	return t / 10 * 9, nil
}

// readyListener sends READY=1 on the first Accept, when the worker really
// accepts, and STOPPING=1 once it stops accepting; it counts the Accept
// calls under way and the connections returned, in t, for drainNew.
type readyListener struct {
	net.Listener
	t                      *Tracker
	ready, stop, closeOnce sync.Once
	closed                 chan struct{} // the listener is closed: Accept blocks until Close

	mu         sync.Mutex
	lastAccept time.Time     // when Accept last returned a connection
	shutCh     chan struct{} // closed by Close
}

func (r *readyListener) Accept() (net.Conn, error) {
	r.ready.Do(func() { notify(daemon.SdNotifyReady) })
	select {
	case <-r.closed:
		// Stopped accepting before Shutdown: wait for Shutdown's Close,
		// so that Serve does not return with an error meanwhile.
		<-r.shut()
		return nil, &net.OpError{Op: "accept", Net: r.Addr().Network(), Addr: r.Addr(), Err: net.ErrClosed}
	default:
	}
	var delay time.Duration
	var failures int
	var logged time.Time
	t := r.t
	for {
		t.mu.Lock()
		t.inAccept++
		t.mu.Unlock()
		c, err := r.Listener.Accept()
		t.mu.Lock()
		t.inAccept--
		if err == nil {
			t.accepted++
		}
		t.signalLocked()
		t.mu.Unlock()
		if err == nil {
			r.mu.Lock()
			r.lastAccept = time.Now()
			r.mu.Unlock()
			if failures > 0 {
				log.Printf("activation: accepting again after %d failed accepts", failures)
			}
			return c, nil
		}
		if r.isStopped() {
			<-r.shut()
			return nil, err
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err // closed under us: only this ends serving
		}
		// Anything else is taken as passing: EMFILE, ENFILE, ENOBUFS,
		// ENOMEM, ECONNABORTED, EPROTO, EPERM (a firewall hook), EINTR, a
		// timeout, or a hand-off socket's recvmsg error. net/http would
		// return on those it does not call Temporary, ending the worker;
		// here it backs off as net/http does for the others and goes on.
		delay = acceptBackoff(delay)
		failures++
		if now := time.Now(); logged.IsZero() || now.Sub(logged) >= acceptLogEvery {
			logged = now
			log.Printf("activation: accept: %v; retrying in %v (%d failures in a row)", err, delay, failures)
		}
		tm := time.NewTimer(delay)
		select {
		case <-tm.C:
		case <-r.closed:
			tm.Stop()
			<-r.shut()
			return nil, err
		}
	}
}

// Accept errors back off like net/http's: 5 ms, doubling up to 1 s. The
// log says so at most every acceptLogEvery while it lasts.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	acceptLogEvery   = 10 * time.Second
)

func acceptBackoff(prev time.Duration) time.Duration {
	if prev == 0 {
		return acceptBackoffMin
	}
	return min(2*prev, acceptBackoffMax)
}

// shutCh is closed by Close (Shutdown).
func (r *readyListener) shut() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutCh == nil {
		r.shutCh = make(chan struct{})
	}
	return r.shutCh
}

func (r *readyListener) isStopped() bool {
	select {
	case <-r.closed:
		return true
	default:
		return false
	}
}

// drainNew stops accepting, then waits (at most until ctx ends or
// freshWait passes) until every accepted connection has had its first
// request reach the handler (or closed). net/http's Shutdown drops a
// request that it finishes reading after shutdown began, without an
// answer, which a client cannot tell from a failure on a new connection;
// once the request is in the handler, Shutdown waits for it. A request
// that was read but has not reached the handler yet (StateActive is set
// just before net/http checks for the shutdown) still counts: waiting
// only for StateActive lost one request in thousands of a rolling reload
// under load (TestServeWaitsForFreshRequest).
func (r *readyListener) drainNew(ctx context.Context) {
	r.lingerHandoffs(ctx)
	r.closeListener()
	deadline := time.NewTimer(freshWait)
	defer deadline.Stop()
	t := r.t
	for {
		t.mu.Lock()
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		// An Accept still inside the listener may yet return a
		// connection (a hand-off listener returns the datagram it was
		// reading at the moment of Close): wait for it to come out, so
		// that such a connection is counted and served before Shutdown.
		n, ch := t.inAccept+t.accepted+len(t.fresh), t.changed
		t.mu.Unlock()
		if n <= 0 {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// freshWait bounds how long a stopping worker waits for connected clients
// to send their first request. It is net/http's own bound: Shutdown waits
// that long for a connection in StateNew anyway (then takes it for idle
// and closes it), so a shorter wait only opened a window in which a late
// first request was read after Shutdown began and dropped unanswered.
const freshWait = 5 * time.Second

// A stopping worker with a hand-off socket keeps receiving until no
// hand-off came for handoffQuiet, for at most handoffLinger. The
// dispatcher learns of the stop over D-Bus a few milliseconds after the
// worker got SIGTERM, and sends to the instance until then; when the
// instance is being stopped (not restarted) its hand-off socket is stopped
// next, and whatever was still queued in it would be lost with it. A
// restart keeps the socket, so there the linger only means that the old
// process, rather than the new one, serves the instance's clients for a
// moment: same instance, same stickiness.
const (
	handoffQuiet  = 20 * time.Millisecond
	handoffLinger = 250 * time.Millisecond
)

// lingerHandoffs returns once a hand-off listener has been quiet for
// handoffQuiet, or handoffLinger after it began, or when ctx ends; at once
// for any other listener (a shared socket keeps what it queued for the
// next process: systemd holds it).
func (r *readyListener) lingerHandoffs(ctx context.Context) {
	if _, ok := r.Listener.(*HandoffListener); !ok {
		return
	}
	r.stopping()
	start := time.Now()
	tm := time.NewTimer(0)
	defer tm.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tm.C:
		}
		r.mu.Lock()
		last := r.lastAccept
		r.mu.Unlock()
		now := time.Now()
		if last.Before(start) {
			last = start
		}
		quiet := now.Sub(last)
		if quiet >= handoffQuiet || now.Sub(start) >= handoffLinger {
			return
		}
		tm.Reset(min(handoffQuiet-quiet, handoffLinger-now.Sub(start)))
	}
}

// closeListener closes the underlying listener once and reports its error.
func (r *readyListener) closeListener() (err error) {
	r.closeOnce.Do(func() {
		close(r.closed)
		err = r.Listener.Close()
		r.stopping()
	})
	return err
}

func (r *readyListener) Close() error {
	err := r.closeListener()
	sc := r.shut()
	r.mu.Lock()
	select {
	case <-sc:
	default:
		close(sc)
	}
	r.mu.Unlock()
	return err
}

func (r *readyListener) stopping() {
	r.stop.Do(func() { notify(daemon.SdNotifyStopping) })
}

func watchdog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		notify(daemon.SdNotifyWatchdog)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// notify sends state to systemd; a failure is logged, since the unit would
// otherwise time out with no hint why.
func notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Printf("activation: sd_notify %s: %v", state, err)
	}
}
