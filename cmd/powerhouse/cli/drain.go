package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// Exit statuses of drain --wait beyond ExitOK, ExitFailure and ExitUsage.
const (
	// ExitDrainTimeout: --timeout passed with new connections still
	// arriving; the house keeps serving and stays draining.
	ExitDrainTimeout = 3
	// ExitInterrupted: SIGINT or SIGTERM while waiting (128+SIGINT, as a
	// shell reports it); the house stays draining and is not stopped.
	ExitInterrupted = 130
)

var drainVerb = verb{
	name:    "drain",
	signals: true,
	short:   "take the host out of its load balancer (health answers 503); --wait: stop once quiet",
	long: `For host maintenance behind a front load balancer. drain makes the
house's health endpoint (the health key, ` + units.HealthSocket + `) answer
"503 draining", so that the load balancer moves the host's clients
elsewhere; meanwhile every group keeps serving every connection, new ones
included, exactly as before. The drain is a file, RUNTIME/drain.json (in
/run/powerhouse, or $XDG_RUNTIME_DIR/powerhouse with --user), holding
when it began: it outlives a stop and start of the house, and ends with
drain --undo or a reboot. Draining a draining house changes nothing and
says since when. powerhouse status shows it.

--wait then waits until new connections have stopped arriving for the
--quiet period, printing what it sees each second, and stops the house
(powerhouse.target) cleanly: each worker finishes its connections within
its stop timeout. New connections are seen in the kernel's socket tables
(sock_diag, polled every 100ms), where every connection to a group's
addresses shows in any dispatch mode, from the accept queue on, each
known by a mark of its own (a TCP socket's cookie, which the kernel
never reuses and TIME_WAIT keeps; a unix connection's client inode); a
hand-off group's supervisor also counts every connection it accepts
(dispatch.json, published every second), which catches those too short
for a poll. Interrupting --wait (Ctrl-C) leaves the house draining and
serving, not stopped.

--undo ends the drain: the health endpoint answers "200 ok" again.

Exit status: 0 done; 1 failure; 2 bad arguments or configuration;
3 --timeout passed with connections still arriving (the house keeps
serving, draining); 130 interrupted (draining, not stopped).`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		mf := addManagerFlags(fs)
		wait := fs.Bool("wait", false, "then wait for the --quiet period without new connections and stop the house")
		undo := fs.Bool("undo", false, "end the drain: the health endpoint answers 200 again")
		quiet := fs.Duration("quiet", 5*time.Second, "with --wait: how long no new connection may arrive before the house stops")
		timeout := fs.Duration("timeout", 10*time.Minute, "with --wait: give up (exit status 3) when connections still arrive after this long; 0: wait for ever")
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("takes no arguments")
			}
			set := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
			switch {
			case *undo && *wait:
				return usagef("--undo and --wait: choose one")
			case !*wait && (set["quiet"] || set["timeout"]):
				return usagef("--quiet and --timeout go with --wait")
			case *quiet < 100*time.Millisecond || *quiet > time.Hour:
				return usagef("--quiet %s: want 100ms to 1h", *quiet)
			case *timeout < 0:
				return usagef("--timeout %s: want 0 (no limit) or more", *timeout)
			}
			if err := requireRoot("drain", *mf.user); err != nil {
				return err
			}
			d := &drainer{e: e, user: *mf.user, path: drainPath(e, *mf.user)}
			c, err := mf.load()
			if err != nil && *wait {
				return err
			}
			d.c = c // nil: --undo or a plain drain need no configuration
			if *undo {
				return d.undo()
			}
			if err := d.start(); err != nil {
				return err
			}
			if !*wait {
				return nil
			}
			return d.waitAndStop(*quiet, *timeout)
		}
	},
}

// drainPath is the drain state file: the scope's, or under the test's
// runtime root.
func drainPath(e *env, user bool) string {
	p := scopeOf(user).DrainState()
	if e.runtimeRoot != "" {
		return filepath.Join(e.runtimeRoot, filepath.Base(p))
	}
	return p
}

type drainer struct {
	e    *env
	user bool
	path string
	c    *config.Config // nil when not readable (no --wait)
}

// endpoint describes the health endpoint for messages.
func (d *drainer) endpoint() string {
	if d.c == nil || d.c.Health == nil {
		return "the health endpoint"
	}
	return fmt.Sprintf("the health endpoint %s (%s)", d.c.Health.Address, units.HealthSocket)
}

func (d *drainer) start() error {
	st, draining, err := readDrain(d.path)
	if err != nil && !draining {
		return err
	}
	now := time.Now()
	switch {
	case draining && err != nil:
		fmt.Fprintf(d.e.stderr, "drain: already draining (since when is not readable: %v): nothing changed; %s answers 503\n", err, d.endpoint())
	case draining:
		fmt.Fprintf(d.e.stderr, "drain: already draining since %s (%s ago): nothing changed; %s answers 503\n", stamp(st.Since), ago(now, st.Since), d.endpoint())
	default:
		if err := writeDrain(d.path, drainState{Since: now.UTC()}); err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		fmt.Fprintf(d.e.stderr, "drain: draining since %s: %s answers 503 draining; the groups keep serving every connection (powerhouse %sdrain --undo ends it)\n", stamp(now), d.endpoint(), flagWord(d.user))
	}
	if d.c != nil && d.c.Health == nil {
		fmt.Fprintf(d.e.stderr, "drain: warning: %s has no health key: no load balancer is told, and new connections keep arriving\n", d.c.File)
	}
	return nil
}

func (d *drainer) undo() error {
	st, draining, err := readDrain(d.path)
	if !draining {
		fmt.Fprintf(d.e.stderr, "drain: not draining: nothing to undo\n")
		return nil
	}
	if err := os.Remove(d.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drain --undo: %w", err)
	}
	since := "an unreadable time"
	if err == nil {
		since = fmt.Sprintf("%s, %s ago", stamp(st.Since), ago(time.Now(), st.Since))
	}
	fmt.Fprintf(d.e.stderr, "drain: ended (draining since %s): %s answers 200 ok again\n", since, d.endpoint())
	return nil
}

// waitAndStop waits for the quiet period, then stops the house.
func (d *drainer) waitAndStop(quiet, timeout time.Duration) error {
	arr := houseArrivals(d.c, d.user, d.e.runtimeRoot)
	q := quietWait{quiet: quiet, timeout: timeout, poll: 100 * time.Millisecond, now: time.Now, sleep: sleepCtx, arrivals: arr,
		progress: func(s string) { fmt.Fprintf(d.e.stderr, "drain: %s\n", s) }}
	fmt.Fprintf(d.e.stderr, "drain: waiting until no new connection has arrived for %s\n", quiet)
	err := q.run(d.e.ctx)
	var te *quietTimeout
	switch {
	case errors.As(err, &te):
		return &exitError{code: ExitDrainTimeout, err: fmt.Errorf("powerhouse drain: new connections still arrive after %s (%d in the last %s): the house keeps serving and stays draining; is the load balancer checking %s?", timeout, te.recent, te.window, d.endpoint())}
	case d.e.ctx.Err() != nil:
		return &exitError{code: ExitInterrupted, err: fmt.Errorf("powerhouse drain: interrupted: the house stays draining and keeps serving; it is not stopped (powerhouse %sstop stops it, powerhouse %sdrain --undo ends the drain)", flagWord(d.user), flagWord(d.user))}
	case err != nil:
		return fmt.Errorf("drain: counting new connections: %w (the house stays draining)", err)
	}
	fmt.Fprintf(d.e.stderr, "drain: stopping %s\n", units.Target)
	m, err := connect(d.e.ctx, d.user)
	if err != nil {
		return err
	}
	defer m.Close()
	if err = m.Stop(d.e.ctx, units.Target); err == nil {
		err = waitStopped(d.e, m)
	}
	if d.e.ctx.Err() != nil {
		return &exitError{code: ExitInterrupted, err: fmt.Errorf("powerhouse drain: interrupted while %s stops: systemd goes on stopping it; the house stays draining", units.Target)}
	}
	if err != nil {
		return fmt.Errorf("drain: stop %s: %w (the house stays draining)", units.Target, err)
	}
	fmt.Fprintf(d.e.stderr, "drain: %s stopped; the house stays drained (powerhouse %sdrain --undo ends it, then powerhouse %sstart)\n", units.Target, flagWord(d.user), flagWord(d.user))
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }

func ago(now, t time.Time) string { return now.Sub(t).Round(time.Second).String() }

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// arrivals counts a house's new connections: each call of New returns how
// many arrived since the previous call (the first call sets the baseline
// and returns 0).
type arrivals interface {
	New() (uint64, error)
}

// quietTimeout is the error of a quietWait that ran out of time.
type quietTimeout struct {
	recent uint64
	window time.Duration
}

func (t *quietTimeout) Error() string { return "timed out" }

// quietWait waits until no new connection has arrived for quiet, polling
// arrivals every poll, for at most timeout (0: no limit). Its clock and
// sleep are fields so that a test can drive it.
type quietWait struct {
	quiet, timeout, poll time.Duration
	now                  func() time.Time
	sleep                func(context.Context, time.Duration) error
	arrivals             arrivals
	progress             func(string)
}

// run returns nil once quiet has passed without a new connection, a
// *quietTimeout once timeout has passed without, or ctx's error.
func (q quietWait) run(ctx context.Context) error {
	if _, err := q.arrivals.New(); err != nil { // the baseline
		return err
	}
	start := q.now()
	last, report := start, start
	var window uint64 // arrivals since the last report
	var recent []arrival
	for {
		if err := q.sleep(ctx, q.poll); err != nil {
			return err
		}
		n, err := q.arrivals.New()
		if err != nil {
			return err
		}
		t := q.now()
		if n > 0 {
			last = t
			window += n
			recent = append(recent, arrival{t, n})
		}
		// What arrived in the last quiet period, for the timeout's message.
		for len(recent) > 0 && t.Sub(recent[0].at) >= q.quiet {
			recent = recent[1:]
		}
		if t.Sub(last) >= q.quiet {
			q.progress(fmt.Sprintf("no new connection for %s", q.quiet))
			return nil
		}
		if q.timeout > 0 && t.Sub(start) >= q.timeout {
			var r uint64
			for _, a := range recent {
				r += a.n
			}
			return &quietTimeout{recent: r, window: q.quiet}
		}
		if t.Sub(report) >= time.Second {
			if window > 0 {
				q.progress(fmt.Sprintf("%s in the last %s, still arriving (%s since the wait began)", plural(int(window), "new connection"), t.Sub(report).Round(100*time.Millisecond), t.Sub(start).Round(time.Second)))
			} else {
				q.progress(fmt.Sprintf("quiet for %s of %s", t.Sub(last).Round(100*time.Millisecond), q.quiet))
			}
			report, window = t, 0
		}
	}
}

type arrival struct {
	at time.Time
	n  uint64
}

// maxArrivals reads several sources that may see the same connections
// (a hand-off group's in the socket table and in its supervisor's
// counters): each poll counts the largest of their figures, so that a
// connection is never counted twice and any source's activity counts.
type maxArrivals []arrivals

func (s maxArrivals) New() (uint64, error) {
	var n uint64
	for _, a := range s {
		m, err := a.New()
		if err != nil {
			return 0, err
		}
		n = max(n, m)
	}
	return n, nil
}

// houseArrivals is how drain --wait counts c's new connections. Every
// connection to a group's addresses, in any dispatch mode, is in the
// kernel's socket tables (cookieArrivals for TCP, unixArrivals for unix
// sockets), seen within a poll; a hand-off group's supervisor also counts
// every connection it accepts (dispatchArrivals), which catches the ones
// too short-lived for a poll, a second late (it publishes every second).
func houseArrivals(c *config.Config, user bool, root string) arrivals {
	var out maxArrivals
	conns := &cookieArrivals{list: tcpConns, ports: map[uint16]bool{}}
	socks := &unixArrivals{list: unixConns, paths: map[string]bool{}}
	for i := range c.Workers {
		w := &c.Workers[i]
		if w.Sticky && !w.KernelDispatch() {
			g := units.Group{Name: w.Name, Scope: scopeOf(user), Root: root}
			out = append(out, &dispatchArrivals{path: g.DispatchStatePath()})
		}
		for _, l := range w.Listen {
			if l.Network == "unix" {
				socks.paths[l.Address] = true
			} else {
				conns.add(l)
			}
		}
	}
	if len(conns.ports) > 0 {
		out = append(out, conns)
	}
	if len(socks.paths) > 0 {
		out = append(out, socks)
	}
	return out
}

// dispatchArrivals counts the connections a hand-off group's supervisor
// accepted, from the counters it publishes every second.
type dispatchArrivals struct {
	path  string
	prev  uint64
	known bool
}

func (a *dispatchArrivals) New() (uint64, error) {
	b, err := os.ReadFile(a.path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // no supervisor running: nothing accepted
	}
	if err != nil {
		return 0, err
	}
	var ds supervisor.DispatchState
	if err := json.Unmarshal(b, &ds); err != nil {
		return 0, nil // a supervisor of another version: the next one may read
	}
	total := ds.HandedOff + ds.Dropped + ds.ProxyErrors + ds.ProxyUntrusted + ds.ProxyBusy
	var n uint64
	switch {
	case !a.known:
	case total >= a.prev:
		n = total - a.prev
	default:
		n = total // the supervisor restarted: its counters began again
	}
	a.prev, a.known = total, true
	return n, nil
}

// cookieArrivals counts the TCP connections to a set of addresses that
// are new since the last look: sockets whose kernel cookie was not there
// then. A connection that opens and is gone again between two looks (100
// ms apart) is missed unless it leaves a TIME_WAIT socket, which it does
// when the server closes first.
type cookieArrivals struct {
	list  func(map[uint16]bool) ([]tcpConn, error)
	ports map[uint16]bool
	addrs []netip.AddrPort // specific addresses; a zero Addr: every address of the port
	newCookies
}

// newCookies counts the socket cookies not seen in the previous look.
type newCookies struct {
	seen  map[uint64]bool
	ready bool
}

func (s *newCookies) count(cookies []uint64) uint64 {
	next := make(map[uint64]bool, len(cookies))
	var n uint64
	for _, c := range cookies {
		if s.ready && !s.seen[c] && !next[c] {
			n++
		}
		next[c] = true
	}
	s.seen, s.ready = next, true
	return n
}

// unixArrivals counts the connections to unix-socket listeners that are
// new since the last look. A connection is known by its client's inode,
// which the listener's queue and the accepted socket both show; once
// accepted, by its accepted socket's cookie too, so that it keeps its key
// when the client closes first.
type unixArrivals struct {
	list  func(map[string]bool) ([]unixConn, error)
	paths map[string]bool
	keys  map[uint64]uint64 // accepted socket's cookie -> the connection's key
	newCookies
}

func (a *unixArrivals) New() (uint64, error) {
	cs, err := a.list(a.paths)
	if err != nil {
		return 0, err
	}
	keys := make(map[uint64]uint64, len(cs))
	var seen []uint64
	for _, c := range cs {
		k := uint64(c.Client)
		if old, ok := a.keys[c.Server]; ok && c.Server != 0 {
			k = old
		} else if c.Client == 0 {
			k = 1<<63 | c.Server // no client to know it by: a key apart
		}
		if c.Server != 0 {
			keys[c.Server] = k
		}
		seen = append(seen, k)
	}
	a.keys = keys
	return a.count(seen), nil
}

// add counts the connections to listener l.
func (a *cookieArrivals) add(l config.Listener) {
	port := uint16(l.Port())
	a.ports[port] = true
	if strings.HasPrefix(l.Address, ":") {
		a.addrs = append(a.addrs, netip.AddrPortFrom(netip.Addr{}, port))
		return
	}
	ap, err := netip.ParseAddrPort(l.Address)
	if err != nil {
		return
	}
	if ap.Addr().IsUnspecified() {
		ap = netip.AddrPortFrom(netip.Addr{}, port) // 0.0.0.0 or [::]: every address
	}
	a.addrs = append(a.addrs, ap)
}

func (a *cookieArrivals) match(local netip.AddrPort) bool {
	for _, ap := range a.addrs {
		if ap.Port() == local.Port() && (!ap.Addr().IsValid() || ap.Addr() == local.Addr()) {
			return true
		}
	}
	return false
}

func (a *cookieArrivals) New() (uint64, error) {
	cs, err := a.list(a.ports)
	if err != nil {
		return 0, err
	}
	var cookies []uint64
	for _, c := range cs {
		if a.match(c.Local) {
			cookies = append(cookies, c.Cookie)
		}
	}
	return a.count(cookies), nil
}

// printDrain is status's house line while the house drains: since when,
// and what the health endpoint answers. Nothing when it does not drain.
func printDrain(e *env, mf *managerFlags) {
	st, draining, err := readDrain(drainPath(e, *mf.user))
	if !draining {
		return
	}
	d := &drainer{e: e, user: *mf.user}
	d.c, _ = mf.load()
	var since string
	if err != nil {
		since = "since a time that is not readable (" + err.Error() + ")"
	} else {
		since = fmt.Sprintf("since %s (%s ago)", stamp(st.Since), ago(time.Now(), st.Since))
	}
	what := d.endpoint() + " answers 503 draining"
	if d.c != nil && d.c.Health == nil {
		what = "no health endpoint is configured (health key): no load balancer is told"
	}
	fmt.Fprintf(e.stdout, "house: DRAINING %s: %s; powerhouse %sdrain --undo ends it\n\n", since, what, flagWord(*mf.user))
}
