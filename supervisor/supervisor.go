package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/sticky"
	"github.com/powerhouse/powerhouse/units"
)

// Options configure Run.
type Options struct {
	Config *config.Config
	Group  string
	// Scope is the manager the group runs under.
	Scope units.Scope
	// RuntimeRoot, when set, replaces the scope's runtime directory for
	// every file the supervisor writes and binds (units.Group.Root):
	// tests.
	RuntimeRoot string
	Manager     units.Manager
	// Files are the sockets systemd passed (LISTEN_FDS): the group's
	// public listening sockets.
	Files []*os.File
	// Notify sends a state string to systemd (sd_notify); nil for none.
	Notify func(state string) error
	// NotifyFiles sends a state string with descriptors (FDSTORE=1):
	// kernel mode keeps its steering program in the fd store. nil: not
	// stored, a restarted supervisor loads a new program.
	NotifyFiles func(state string, files []*os.File) error
	// Emit records an event; default events.Write (journald).
	Emit func(events.Event) error
	Log  *slog.Logger
	// StartTimeout bounds, at start, the wait for a first instance to be
	// ready: past it the supervisor fails its start, naming each
	// instance and why it is not up (it fails at once when every start
	// job ended and no instance is up or coming). It also bounds the
	// start and stop jobs of one scale. Default: the workers' start
	// timeout (timeout_start, systemd's 90s by default) plus 10s.
	StartTimeout time.Duration
	// Reload delivers a request to re-read the configuration file
	// (SIGHUP, the way of releases before the control socket): it runs
	// Reconfigure as an operation, so a changed amount starts or stops
	// instances.
	Reload <-chan struct{}
	// Poll is the interval of the full state refresh that backs up the
	// change signals. Default 5s.
	Poll time.Duration
	// Watchdog is the period within which systemd wants WATCHDOG=1
	// (WatchdogSec=, WATCHDOG_USEC); 0 for no watchdog. The supervisor
	// sends it only while its main loop and its dispatch loops are alive.
	Watchdog time.Duration
	// Reports is what the group's workers declared over the report
	// socket (package report); nil: none declared anything.
	Reports Reports
}

// Reports is the supervisor's view of what its workers declared over the
// report channel (package report, which implements it).
type Reports interface {
	// ReloadsOnSIGHUP reports whether the running worker of instance n
	// declared that it re-reads its configuration on SIGHUP.
	ReloadsOnSIGHUP(n int) bool
	// Drained is the drain result the process pid reported before it
	// exited (package activation, on SIGTERM): the connections it let
	// end on their own and those it cut at the drain deadline; ok is
	// false when it reported none (a worker without the library).
	Drained(pid uint32) (drained, cut uint64, ok bool)
}

// Supervisor is one running group supervisor.
type Supervisor struct {
	o   Options
	g   units.Group
	log *slog.Logger
	// disp is the group's dispatcher, nil for a group that is not sticky.
	disp *sticky.Dispatcher
	// uid is the supervisor's own, which may make every call.
	uid int

	mu     sync.Mutex
	w      *config.Worker // the group's configuration in force; guarded by mu
	amount int            // instances wanted; guarded by mu
	// sides are the states of each slot's two services, sidePIDs their
	// main processes (also while they drain), draining when each side's
	// drain (its stop) began as the supervisor saw it.
	sides    map[sideKey]units.UnitState
	sidePIDs map[sideKey]uint32
	draining map[sideKey]time.Time
	// state is each slot's state, that of the side that speaks for it
	// (slotState): Member, Running and at rest mean the same for the
	// slot as for that side; pids its main PID.
	state map[int]units.UnitState
	pids  map[int]uint32
	ready bool // READY=1 was sent
	quiet bool // record states without reporting events (start-up); main loop only
	// drains are the stops of old sides that reloads left running.
	drains sync.WaitGroup

	// The operations: one at a time, in the order they came.
	opMu     sync.Mutex
	ops      chan *operation
	running  string // the operation running now, "" for none; guarded by opMu
	waiting  int    // operations queued behind it; guarded by opMu
	stopping bool   // no more operations; guarded by opMu
	// kick asks the main loop to re-read every instance (after an operation).
	kick chan struct{}

	// mainBeat is when the main loop last went round (UnixNano), for the
	// watchdog; beats returns the dispatch loops' (sticky.Dispatcher.Beats).
	mainBeat atomic.Int64
	beats    func() []uint64
	// serving says that the dispatcher runs.
	serving atomic.Bool
	// declared is what the workers said over the report socket.
	declared declared
	// kern is a kernel-mode group's steering (kernel.go), nil otherwise;
	// loadSteer loads or adopts its programs.
	kern        *kernel
	loadSteer   steerLoader
	detachSteer func(*os.File) error
	// m is the group's metrics registry (metrics.go).
	m *metrics
	// rate is the connections handed off per second over the last
	// publish period (math.Float64bits), for STATUS=, which the control
	// socket's status asks too; lastHanded and lastAt are its last
	// reading (main loop only).
	rate       atomic.Uint64
	lastHanded uint64
	lastAt     time.Time
	// watched are duplicates of the TCP listeners, for their accept
	// queues (metrics.go); guarded by mu.
	watched []watchedListener
}

// New checks o and returns a supervisor ready to Run.
func New(o Options) (*Supervisor, error) {
	w := o.Config.Worker(o.Group)
	if w == nil {
		return nil, fmt.Errorf("supervise: no group %q in %s", o.Group, o.Config.File)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = span(w.Service.TimeoutStart) + extendMargin
	}
	if o.Poll <= 0 {
		o.Poll = 5 * time.Second
	}
	if o.Notify == nil {
		o.Notify = func(string) error { return nil }
	}
	if o.Emit == nil {
		o.Emit = events.Write
	}
	s := &Supervisor{o: o, g: units.Group{Name: o.Group, Scope: o.Scope, Root: o.RuntimeRoot}, w: w,
		log: o.Log.With("group", o.Group), amount: w.Amount, state: map[int]units.UnitState{}, pids: map[int]uint32{},
		sides: map[sideKey]units.UnitState{}, sidePIDs: map[sideKey]uint32{}, draining: map[sideKey]time.Time{},
		uid: os.Geteuid(), ops: make(chan *operation, maxWaiting), kick: make(chan struct{}, 1)}
	s.beats = func() []uint64 { return nil }
	s.declared.hello = map[slotSide]heard{}
	if s.o.Reports == nil {
		s.o.Reports = workerReports{s}
	}
	s.loadSteer, s.detachSteer = loadSteer, detachSteer
	if w.Sticky && !w.KernelDispatch() {
		s.disp = sticky.NewDispatcher(sticky.DispatcherOptions{
			Path: s.g.HandoffPath,
			Log:  s.log,
			Affinity: sticky.AffinityOptions{
				Spec: w.Affinity, TrustedProxies: w.TrustedProxies,
				Spread: w.Fallback == config.FallbackSpread, BalanceFactor: w.BalanceFactor,
			},
		})
		s.beats = s.disp.Beats
	}
	s.m = newMetrics(s)
	return s, nil
}

// Dispatcher returns the group's dispatcher, nil for a non-sticky group.
func (s *Supervisor) Dispatcher() *sticky.Dispatcher { return s.disp }

// Run supervises until ctx ends (SIGTERM). It returns nil on a clean stop,
// and an error when the group cannot run: no instance became ready within
// StartTimeout, a listener or the control socket could not be set up.
func (s *Supervisor) Run(ctx context.Context) error {
	if err := s.writeGroupConfig(s.worker()); err != nil {
		return err
	}
	listeners, err := s.listeners()
	if err != nil {
		return err
	}
	s.watchListeners(listeners)
	defer s.unwatchListeners()
	ctl, err := s.listenControl()
	if err != nil {
		closeListeners(listeners)
		return err
	}
	changes, err := s.o.Manager.Watch(ctx)
	if err != nil {
		ctl.Close()
		closeListeners(listeners)
		return err
	}
	// Learn what runs already (after a supervisor restart the workers kept
	// running: no worker.start for them).
	s.quiet = true
	err = s.refresh(ctx)
	s.quiet = false
	if err != nil {
		ctl.Close()
		closeListeners(listeners)
		return err
	}
	s.kernelSync()
	s.checkIn()
	// The operations run in their own goroutine, under a context of the
	// supervisor's: a caller that goes away leaves its operation running.
	opCtx, stopOps := context.WithCancel(ctx)
	opsDone := make(chan struct{})
	go func() { defer close(opsDone); s.runOps(opCtx) }()
	ctlDone := make(chan struct{})
	go func() { defer close(ctlDone); s.serveControl(opCtx, ctl) }()
	wdDone := make(chan struct{})
	go func() { defer close(wdDone); s.watchdog(opCtx) }()
	// The group runs without its metrics socket, if need be: it is for
	// the operators' eyes, not for the clients.
	metricsDone := make(chan struct{})
	if ml, readers, err := s.listenMetrics(); err != nil {
		s.log.Warn("metrics are not served", "err", err)
		close(metricsDone)
	} else {
		s.log.Debug("metrics socket", "path", s.g.MetricsPath(), "readers", readers)
		go func() { defer close(metricsDone); s.serveMetrics(opCtx, ml) }()
	}
	// Workers that cannot report are served all the same: without the
	// socket they are only taken for workers that declare nothing.
	reportsDone := make(chan struct{})
	if r, err := s.listenReports(); err != nil {
		s.log.Warn("workers cannot report to this supervisor", "err", err)
		close(reportsDone)
	} else {
		go func() { defer close(reportsDone); defer r.Close(); s.serveReports(opCtx, r) }()
	}

	dctx, stopDispatch := context.WithCancel(context.WithoutCancel(ctx))
	dispatchErr := make(chan error, 1)
	serve := func() {
		if s.disp != nil && s.serving.CompareAndSwap(false, true) {
			go func() { dispatchErr <- s.disp.Serve(dctx, listeners) }()
		}
	}
	// After a restart, instances are up already: serve them at once, and
	// say ready. At first start, with nothing up, connections wait in the
	// kernel's backlog until a first instance is ready.
	if s.disp != nil && s.disp.Up.Len() > 0 {
		serve()
	}
	// Instances 1..amount run, and no other: the first operation.
	startOver := make(chan struct{})
	plan := s.readPlan()
	s.submit("start", func(ctx context.Context, progress func(Progress)) (OperationResult, error) {
		defer close(startOver)
		res, err := s.scaleTo(ctx, -1, progress)
		if plan == nil {
			// A slot with both sides running and no reload to say
			// which is new (an operator's start of the other side):
			// the newer serves, the older drains. After the starts,
			// whose start of a running side is a no-op, and never
			// the start of a side just told to stop.
			s.settleSlots(ctx)
		}
		return res, err
	}, nil)
	if plan != nil {
		// A reload that a restart of the supervisor interrupted: it
		// goes on from where it was, after the start.
		s.submit(plan.Verb, func(ctx context.Context, progress func(Progress)) (OperationResult, error) {
			return s.resume(ctx, plan, progress)
		}, nil)
	}
	// systemd's own start timeout (TimeoutStartSec=, 90s by default)
	// must not end the start before ours does, which says why.
	s.o.Notify(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", (s.o.StartTimeout + extendMargin).Microseconds()))
	startTimer := time.NewTimer(s.o.StartTimeout)
	defer startTimer.Stop()

	tick := time.NewTicker(s.o.Poll)
	defer tick.Stop()
	// Counters change with every connection: publish them once a second.
	pub := time.NewTicker(time.Second)
	defer pub.Stop()
	heartbeat := time.NewTicker(heartbeatPeriod(s.o.Watchdog))
	defer heartbeat.Stop()
	var rewatch <-chan time.Time
	var runErr error
	s.checkReady(serve, false)
loop:
	for {
		s.checkIn()
		select {
		case <-ctx.Done():
			break loop
		case err := <-dispatchErr:
			runErr = err
			break loop
		case name, ok := <-changes:
			if !ok {
				// The manager's bus went away and Watch gave up: watch
				// again, shortly; the poll keeps the state meanwhile.
				changes = nil
				rewatch = time.After(time.Second)
				s.log.Warn("lost the watch on systemd; watching again")
				continue
			}
			if name == "" {
				// A reconnect: changes were lost meanwhile.
				if err := s.refresh(ctx); err != nil {
					s.log.Warn("refresh failed", "err", err)
				}
			} else if n, side, ok := s.g.SideOf(name); ok {
				if st, err := s.o.Manager.State(ctx, name); err == nil {
					s.observe(ctx, n, side, st)
				} else {
					s.log.Warn("state not read", "unit", name, "err", err)
				}
			} else {
				s.kernelSocketChanged(ctx, name)
			}
		case <-rewatch:
			rewatch = nil
			if c, err := s.o.Manager.Watch(ctx); err == nil {
				changes = c
				if err := s.refresh(ctx); err != nil {
					s.log.Warn("refresh failed", "err", err)
				}
			} else {
				s.log.Warn("watch on systemd failed; trying again", "err", err)
				rewatch = time.After(time.Second)
			}
		case <-tick.C:
			if err := s.refresh(ctx); err != nil {
				s.log.Warn("refresh failed", "err", err)
			}
			s.settleIfBoth()
		case <-s.kick:
			if err := s.refresh(ctx); err != nil {
				s.log.Warn("refresh failed", "err", err)
			}
		case <-s.o.Reload:
			// SIGHUP: the old way to apply a changed amount.
			if err := s.submit("reconfigure", s.reconfigureSIGHUP, nil); err != nil {
				s.log.Warn("SIGHUP: configuration not reloaded", "err", err)
			}
		case <-heartbeat.C:
		case <-startTimer.C:
			if up, _ := s.upCount(); !s.isReady() && up > 0 {
				// Start jobs still pending past the timeout: serve, and
				// say ready, with what is up (STATUS= says degraded).
				s.checkReady(serve, true)
			} else if !s.isReady() {
				runErr = s.startFailed(ctx, fmt.Sprintf("became ready within %v", s.o.StartTimeout))
				break loop
			}
		case <-pub.C:
			s.publish()
		}
		s.checkReady(serve, closed(startOver))
		// Every start job ended and every instance is at rest with
		// nothing to bring it back (failed: its start limit hit, or
		// Restart= gave up): waiting longer would only hold up
		// `systemctl start`.
		if !s.isReady() && closed(startOver) && s.allDown() {
			// The watch's signals may lag behind the start jobs' ends
			// (an instance up, not observed yet): a fresh look first.
			if err := s.refresh(ctx); err == nil {
				s.checkReady(serve, true)
			}
			if !s.isReady() && s.allDown() {
				runErr = s.startFailed(ctx, "is up, and systemd is starting none")
				break loop
			}
		}
		s.kernelPickup(ctx, time.Now())
		s.o.Notify("STATUS=" + s.status())
	}
	s.o.Notify("STOPPING=1")
	// No operation starts any more; the running one ends with the
	// context, the waiting ones are told the supervisor stops.
	stopOps()
	<-opsDone
	<-ctlDone
	<-wdDone
	<-metricsDone
	<-reportsDone
	// The stops of old sides end with opCtx: systemd goes on with them.
	s.drains.Wait()
	stopDispatch()
	if s.serving.Load() && runErr == nil {
		<-dispatchErr
	}
	if !s.serving.Load() {
		closeListeners(listeners)
	}
	s.kernelClose()
	s.shutdown()
	return runErr
}

func closeListeners(ls []sticky.Listener) {
	for _, l := range ls {
		l.File.Close()
	}
}

// extendMargin is added to each EXTEND_TIMEOUT_USEC= for the time the
// supervisor itself takes around the jobs it waits for.
const extendMargin = 10 * time.Second

// worker returns the group's configuration in force.
func (s *Supervisor) worker() *config.Worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w
}

// upCount counts the instances up (active or reloading) among 1..amount.
func (s *Supervisor) upCount() (up, amount int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, st := range s.state {
		if n <= s.amount && st.ActiveState.Running() {
			up++
		}
	}
	return up, s.amount
}

func (s *Supervisor) isReady() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

// checkReady serves once an instance is up (for a sticky group the
// dispatcher then serves, and the instance is in its set: an instance up
// is a member; for another group, an active instance takes connections on
// the shared socket itself), and reports READY=1 once, besides, the start
// jobs have ended (started is closed): `systemctl start` returns with the
// house up, or degraded and saying so, never with instances still coming.
func (s *Supervisor) checkReady(serve func(), started bool) {
	up, amount := s.upCount()
	if up == 0 {
		return
	}
	serve()
	if !started {
		return
	}
	s.mu.Lock()
	first := !s.ready
	s.ready = true
	s.mu.Unlock()
	if first {
		s.publish() // dispatch.json from the start, for status
		s.o.Notify("READY=1\nSTATUS=" + s.status())
		s.log.Info("supervisor ready", "up", up, "instances", amount, "sticky", s.disp != nil || s.kern != nil, "kernel", s.kern != nil)
	}
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// allDown reports whether every instance wanted is at rest with no job.
func (s *Supervisor) allDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := 1; n <= s.amount; n++ {
		st, ok := s.state[n]
		if ok && (!st.ActiveState.AtRest() || st.JobType != units.NoJob) {
			return false
		}
	}
	return true
}

// startFailed is the end of a start in which no instance became ready
// (within StartTimeout, or at all): it names each instance, its state and
// systemd's Result, in the log and in STATUS=, and returns the error Run
// ends with. why completes "no instance of group G ...".
func (s *Supervisor) startFailed(ctx context.Context, why string) error {
	_, amount := s.upCount()
	var each []string
	for n := 1; n <= amount; n++ {
		unit := s.g.Instance(n)
		s.mu.Lock()
		if st, ok := s.state[n]; ok {
			unit = st.Name // the side that speaks for the slot
		}
		s.mu.Unlock()
		st, err := s.o.Manager.State(ctx, unit)
		if err != nil {
			each = append(each, fmt.Sprintf("%s: %v", unit, err))
			continue
		}
		d := fmt.Sprintf("%s %s (%s)", unit, st.ActiveState, st.SubState)
		if x, err := s.o.Manager.MainExit(ctx, unit); err == nil && x.Result != "" && x.Result != "success" {
			d += ", result " + x.Result
		}
		each = append(each, d)
	}
	msg := fmt.Sprintf("no instance of group %s %s: %s", s.o.Group, why, strings.Join(each, "; "))
	s.log.Error(msg)
	s.o.Notify("STATUS=failed: " + msg)
	return errors.New(msg)
}

// checkIn records that the main loop went round, for the watchdog.
func (s *Supervisor) checkIn() { s.mainBeat.Store(time.Now().UnixNano()) }

// heartbeatPeriod is how often an idle main loop checks in: four times
// per watchdog period (the watchdog wants one within half of it).
func heartbeatPeriod(wd time.Duration) time.Duration {
	if wd <= 0 {
		return time.Hour
	}
	return max(wd/4, time.Millisecond)
}

// watchdog sends WATCHDOG=1 three times per period while alive says the
// supervisor is alive, and nothing otherwise: systemd then kills and
// restarts it (its workers keep running).
func (s *Supervisor) watchdog(ctx context.Context) {
	if s.o.Watchdog <= 0 {
		return
	}
	t := time.NewTicker(max(s.o.Watchdog/3, time.Millisecond))
	defer t.Stop()
	var lv liveness
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if why := lv.check(now, s.o.Watchdog, time.Unix(0, s.mainBeat.Load()), s.beats()); why != "" {
				if !warned {
					s.log.Error("watchdog not fed: systemd will restart the supervisor", "why", why)
					warned = true
				}
				continue
			}
			warned = false
			s.o.Notify("WATCHDOG=1")
		}
	}
}

// liveness follows the dispatch loops' beats across watchdog checks.
type liveness struct {
	last  []uint64
	since []time.Time // when last[i] was first seen odd and unchanged
}

// check returns why the supervisor is not alive at now, "" when it is:
// its main loop last checked in at main, over half a period ago; or a
// dispatch loop's beat stayed odd (inside one dispatch) and unchanged for
// half a period.
func (lv *liveness) check(now time.Time, period time.Duration, main time.Time, beats []uint64) string {
	if d := now.Sub(main); d > period/2 {
		return fmt.Sprintf("main loop last went round %v ago", d.Round(time.Millisecond))
	}
	if len(lv.since) != len(beats) {
		lv.since = make([]time.Time, len(beats))
		lv.last = make([]uint64, len(beats))
	}
	why := ""
	for i, b := range beats {
		if b%2 == 1 && b == lv.last[i] {
			if lv.since[i].IsZero() {
				lv.since[i] = now
			}
			if d := now.Sub(lv.since[i]); d >= period/2 && why == "" {
				why = fmt.Sprintf("dispatch loop %d inside one dispatch for %v", i, d.Round(time.Millisecond))
			}
		} else {
			lv.since[i] = time.Time{}
		}
		lv.last[i] = b
	}
	return why
}

// shutdown stops the group's workers when the supervisor itself is being
// stopped (systemctl stop powerhouse@GROUP), and leaves them running when
// it is restarted or killed: workers outlive their supervisor.
func (s *Supervisor) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	self, err := s.o.Manager.State(ctx, s.g.SupervisorUnit())
	reason := "signal"
	switch {
	case err == nil && self.JobType != "":
		reason = string(self.JobType) // stop, restart
	}
	keep := err != nil || self.JobType != "stop"
	detail := "its workers are stopped"
	if keep {
		detail = "its workers keep running"
	}
	s.emit(events.MasterShutdown, 0, fmt.Sprintf("supervisor of %s stopping (%s): %s", s.o.Group, reason, detail), map[string]string{"reason": reason})
	if keep {
		return
	}
	s.log.Info("supervisor stopped: stopping the group's workers")
	var wg sync.WaitGroup
	s.mu.Lock()
	for k := range s.sides {
		wg.Add(1)
		go func(unit string) {
			defer wg.Done()
			if err := s.o.Manager.Stop(ctx, unit); err != nil {
				s.log.Warn("stop failed", "unit", unit, "err", err)
			}
		}(s.g.InstanceSide(k.n, k.side))
	}
	s.mu.Unlock()
	wg.Wait()
}

// sideKey names one of the two services of slot n.
type sideKey struct {
	n    int
	side units.Side
}

// refresh re-reads the state of every instance, both sides.
func (s *Supervisor) refresh(ctx context.Context) error {
	sts, err := s.o.Manager.States(ctx, s.g.InstancePatterns()...)
	if err != nil {
		return err
	}
	seen := map[sideKey]bool{}
	for _, st := range sts {
		if n, side, ok := s.g.SideOf(st.Name); ok {
			seen[sideKey{n, side}] = true
			s.observe(ctx, n, side, st)
		}
	}
	s.mu.Lock()
	var gone []sideKey
	for k := range s.sides {
		if !seen[k] {
			gone = append(gone, k)
		}
	}
	s.mu.Unlock()
	for _, k := range gone {
		s.observe(ctx, k.n, k.side, units.UnitState{Name: s.g.InstanceSide(k.n, k.side), LoadState: "not-found", ActiveState: "inactive"})
	}
	return s.kernelRefresh(ctx)
}

// sideRank orders the states of a slot's two sides by how much each says
// about the slot: serving (running, no stop job), then a member (coming
// up, or running with a stop job queued), then busy (a job, or on its
// way down), then at rest, failed before inactive.
func sideRank(st units.UnitState) int {
	switch {
	case st.ActiveState.Running() && st.JobType != units.JobStop && Member(st):
		return 5
	case Member(st):
		return 4
	case !st.ActiveState.AtRest() || st.JobType != units.NoJob:
		return 3
	case st.ActiveState == units.Failed:
		return 2
	}
	return 1
}

// slotState returns the state that speaks for slot n, from its sides'
// (s.mu held): Member of it is true when either side is a member; it is
// running when either side runs; at rest with no job only when both
// sides are. ok is false when systemd knows neither side. Side A wins a
// tie (two sides serving is settled by settleSlots).
func (s *Supervisor) slotState(n int) (st units.UnitState, side units.Side, ok bool) {
	for _, sd := range []units.Side{units.SideA, units.SideB} {
		x, known := s.sides[sideKey{n, sd}]
		if known && (!ok || sideRank(x) > sideRank(st)) {
			st, side, ok = x, sd, true
		}
	}
	return st, side, ok
}

// observe records the state of one side of slot n, reports what changed
// as events (per process) and updates the dispatch set (per slot).
func (s *Supervisor) observe(ctx context.Context, n int, side units.Side, st units.UnitState) {
	var pid uint32
	// A side that drains (deactivating: its stop job) still has its
	// process: its worker.stop comes when the process ends.
	if st.ActiveState == units.Active || st.ActiveState == units.Reloading || st.ActiveState == units.Deactivating {
		if p, err := s.o.Manager.MainPID(ctx, st.Name); err == nil {
			pid = p
		}
	}
	k := sideKey{n, side}
	s.mu.Lock()
	prevPID := s.sidePIDs[k]
	// No main PID (even while systemd still says active: the process is
	// gone and the state has not caught up) means no process to report.
	if pid != 0 {
		s.sidePIDs[k] = pid
	} else {
		delete(s.sidePIDs, k)
	}
	if st.LoadState == "not-found" && st.ActiveState == "inactive" {
		delete(s.sides, k)
	} else {
		s.sides[k] = st
	}
	if pid != 0 && (st.JobType == units.JobStop || st.ActiveState == units.Deactivating) {
		if _, ok := s.draining[k]; !ok {
			s.draining[k] = time.Now()
		}
	} else {
		delete(s.draining, k)
	}
	prev, known := s.state[n]
	cur, curSide, present := s.slotState(n)
	if present {
		s.state[n] = cur
		if p := s.sidePIDs[sideKey{n, curSide}]; p != 0 {
			s.pids[n] = p
		} else {
			delete(s.pids, n)
		}
	} else {
		cur = units.UnitState{Name: s.g.Instance(n), LoadState: units.NotFound, ActiveState: units.Inactive}
		delete(s.state, n)
		delete(s.pids, n)
	}
	in := present && Member(cur) && n <= s.amount
	// A slot that came to rest, both sides, with nothing to restart it
	// was stopped (by an operator, a scale-down, a failure). Its
	// hand-off socket goes too, or connections still queued there would
	// start it again behind everybody's back; `systemctl start` brings
	// both back. Not while one side still runs or comes up: a reload's
	// stop of the old side would take the socket, and with it (Requires=)
	// the new side.
	stopSocket := (s.disp != nil || s.kern != nil) && known && prev.ActiveState != "inactive" &&
		cur.ActiveState == "inactive" && cur.JobType == ""
	s.mu.Unlock()
	if stopSocket {
		// Kernel mode: the supervisor's copy of the instance's socket
		// goes too, or it would stay in the reuseport group.
		s.kernelRelease(n, "the instance stopped")
		go s.stopRestingSocket(ctx, n)
	}
	s.log.Debug("instance state", "instance", n, "unit", st.Name, "state", st.ActiveState, "sub", st.SubState, "job", st.JobType, "slot", cur.ActiveState)
	// A main PID that went away, or changed between two looks (a restart
	// faster than the signals), is a stop; a new one is a start.
	if prevPID != 0 && prevPID != pid {
		s.stopped(ctx, n, st, prevPID)
		s.mu.Lock()
		other := s.sides[sideKey{n, side.Other()}]
		s.mu.Unlock()
		if s.disp != nil && !other.ActiveState.Running() && other.ActiveState != units.Deactivating {
			// The slot's only process ended: every connection it held
			// went with it, reported closed or not (a crash reports
			// nothing), so its open count starts again from zero. Not
			// while the other side runs: a handover's old process
			// ending leaves the new one's connections open.
			s.disp.Forget(n)
		}
	}
	if pid != 0 && pid != prevPID && !s.quiet {
		s.emit(events.WorkerStart, n, fmt.Sprintf("worker %s@%d started, pid %d (%s)", s.o.Group, n, pid, st.Name), map[string]string{"pid": fmt.Sprint(pid), "unit": st.Name})
	}
	// Not while the first refresh learns the instances one by one: a
	// table over the first of them would send every client there. Run
	// syncs once it knows them all.
	if !s.quiet {
		s.kernelSync()
	}
	if s.disp == nil {
		return
	}
	if in {
		if s.disp.Up.Add(n) {
			s.log.Info("instance joins dispatch", "instance", n)
		}
	} else if s.disp.Up.Remove(n) {
		s.log.Info("instance leaves dispatch", "instance", n, "state", st.ActiveState, "job", st.JobType)
	}
}

// stopRestingSocket stops the socket of instance n, which came to rest
// stopped. It runs after the observation, so the operator may have started
// the instance again meanwhile (systemctl stop, then start), or a reload
// the other side: the stop is skipped unless both sides are still at rest
// with no job, and it is enqueued in mode "fail", so that it never
// cancels a start queued after that look (Requires= would take the
// instance along).
func (s *Supervisor) stopRestingSocket(ctx context.Context, n int) {
	for _, side := range []units.Side{units.SideA, units.SideB} {
		st, err := s.o.Manager.State(ctx, s.g.InstanceSide(n, side))
		if err != nil || !st.ActiveState.AtRest() || st.JobType != "" {
			return
		}
		if side == units.SideA && st.ActiveState != "inactive" {
			return
		}
	}
	if err := s.o.Manager.StopUnqueued(ctx, s.g.HandoffSocket(n)); err != nil {
		s.log.Debug("socket of a stopped instance not stopped", "instance", n, "err", err)
	}
}

// stopped reports that instance n's process pid ended, with its exit code
// or signal, and whether it was stopped on request.
func (s *Supervisor) stopped(ctx context.Context, n int, st units.UnitState, pid uint32) {
	f := map[string]string{"pid": fmt.Sprint(pid)}
	how := "ended"
	if x, err := s.o.Manager.MainExit(ctx, st.Name); err == nil {
		f["result"] = x.Result
		switch x.Kind {
		case units.Exited:
			f["exit_code"] = fmt.Sprint(x.Status)
			how = fmt.Sprintf("exited with code %d", x.Status)
		case units.Killed, units.Dumped:
			name := unix.SignalName(x.Signal())
			f["signal"] = name
			f["signal_number"] = fmt.Sprint(x.Status)
			how = "killed by " + name
		}
	}
	f["unit"] = st.Name
	s.emit(events.WorkerStop, n, fmt.Sprintf("worker %s@%d (pid %d, %s) %s", s.o.Group, n, pid, st.Name, how), f)
	if st.JobType == "stop" || (Stopping(st) && st.ActiveState != "failed") {
		s.emit(events.WorkerShutdown, n, fmt.Sprintf("worker %s@%d (%s) shut down on request", s.o.Group, n, st.Name), map[string]string{"pid": fmt.Sprint(pid), "unit": st.Name})
	}
}

func (s *Supervisor) emit(t events.Type, n int, msg string, fields map[string]string) {
	e := events.Event{Type: t, Group: s.o.Group, Instance: n, Message: msg, Fields: fields}
	// The journal entry is the event; a plain log line only when there is
	// no journal to take it.
	if err := s.o.Emit(e); err != nil {
		s.log.Info(msg, "event", string(t))
		return
	}
	s.log.Debug(msg, "event", string(t))
}

// Member reports whether an instance in state st takes connections: it
// runs, or systemd is bringing it (back) up. Its hand-off socket queues
// connections while it restarts.
func Member(st units.UnitState) bool {
	switch st.LoadState {
	case "masked", "not-found", "error", "bad-setting":
		return false
	}
	switch st.ActiveState {
	case "active", "reloading", "activating":
		return true
	case "deactivating":
		return st.JobType != "stop"
	case "inactive":
		return st.JobType == "start" || st.JobType == "restart"
	}
	return false
}

// Stopping reports whether st shows a stop that nothing will undo: a stop
// job, or the unit at rest with no job, or failed, or masked.
func Stopping(st units.UnitState) bool {
	if st.LoadState == "masked" {
		return true
	}
	switch st.ActiveState {
	case "deactivating":
		return st.JobType == "stop"
	case "inactive", "failed":
		return st.JobType == ""
	}
	return false
}

// status is the STATUS= line, one line that `systemctl status` shows:
// how many instances are up of those wanted ("degraded: 1/3 up" when
// fewer), and for a sticky group the rate of connections handed off over
// the last second and the sticky misses, then only what is not zero
// (dropped, PROXY rejects, connections waiting for a full queue):
// "4/4 up · 1.2k conn/s · 0 misses".
func (s *Supervisor) status() string {
	up, amount := s.upCount()
	msg := fmt.Sprintf("%d/%d up", up, amount)
	switch {
	case !s.isReady():
		msg = "starting: " + msg
	case up < amount:
		msg = "degraded: " + msg
	}
	if s.disp != nil {
		st := s.disp.Stats()
		msg += " · " + FormatRate(math.Float64frombits(s.rate.Load())) + " conn/s · " + plural(st.StickyMiss, "miss", "misses")
		if st.Dropped > 0 {
			msg += fmt.Sprintf(" · %d dropped", st.Dropped)
		}
		if n := st.ProxyErrors + st.ProxyUntrusted + st.ProxyBusy; n > 0 {
			msg += fmt.Sprintf(" · %d PROXY rejects", n)
		}
		queued := 0
		for _, n := range st.Queued {
			queued += n
		}
		if queued > 0 {
			msg += fmt.Sprintf(" · %d waiting for a full hand-off queue", queued)
		}
	}
	msg += s.kernelLine()
	if op := s.runningOp(); op != "" {
		msg += " · " + op + " running"
	}
	return msg
}

// FormatRate writes a rate in at most four characters: 0, 12, 980, 1.2k,
// 45k, 1.3M, as STATUS= shows it (and `powerhouse top`, so that both
// read alike).
func FormatRate(r float64) string {
	switch {
	case r < 999.5:
		return strconv.FormatFloat(r, 'f', 0, 64)
	case r < 9950:
		return strconv.FormatFloat(r/1e3, 'f', 1, 64) + "k"
	case r < 999.5e3:
		return strconv.FormatFloat(r/1e3, 'f', 0, 64) + "k"
	}
	return strconv.FormatFloat(r/1e6, 'f', 1, 64) + "M"
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.FormatUint(n, 10) + " " + many
}

// measureRate updates the connections-per-second figure of STATUS=
// from the dispatcher's count (main loop, once a second).
func (s *Supervisor) measureRate(now time.Time) {
	if s.disp == nil {
		return
	}
	h := s.disp.Stats().HandedOff
	if !s.lastAt.IsZero() {
		if dt := now.Sub(s.lastAt).Seconds(); dt > 0 {
			s.rate.Store(math.Float64bits(float64(h-s.lastHanded) / dt))
		}
	}
	s.lastHanded, s.lastAt = h, now
}

// DispatchState is what a sticky supervisor publishes in
// /run/powerhouse/GROUP/dispatch.json for `powerhouse status`.
type DispatchState struct {
	DispatchCounters
	PerInstance map[int]uint64 `json:"per_instance"`
	InDispatch  []int          `json:"in_dispatch"`
	Queued      map[int]int    `json:"queued"`
}

// DispatchCounters are a sticky group's counters since its supervisor
// started, those of sticky.Stats of the same names: what `powerhouse
// status` shows of dispatch.json (docs/status.md).
type DispatchCounters struct {
	HandedOff      uint64 `json:"handed_off"`
	StickyMiss     uint64 `json:"sticky_misses"`
	Dropped        uint64 `json:"dropped"`
	ProxyErrors    uint64 `json:"proxy_errors"`
	QueueFull      uint64 `json:"queue_full"`
	SendErrors     uint64 `json:"send_errors"`
	Redials        uint64 `json:"redials"`
	AcceptErrors   uint64 `json:"accept_errors"`
	ProxyUntrusted uint64 `json:"proxy_untrusted"`
	ProxyBusy      uint64 `json:"proxy_busy"`
	AcceptPauses   uint64 `json:"accept_pauses"`
}

// dispatchState returns the dispatcher's counters and set, nil-safe.
func (s *Supervisor) dispatchState() DispatchState {
	st := s.disp.Stats()
	return DispatchState{
		DispatchCounters: DispatchCounters{HandedOff: st.HandedOff, StickyMiss: st.StickyMiss, Dropped: st.Dropped,
			ProxyErrors: st.ProxyErrors, QueueFull: st.QueueFull, SendErrors: st.SendErrors, Redials: st.Redials,
			AcceptErrors: st.AcceptErrors, ProxyUntrusted: st.ProxyUntrusted, ProxyBusy: st.ProxyBusy,
			AcceptPauses: st.AcceptPauses},
		PerInstance: st.PerInstance, InDispatch: s.disp.Up.Snapshot().IDs(), Queued: st.Queued}
}

func (s *Supervisor) publish() {
	s.measureRate(time.Now())
	s.o.Notify("STATUS=" + s.status())
	if s.disp == nil {
		return
	}
	b, err := json.Marshal(s.dispatchState())
	if err == nil {
		_, err = units.WriteFile(s.g.DispatchStatePath(), b, units.Public)
	}
	if err != nil {
		s.log.Debug("dispatch state not written", "err", err)
	}
}

// writeGroupConfig writes the JSON configuration the workers read, for
// their group's eyes only (WriteGroupConfig).
func (s *Supervisor) writeGroupConfig(w *config.Worker) error {
	readers, err := WriteGroupConfig(s.g, w)
	if err != nil {
		return fmt.Errorf("supervise: %w", err)
	}
	s.log.Debug("group config written", "readers", readers)
	return nil
}

// listeners turns the inherited sockets into named dispatcher listeners,
// matching each socket's address with the group's listen entries. For a
// group that is not sticky the sockets belong to the workers: the
// supervisor's copies are closed (systemd keeps its own).
func (s *Supervisor) listeners() ([]sticky.Listener, error) {
	if s.w.KernelDispatch() {
		// The instances' own sockets: the supervisor steers, it does
		// not accept.
		return nil, s.kernelStart(s.o.Files)
	}
	if s.disp == nil {
		for _, f := range s.o.Files {
			f.Close()
		}
		return nil, nil
	}
	var out []sticky.Listener
	for _, f := range s.o.Files {
		a, err := sockName(f)
		if err != nil {
			return nil, fmt.Errorf("supervise: inherited socket %s: %w", f.Name(), err)
		}
		cfg, ok := matchListener(s.w.Listen, a)
		if !ok {
			return nil, fmt.Errorf("supervise: inherited socket %s matches no listen address of group %s", a, s.o.Group)
		}
		out = append(out, sticky.Listener{Name: cfg.Name, Proxy: cfg.ProxyProtocol, ProxyFrom: cfg.ProxyFrom, File: f})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("supervise: sticky group got no listening socket from systemd (is %s running?)", strings.Join(generator.GroupSockets(s.w), " or "))
	}
	return out, nil
}

// sockName returns the local address of a socket file.
func sockName(f *os.File) (net.Addr, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))), nil
	case *unix.SockaddrInet6:
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))), nil
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}, nil
	}
	return nil, fmt.Errorf("unsupported socket address %T", sa)
}

// matchListener finds the configured listener bound at a.
func matchListener(ls []config.Listener, a net.Addr) (config.Listener, bool) {
	switch a := a.(type) {
	case *net.UnixAddr:
		for _, l := range ls {
			if l.Network == "unix" && l.Address == a.Name {
				return l, true
			}
		}
	case *net.TCPAddr:
		ap := a.AddrPort()
		for _, l := range ls {
			if l.Network != "tcp" || l.Port() != int(ap.Port()) {
				continue
			}
			if strings.HasPrefix(l.Address, ":") {
				return l, true
			}
			if want, err := netip.ParseAddrPort(l.Address); err == nil && want.Addr().Unmap() == ap.Addr().Unmap() {
				return l, true
			}
		}
	}
	return config.Listener{}, false
}
