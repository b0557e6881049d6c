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
	// the worker when it runs out. Serve lets in-flight requests run for 90%
	// of it, keeping the rest to close connections and exit. Zero means
	// $POWERHOUSE_STOP_TIMEOUT, else DefaultStopTimeout.
	StopTimeout time.Duration
	// ReportSocket is the group's report socket, where Serve tells the
	// supervisor what the worker supports and how it is doing (package
	// report). Empty means $POWERHOUSE_REPORT_SOCKET; with neither,
	// nothing is reported.
	ReportSocket string
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
//     ReloadOnSIGHUP); then Draining
//     when the worker stops accepting, and the count of closed
//     connections at most every 100 ms while it changes. Reports never
//     block or fail serving; the first failure is logged;
//   - READY=1 is sent to $NOTIFY_SOCKET when srv first calls Accept, that
//     is once the worker is accepting;
//   - when $WATCHDOG_USEC is set (and $WATCHDOG_PID is this process or
//     unset), WATCHDOG=1 is sent every half interval until Serve returns;
//   - on SIGTERM or SIGINT, or when ctx is done, STOPPING=1 is sent and
//     srv.Shutdown stops accepting (l is closed: a hand-off socket is left
//     undrained for the next instance, once the dispatcher stopped sending:
//     a hand-off listener keeps accepting until none came for 20 ms, at
//     most 250 ms, since a stopped instance's socket goes away with what
//     it queued), then Shutdown closes idle connections and waits for
//     in-flight requests, for at most 90% of the stop timeout. A second
//     SIGTERM or SIGINT cuts the wait short.
//
// An error from l.Accept other than a closed listener (EMFILE, ENOBUFS,
// EPROTO, EPERM, a hand-off socket's recvmsg error, ...) never ends
// serving: Serve logs it (at most every 10 s while it lasts), backs off
// from 5 ms doubling up to 1 s, and accepts again. Only a listener closed
// under it (an error matching net.ErrClosed) makes srv stop by itself.
//
// It returns nil after a clean shutdown. When requests outlive the wait,
// their connections are closed and the error wraps
// context.DeadlineExceeded (context.Canceled after a second signal). If srv
// stops by itself, its error is returned (nil if the caller shut it down).
// Hijacked connections
// (WebSockets) are not waited for; see http.Server.RegisterOnShutdown.
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

	rl := &readyListener{Listener: l, closed: make(chan struct{})}
	defer rl.stopping()
	// Track connections that have not sent their first request yet: see
	// drainNew. The caller's ConnState hook keeps working; srv keeps the
	// wrapper (connection goroutines may still call it after Serve).
	userHook := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		rl.track(c, st)
		if st == http.StateClosed {
			rep.connClosed()
		}
		if userHook != nil {
			userHook(c, st)
		}
	}
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

	// Shutdown closes the listener first, which sends STOPPING=1.
	rep.draining()
	sctx, scancel := context.WithTimeout(context.Background(), grace)
	defer scancel()
	rl.drainNew(sctx)
	go func() {
		select {
		case <-sigs:
			scancel()
		case <-sctx.Done():
		}
	}()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-served
		return fmt.Errorf("activation: shutdown: requests still running after %v: %w", grace, err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("activation: serve: %w", err)
	}
	// Shutdown can return while Serve holds a connection it accepted but
	// has not tracked yet; exiting then would drop it (a client would see
	// EOF during a reload). Serve has returned now, so every accepted
	// connection is tracked: a second Shutdown waits for those too.
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("activation: shutdown: requests still running after %v: %w", grace, err)
	}
	return nil
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
// accepts, STOPPING=1 once it stops accepting, and counts the connections
// that have not sent a request yet.
type readyListener struct {
	net.Listener
	ready, stop, closeOnce sync.Once
	closed                 chan struct{} // the listener is closed: Accept blocks until Close

	mu         sync.Mutex
	lastAccept time.Time         // when Accept last returned a connection
	inAccept   int               // Accept calls inside the underlying listener
	accepted   int               // returned by Accept, not yet seen by ConnState
	fresh      map[net.Conn]bool // in StateNew: no request read yet
	changed    chan struct{}     // signalled when accepted or fresh shrink
	shutCh     chan struct{}     // closed by Close
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
	for {
		r.mu.Lock()
		r.inAccept++
		r.mu.Unlock()
		c, err := r.Listener.Accept()
		r.mu.Lock()
		r.inAccept--
		if err == nil {
			r.accepted++
			r.lastAccept = time.Now()
		}
		r.signalLocked()
		r.mu.Unlock()
		if err == nil {
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
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.closed:
			t.Stop()
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
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
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

func (r *readyListener) track(c net.Conn, st http.ConnState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fresh == nil {
		r.fresh = map[net.Conn]bool{}
	}
	switch st {
	case http.StateNew:
		r.accepted--
		r.fresh[c] = true
	default:
		if !r.fresh[c] {
			return
		}
		delete(r.fresh, c)
	}
	r.signalLocked()
}

// signalLocked wakes drainNew, if it waits, to count again; r.mu is held.
func (r *readyListener) signalLocked() {
	if r.changed != nil {
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// drainNew stops accepting, then waits (at most until ctx ends or
// freshWait passes) until every accepted connection has sent its first
// request. net/http's Shutdown closes a connection whose request it reads
// after shutdown began without answering it, which a client cannot tell
// from a failure on a new connection; once the request is being handled,
// Shutdown waits for it.
func (r *readyListener) drainNew(ctx context.Context) {
	r.lingerHandoffs(ctx)
	r.closeListener()
	deadline := time.NewTimer(freshWait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		// An Accept still inside the listener may yet return a
		// connection (a hand-off listener returns the datagram it was
		// reading at the moment of Close): wait for it to come out, so
		// that such a connection is counted and served before Shutdown.
		n, ch := r.inAccept+r.accepted+len(r.fresh), r.changed
		r.mu.Unlock()
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
// to send their first request.
const freshWait = time.Second

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
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
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
		t.Reset(min(handoffQuiet-quiet, handoffLinger-now.Sub(start)))
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
