package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
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
	Scope   units.Scope
	Manager units.Manager
	// Files are the sockets systemd passed (LISTEN_FDS): the group's
	// public listening sockets.
	Files []*os.File
	// Notify sends a state string to systemd (sd_notify); nil for none.
	Notify func(state string) error
	// Emit records an event; default events.Write (journald).
	Emit func(events.Event) error
	Log  *slog.Logger
	// StartTimeout bounds the wait for the instances to start before the
	// supervisor reports ready anyway. Default 90s.
	StartTimeout time.Duration
	// Reload delivers a request to re-read the configuration file (SIGHUP):
	// a changed amount starts or stops instances.
	Reload <-chan struct{}
	// Poll is the interval of the full state refresh that backs up the
	// change signals. Default 5s.
	Poll time.Duration
}

// Supervisor is one running group supervisor.
type Supervisor struct {
	o      Options
	g      units.Group
	w      *config.Worker
	log    *slog.Logger
	disp   *sticky.Dispatcher
	mu     sync.Mutex
	amount int // instances wanted; guarded by mu
	state  map[int]units.UnitState
	pids   map[int]uint32 // main PID last seen active
	quiet  bool           // record states without reporting events (start-up)
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
		o.StartTimeout = 90 * time.Second
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
	s := &Supervisor{o: o, g: units.Group{Name: o.Group, Scope: o.Scope}, w: w, log: o.Log.With("group", o.Group), amount: w.Amount, state: map[int]units.UnitState{}, pids: map[int]uint32{}}
	if w.Sticky {
		s.disp = sticky.NewDispatcher(sticky.DispatcherOptions{
			Path: s.g.HandoffPath,
			Log:  s.log,
		})
	}
	return s, nil
}

// Dispatcher returns the group's dispatcher, nil for a non-sticky group.
func (s *Supervisor) Dispatcher() *sticky.Dispatcher { return s.disp }

// Run supervises until ctx ends (SIGTERM). It returns nil on a clean stop.
func (s *Supervisor) Run(ctx context.Context) error {
	if err := s.writeGroupConfig(s.w); err != nil {
		return err
	}
	listeners, err := s.listeners()
	if err != nil {
		return err
	}
	changes, err := s.o.Manager.Watch(ctx)
	if err != nil {
		return err
	}
	// Learn what runs already (after a supervisor restart the workers kept
	// running: no worker.start for them), then make sure instances
	// 1..amount run and no other does.
	s.quiet = true
	err = s.refresh(ctx)
	s.quiet = false
	if err != nil {
		return err
	}
	dctx, stopDispatch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDispatch()
	dispatchErr := make(chan error, 1)
	serving := false
	serve := func() {
		if s.disp != nil && !serving {
			serving = true
			go func() { dispatchErr <- s.disp.Serve(dctx, listeners) }()
		}
	}
	// After a restart, instances are up already: serve them at once.
	// converge waits for every start job, up to StartTimeout, and one
	// instance slow to start (or hanging in its start) must not leave the
	// others' clients in the kernel's backlog meanwhile. At first start,
	// with nothing up, connections wait in the backlog for converge
	// instead of being closed for want of an instance.
	if s.disp != nil && s.disp.Up.Len() > 0 {
		serve()
	}
	s.converge(ctx)
	if err := s.refresh(ctx); err != nil {
		if serving {
			stopDispatch()
			<-dispatchErr
		}
		return err
	}
	serve()
	s.publish()
	s.o.Notify("READY=1\nSTATUS=" + s.status())
	s.log.Info("supervisor ready", "instances", s.w.Amount, "sticky", s.w.Sticky)

	tick := time.NewTicker(s.o.Poll)
	defer tick.Stop()
	// Counters change with every connection: publish them once a second.
	pub := time.NewTicker(time.Second)
	defer pub.Stop()
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-dispatchErr:
			runErr = err
			break loop
		case name, ok := <-changes:
			if !ok {
				break loop
			}
			if n, ok := s.g.InstanceOf(name); ok {
				if st, err := s.o.Manager.State(ctx, name); err == nil {
					s.observe(ctx, n, st)
				}
			} else if name == s.g.SupervisorUnit() {
				continue
			}
		case <-tick.C:
			if err := s.refresh(ctx); err != nil {
				s.log.Warn("refresh failed", "err", err)
			}
		case <-s.o.Reload:
			s.reconfigure(ctx)
		case <-pub.C:
			s.publish()
		}
		s.o.Notify("STATUS=" + s.status())
	}
	s.o.Notify("STOPPING=1")
	stopDispatch()
	if s.disp != nil && runErr == nil {
		<-dispatchErr
	}
	s.shutdown()
	return runErr
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
	for n := range s.state {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			if err := s.o.Manager.Stop(ctx, s.g.Instance(n)); err != nil {
				s.log.Warn("stop failed", "instance", n, "err", err)
			}
		}(n)
	}
	s.mu.Unlock()
	wg.Wait()
}

// reconfigure re-reads the configuration file and applies a new amount.
func (s *Supervisor) reconfigure(ctx context.Context) {
	c, err := config.Load(s.o.Config.File)
	if err != nil {
		s.log.Warn("configuration not reloaded", "err", err)
		return
	}
	w := c.Worker(s.o.Group)
	if w == nil {
		s.log.Warn("configuration not reloaded: the group is gone", "file", c.File)
		return
	}
	s.mu.Lock()
	old := s.amount
	s.amount = w.Amount
	s.mu.Unlock()
	if err := s.writeGroupConfig(w); err != nil {
		s.log.Warn("group config not written", "err", err)
	}
	if old != w.Amount {
		s.log.Info("scaling", "from", old, "to", w.Amount)
	}
	s.converge(ctx)
	if err := s.refresh(ctx); err != nil {
		s.log.Warn("refresh failed", "err", err)
	}
}

// converge starts instances 1..amount and stops any instance above.
func (s *Supervisor) converge(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.o.StartTimeout)
	defer cancel()
	var wg sync.WaitGroup
	s.mu.Lock()
	amount := s.amount
	for n := 1; n <= amount; n++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			if err := s.o.Manager.Start(ctx, s.g.Instance(n)); err != nil {
				s.log.Warn("instance did not start", "instance", n, "err", err)
			}
		}(n)
	}
	for n, st := range s.state {
		if n > amount && st.ActiveState != "inactive" && st.ActiveState != "failed" {
			// Out of dispatch first: a connection sent to a surplus
			// instance while it stops would be queued in its hand-off
			// socket and start it again (socket activation), and a
			// scale-down under load never ended.
			if s.disp != nil && s.disp.Up.Remove(n) {
				s.log.Info("instance leaves dispatch", "instance", n, "reason", "scale-down")
			}
			wg.Add(1)
			go func(n int) {
				defer wg.Done()
				// Stopping the hand-off socket stops the service too
				// (Requires=), in one transaction: the worker drains
				// what was queued before it left dispatch, and nothing
				// can start it again.
				if s.disp != nil {
					if err := s.o.Manager.Stop(ctx, s.g.HandoffSocket(n)); err != nil {
						s.log.Warn("surplus instance's hand-off socket did not stop", "instance", n, "err", err)
					}
				}
				if err := s.o.Manager.Stop(ctx, s.g.Instance(n)); err != nil {
					s.log.Warn("surplus instance did not stop", "instance", n, "err", err)
				}
			}(n)
		}
	}
	s.mu.Unlock()
	wg.Wait()
}

// refresh re-reads the state of every instance.
func (s *Supervisor) refresh(ctx context.Context) error {
	sts, err := s.o.Manager.States(ctx, s.g.InstancePattern())
	if err != nil {
		return err
	}
	seen := map[int]bool{}
	for _, st := range sts {
		if n, ok := s.g.InstanceOf(st.Name); ok {
			seen[n] = true
			s.observe(ctx, n, st)
		}
	}
	s.mu.Lock()
	var gone []int
	for n := range s.state {
		if !seen[n] {
			gone = append(gone, n)
		}
	}
	s.mu.Unlock()
	for _, n := range gone {
		s.observe(ctx, n, units.UnitState{Name: s.g.Instance(n), LoadState: "not-found", ActiveState: "inactive"})
	}
	return nil
}

// observe records an instance's state, reports what changed as events and
// updates the dispatch set.
func (s *Supervisor) observe(ctx context.Context, n int, st units.UnitState) {
	var pid uint32
	if st.ActiveState == "active" || st.ActiveState == "reloading" {
		if p, err := s.o.Manager.MainPID(ctx, st.Name); err == nil {
			pid = p
		}
	}
	s.mu.Lock()
	prevPID := s.pids[n]
	// No main PID (even while systemd still says active: the process is
	// gone and the state has not caught up) means no process to report.
	if pid != 0 {
		s.pids[n] = pid
	} else {
		delete(s.pids, n)
	}
	prev, known := s.state[n]
	if st.LoadState == "not-found" && st.ActiveState == "inactive" {
		delete(s.state, n)
	} else {
		s.state[n] = st
	}
	in := Member(st) && n <= s.amount
	// An instance that came to rest with nothing to restart it was
	// stopped (by an operator, a scale-down, a failure). Its hand-off
	// socket goes too, or connections still queued there would start it
	// again behind everybody's back; `systemctl start` brings both back.
	stopSocket := s.disp != nil && known && prev.ActiveState != "inactive" &&
		st.ActiveState == "inactive" && st.JobType == ""
	s.mu.Unlock()
	if stopSocket {
		go func() {
			if err := s.o.Manager.Stop(ctx, s.g.HandoffSocket(n)); err != nil {
				s.log.Debug("hand-off socket not stopped", "instance", n, "err", err)
			}
		}()
	}
	if known && prev.ActiveState != st.ActiveState {
		s.log.Debug("instance state", "instance", n, "state", st.ActiveState, "sub", st.SubState, "job", st.JobType)
	}
	// A main PID that went away, or changed between two looks (a restart
	// faster than the signals), is a stop; a new one is a start.
	if prevPID != 0 && prevPID != pid {
		s.stopped(ctx, n, st, prevPID)
	}
	if pid != 0 && pid != prevPID && !s.quiet {
		s.emit(events.WorkerStart, n, fmt.Sprintf("worker %s@%d started, pid %d", s.o.Group, n, pid), map[string]string{"pid": fmt.Sprint(pid)})
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
	s.emit(events.WorkerStop, n, fmt.Sprintf("worker %s@%d (pid %d) %s", s.o.Group, n, pid, how), f)
	if st.JobType == "stop" || (Stopping(st) && st.ActiveState != "failed") {
		s.emit(events.WorkerShutdown, n, fmt.Sprintf("worker %s@%d shut down on request", s.o.Group, n), map[string]string{"pid": fmt.Sprint(pid)})
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

func (s *Supervisor) status() string {
	s.mu.Lock()
	up := 0
	for _, st := range s.state {
		if st.ActiveState == "active" {
			up++
		}
	}
	amount := s.amount
	s.mu.Unlock()
	msg := fmt.Sprintf("%d/%d instances active", up, amount)
	if s.disp != nil {
		st := s.disp.Stats()
		msg += fmt.Sprintf(", %d in dispatch, %d connections handed off, %d sticky misses, %d dropped, %d PROXY errors",
			s.disp.Up.Len(), st.HandedOff, st.StickyMiss, st.Dropped, st.ProxyErrors)
		queued := 0
		for _, n := range st.Queued {
			queued += n
		}
		if queued > 0 {
			msg += fmt.Sprintf(", %d waiting for a full hand-off queue", queued)
		}
	}
	return msg
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
}

func (s *Supervisor) publish() {
	s.o.Notify("STATUS=" + s.status())
	if s.disp == nil {
		return
	}
	st := s.disp.Stats()
	ds := DispatchState{
		DispatchCounters: DispatchCounters{HandedOff: st.HandedOff, StickyMiss: st.StickyMiss, Dropped: st.Dropped,
			ProxyErrors: st.ProxyErrors, QueueFull: st.QueueFull, SendErrors: st.SendErrors, Redials: st.Redials,
			AcceptErrors: st.AcceptErrors, ProxyUntrusted: st.ProxyUntrusted, ProxyBusy: st.ProxyBusy},
		PerInstance: st.PerInstance, InDispatch: s.disp.Up.Snapshot().IDs(), Queued: st.Queued}
	b, err := json.Marshal(ds)
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
