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
//   - READY=1 is sent to $NOTIFY_SOCKET when srv first calls Accept, that
//     is once the worker is accepting;
//   - when $WATCHDOG_USEC is set (and $WATCHDOG_PID is this process or
//     unset), WATCHDOG=1 is sent every half interval until Serve returns;
//   - on SIGTERM or SIGINT, or when ctx is done, srv.Shutdown stops
//     accepting (l is closed: a hand-off socket is left undrained for the
//     next instance), STOPPING=1 is sent, and Shutdown closes idle
//     connections and waits for in-flight requests, for at most 90% of the
//     stop timeout. A second SIGTERM or SIGINT cuts the wait short.
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

	rl := &readyListener{Listener: l}
	defer rl.stopping()
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
	sctx, scancel := context.WithTimeout(context.Background(), grace)
	defer scancel()
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
// starts taking connections, and STOPPING=1 once it has stopped: after the
// listener is closed, so that anything that connects after STOPPING=1 is
// certainly left for the next instance.
type readyListener struct {
	net.Listener
	ready, stop sync.Once
}

func (r *readyListener) Accept() (net.Conn, error) {
	r.ready.Do(func() { notify(daemon.SdNotifyReady) })
	return r.Listener.Accept()
}

func (r *readyListener) Close() error {
	err := r.Listener.Close()
	r.stopping()
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
