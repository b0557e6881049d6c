package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/units"
)

// maxWaiting bounds the operations waiting behind the running one: more
// are refused (ErrFailed) rather than held.
const maxWaiting = 16

// operation is one operation on the group (reload, scale, reconfigure),
// run by runOps in the supervisor's own goroutine.
type operation struct {
	name string
	run  func(ctx context.Context, progress func(Progress)) (OperationResult, error)
	// progress receives the progress lines while the caller reads them;
	// nil for no caller. Sends never block: a caller that stopped
	// reading misses lines, the operation goes on.
	progress chan Progress
	done     chan opResult // one result, buffered
}

type opResult struct {
	res OperationResult
	err error
}

// failed is an operation's failure, ErrFailed with its message.
func failed(format string, args ...any) error {
	return &CallError{Name: ErrFailed, Message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) error {
	return &CallError{Name: ErrInvalid, Message: fmt.Sprintf(format, args...)}
}

// submit queues an operation behind the running one and returns it; its
// caller waits on done. A caller queued behind another operation gets a
// progress line that says so.
func (s *Supervisor) submit(name string, run func(context.Context, func(Progress)) (OperationResult, error), progress chan Progress) error {
	_, err := s.enqueue(name, run, progress)
	return err
}

func (s *Supervisor) enqueue(name string, run func(context.Context, func(Progress)) (OperationResult, error), progress chan Progress) (*operation, error) {
	op := &operation{name: name, run: run, progress: progress, done: make(chan opResult, 1)}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.stopping {
		return nil, &CallError{Name: ErrStopping, Message: fmt.Sprintf("the supervisor of %s is stopping: no %s", s.o.Group, name)}
	}
	if s.running != "" || s.waiting > 0 {
		what := s.running
		if what == "" {
			what = "operation"
		}
		op.report(Progress{Message: fmt.Sprintf("%s %s: waiting for the running %s to end (%d waiting before)", name, s.o.Group, what, s.waiting)})
	}
	select {
	case s.ops <- op:
		s.waiting++
		return op, nil
	default:
		return nil, failed("%s %s: %d operations are waiting already; try again later", name, s.o.Group, maxWaiting)
	}
}

func (op *operation) report(p Progress) {
	if op.progress == nil {
		return
	}
	select {
	case op.progress <- p:
	default:
	}
}

// runningOp names the operation running now, "" for none.
func (s *Supervisor) runningOp() string {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	return s.running
}

// runOps runs the operations one at a time, in the order they came, until
// ctx ends; then those still waiting fail with ErrStopping. Each result
// is logged here, whether its caller is still there or not.
func (s *Supervisor) runOps(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			s.opMu.Lock()
			s.stopping = true
			s.opMu.Unlock()
			for {
				select {
				case op := <-s.ops:
					op.done <- opResult{err: &CallError{Name: ErrStopping, Message: fmt.Sprintf("the supervisor of %s is stopping: %s not run", s.o.Group, op.name)}}
				default:
					return
				}
			}
		case op := <-s.ops:
			if ctx.Err() != nil {
				// Stopping: this one, and those behind it, do not run.
				op.done <- opResult{err: &CallError{Name: ErrStopping, Message: fmt.Sprintf("the supervisor of %s is stopping: %s not run", s.o.Group, op.name)}}
				continue
			}
			s.opMu.Lock()
			s.waiting--
			s.running = op.name
			s.opMu.Unlock()
			start := time.Now()
			res, err := op.run(ctx, func(p Progress) {
				s.log.Info(p.Message, "operation", op.name)
				op.report(p)
			})
			if err != nil && ctx.Err() != nil {
				err = &CallError{Name: ErrStopping, Message: fmt.Sprintf("the supervisor of %s is stopping: %s interrupted: %v", s.o.Group, op.name, err)}
			}
			s.opMu.Lock()
			s.running = ""
			s.opMu.Unlock()
			if err != nil {
				s.log.Error(op.name+" failed", "operation", op.name, "err", err, "took", time.Since(start).Round(time.Millisecond))
			} else {
				s.log.Info(res.Message, "operation", op.name, "took", time.Since(start).Round(time.Millisecond))
			}
			op.done <- opResult{res, err}
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
	}
}

// Reload is MethodReload: a handover of instances 1..amount, one at a
// time (handoverAll): each slot's new process is started beside the old
// one and ready (READY=1) before the old one is told to stop; the old
// ones drain in the background, overlapping. It stops at the first
// instance whose new process does not become ready, naming it and why;
// that one and the instances after it keep their old process.
func (s *Supervisor) reload(ctx context.Context, progress func(Progress)) (OperationResult, error) {
	s.mu.Lock()
	w, amount := s.w, s.amount
	s.mu.Unlock()
	if !w.Reloadable {
		return OperationResult{}, failed("group %s is not reloadable (reloadable = false in %s)", s.o.Group, s.o.Config.File)
	}
	list := make([]int, amount)
	for i := range list {
		list[i] = i + 1
	}
	done, err := s.handoverAll(ctx, "reload", w, list, nil, progress)
	if err != nil {
		return OperationResult{Instances: done}, err
	}
	return OperationResult{Message: fmt.Sprintf("reload %s: %d instances handed over; old processes drain for up to %v", s.o.Group, len(done), span(w.Service.TimeoutStop)), Instances: done}, nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// maxExtend stands for an infinite timeout in EXTEND_TIMEOUT_USEC=.
const maxExtend = time.Hour

var spanRE = regexp.MustCompile(`^([0-9]+)(us|ms|s|min|h)?$`)

// span reads a time span of [worker.service] (config validates them:
// "30s", "2min", "500ms", "infinity"); "" is systemd's default of 90s, and
// infinity maxExtend.
func span(v string) time.Duration {
	m := spanRE.FindStringSubmatch(v)
	if m == nil {
		if v == "infinity" {
			return maxExtend
		}
		return 90 * time.Second
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return maxExtend
	}
	unit := map[string]time.Duration{"": time.Second, "us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "min": time.Minute, "h": time.Hour}[m[2]]
	if n > int64(maxExtend/unit) {
		return maxExtend
	}
	return time.Duration(n) * unit
}

// handoverBound is the longest the handover of one instance may take:
// the other side's drain from an earlier reload (its stop timeout), the
// new side's start timeout, and, when it does not become ready, its stop.
func handoverBound(svc config.Service) time.Duration {
	return 2*span(svc.TimeoutStop) + span(svc.TimeoutStart)
}

// scale is MethodScale: run amount instances from now on.
func (s *Supervisor) scale(amount int) func(context.Context, func(Progress)) (OperationResult, error) {
	return func(ctx context.Context, progress func(Progress)) (OperationResult, error) {
		return s.scaleTo(ctx, amount, progress)
	}
}

// scaleTo makes instances 1..amount run and stops any instance above; -1
// keeps the amount wanted. It returns when the jobs are done, or fails
// naming each instance that did not start or stop.
func (s *Supervisor) scaleTo(ctx context.Context, amount int, progress func(Progress)) (OperationResult, error) {
	if amount != -1 && (amount < 1 || amount > config.MaxAmount) {
		return OperationResult{}, invalid("scale %s: %d instances: use 1 to %d", s.o.Group, amount, config.MaxAmount)
	}
	s.mu.Lock()
	old := s.amount
	if amount == -1 {
		amount = old
	}
	s.amount = amount
	s.mu.Unlock()
	if old != amount {
		s.log.Info("scaling", "from", old, "to", amount)
	}
	// Kernel mode: the surplus leaves the bucket table before it stops.
	s.kernelSync()
	started, stopped, err := s.converge(ctx, progress)
	res := OperationResult{Instances: append(started, stopped...)}
	if err != nil {
		return res, err
	}
	res.Message = fmt.Sprintf("scale %s: %d instances running", s.o.Group, amount)
	if len(started) > 0 {
		res.Message += fmt.Sprintf("; started %s", joinInts(started))
	}
	if len(stopped) > 0 {
		res.Message += fmt.Sprintf("; stopped %s", joinInts(stopped))
	}
	return res, nil
}

// converge starts instances 1..amount and stops any instance above, each
// job in parallel, bounded by StartTimeout. It returns the instances it
// started (that were not running) and stopped, and an error naming every
// instance whose job failed.
func (s *Supervisor) converge(ctx context.Context, progress func(Progress)) (started, stopped []int, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.StartTimeout)
	defer cancel()
	s.mu.Lock()
	amount := s.amount
	known := map[sideKey]units.UnitState{}
	for k, st := range s.sides {
		known[k] = st
	}
	s.mu.Unlock()
	// Fresh states when systemd answers; what the main loop saw otherwise.
	if sts, err := s.o.Manager.States(ctx, s.g.InstancePatterns()...); err == nil {
		known = map[sideKey]units.UnitState{}
		for _, st := range sts {
			if n, side, ok := s.g.SideOf(st.Name); ok {
				known[sideKey{n, side}] = st
			}
		}
	}
	slots := map[int]bool{}
	for k := range known {
		slots[k.n] = true
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	fail := func(n int, what, unit string, err error) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf("instance %d (%s) did not %s: %v", n, unit, what, err))
		mu.Unlock()
	}
	for n := 1; n <= amount; n++ {
		// A slot runs when either side does; its start (a no-op for a
		// side running, a wait for one coming up) is that side's, or
		// side A's when neither is.
		a, b := known[sideKey{n, units.SideA}], known[sideKey{n, units.SideB}]
		side := units.SideA
		switch {
		case serving(a):
		case serving(b):
			side = units.SideB
		case Member(b) && !Member(a):
			side = units.SideB
		}
		unit := s.g.InstanceSide(n, side)
		if !serving(a) && !serving(b) {
			started = append(started, n)
			progress(Progress{Message: fmt.Sprintf("scale %s: starting %s", s.o.Group, unit), Instance: n})
		}
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			if err := s.o.Manager.Start(ctx, unit); err != nil {
				if x, xerr := s.o.Manager.MainExit(ctx, unit); xerr == nil && x.Result != "" && x.Result != "success" {
					err = fmt.Errorf("%w (result %s)", err, x.Result)
				}
				fail(n, "start", unit, err)
			}
		}(n)
	}
	for n := range slots {
		a, b := known[sideKey{n, units.SideA}], known[sideKey{n, units.SideB}]
		if n <= amount || a.ActiveState.AtRest() && a.JobType == units.NoJob && b.ActiveState.AtRest() && b.JobType == units.NoJob {
			continue
		}
		stopped = append(stopped, n)
		progress(Progress{Message: fmt.Sprintf("scale %s: stopping instance %d", s.o.Group, n), Instance: n})
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
			// Stopping the hand-off socket stops both sides too
			// (Requires=), in one transaction: the worker drains what
			// was queued before it left dispatch, and nothing can start
			// it again.
			// Kernel mode: its listening socket, likewise.
			if s.disp != nil || s.kern != nil {
				if err := s.o.Manager.Stop(ctx, s.g.HandoffSocket(n)); err != nil {
					fail(n, "stop its socket", s.g.HandoffSocket(n), err)
				}
			}
			for _, side := range []units.Side{units.SideA, units.SideB} {
				unit := s.g.InstanceSide(n, side)
				if st, ok := known[sideKey{n, side}]; !ok || st.ActiveState.AtRest() && st.JobType == units.NoJob {
					continue
				}
				if err := s.o.Manager.Stop(ctx, unit); err != nil {
					fail(n, "stop", unit, err)
				}
			}
		}(n)
	}
	wg.Wait()
	sort.Ints(started)
	sort.Ints(stopped)
	if len(failures) > 0 {
		sort.Strings(failures)
		return started, stopped, failed("scale %s to %d: %s", s.o.Group, amount, strings.Join(failures, "; "))
	}
	return started, stopped, nil
}

// reconfigure is MethodReconfigure: re-read the configuration file, write
// the group's config.json, deliver the keys that changed (against the
// configuration in force) to the running workers, apply a changed amount,
// and report master.reconfigure.
func (s *Supervisor) reconfigure(ctx context.Context, progress func(Progress)) (OperationResult, error) {
	return s.reconfigureFrom(ctx, progress, nil)
}

// reconfigureSIGHUP is Reconfigure on SIGHUP, the way of releases before
// the control socket, whose `set` wrote config.json and delivered it
// itself, then `scale` sent SIGHUP for the amount: the keys to deliver are
// those that differ from what config.json holds, so that what such a set
// delivered is not delivered (a rolling restart) again.
func (s *Supervisor) reconfigureSIGHUP(ctx context.Context, progress func(Progress)) (OperationResult, error) {
	return s.reconfigureFrom(ctx, progress, func() (map[string]any, error) {
		b, err := os.ReadFile(s.g.ConfigPath())
		if err != nil {
			return nil, err
		}
		var m map[string]any
		return m, json.Unmarshal(b, &m)
	})
}

// reconfigureFrom compares the new [worker.config] with baseline's, or
// with the one in force when baseline is nil or fails.
func (s *Supervisor) reconfigureFrom(ctx context.Context, progress func(Progress), baseline func() (map[string]any, error)) (OperationResult, error) {
	c, err := config.Load(s.o.Config.File)
	if err != nil {
		return OperationResult{}, failed("reconfigure %s: configuration not reloaded: %v", s.o.Group, err)
	}
	w := c.Worker(s.o.Group)
	if w == nil {
		return OperationResult{}, failed("reconfigure %s: the group is no longer in %s", s.o.Group, c.File)
	}
	s.mu.Lock()
	old, oldAmount := s.w.Config, s.amount
	s.mu.Unlock()
	if baseline != nil {
		if b, err := baseline(); err == nil {
			old = b
		}
	}
	keys := changedKeys(old, w.Config)
	if err := s.writeGroupConfig(w); err != nil {
		return OperationResult{}, failed("reconfigure %s: %v", s.o.Group, err)
	}
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
	res := OperationResult{Keys: keys}
	var parts []string
	if w.Amount != oldAmount {
		r, err := s.scaleTo(ctx, w.Amount, progress)
		res.Instances = append(res.Instances, r.Instances...)
		if err != nil {
			return res, err
		}
		parts = append(parts, fmt.Sprintf("scaled from %d to %d instances", oldAmount, w.Amount))
	}
	if len(keys) == 0 {
		parts = append(parts, "configuration unchanged")
	} else {
		how, insts, err := s.deliver(ctx, w, progress)
		res.Instances = append(res.Instances, insts...)
		if err != nil {
			return res, err
		}
		ev := reconfigureEvent(w, keys, how)
		if err := s.o.Emit(ev); err != nil {
			s.log.Info(ev.Message, "event", string(ev.Type))
		}
		parts = append(parts, fmt.Sprintf("%s changed; %s", strings.Join(keys, ", "), how))
	}
	res.Message = fmt.Sprintf("reconfigure %s: %s", s.o.Group, strings.Join(parts, "; "))
	return res, nil
}

// changedKeys lists, sorted, the keys whose values differ between two
// [worker.config] tables: changed, added or removed.
func changedKeys(old, cur map[string]any) []string {
	var keys []string
	for k, v := range cur {
		if ov, ok := old[k]; !ok || !reflect.DeepEqual(asJSON(ov), asJSON(v)) {
			keys = append(keys, k)
		}
	}
	for k := range old {
		if _, ok := cur[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// asJSON is v as the workers read it: TOML's int64 and the float64 of a
// decoded config.json compare equal.
func asJSON(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	if json.Unmarshal(b, &out) != nil {
		return v
	}
	return out
}

// deliver brings the running workers to their new configuration and says
// how: SIGHUP to those whose worker declared it re-reads its
// configuration on SIGHUP (the report channel) or whose configuration
// says so (reload_signal); a rolling restart for the others, since SIGHUP
// ends a process that does not handle it, unless reloadable = false.
func (s *Supervisor) deliver(ctx context.Context, w *config.Worker, progress func(Progress)) (string, []int, error) {
	sts, err := s.o.Manager.States(ctx, s.g.InstancePatterns()...)
	if err != nil {
		return "", nil, failed("reconfigure %s: %v", s.o.Group, err)
	}
	s.mu.Lock()
	amount := s.amount
	s.mu.Unlock()
	var hup, restart []int
	// Per slot, the side that serves it (the newer of two).
	unitOf := map[int]string{}
	for _, st := range sts {
		n, _, ok := s.g.SideOf(st.Name)
		if !ok || n > amount || !serving(st) {
			continue
		}
		if prev, dup := unitOf[n]; dup {
			if side := s.newerSide(ctx, n); s.g.InstanceSide(n, side) == prev {
				continue
			}
			unitOf[n] = st.Name
			continue
		}
		unitOf[n] = st.Name
		if w.ReloadSignal == config.ReloadSIGHUP || (s.o.Reports != nil && s.o.Reports.ReloadsOnSIGHUP(n)) {
			hup = append(hup, n)
		} else {
			restart = append(restart, n)
		}
	}
	sort.Ints(hup)
	sort.Ints(restart)
	if len(hup)+len(restart) == 0 {
		return "no worker running: they read it when they start", nil, nil
	}
	var parts []string
	var done []int
	if len(hup) > 0 {
		why := `reload_signal = "SIGHUP"`
		if w.ReloadSignal != config.ReloadSIGHUP {
			why = "they declared it over the report channel"
		}
		for _, n := range hup {
			progress(Progress{Message: fmt.Sprintf("reconfigure %s: SIGHUP to %s", s.o.Group, unitOf[n]), Instance: n})
			if err := s.o.Manager.Signal(ctx, unitOf[n], syscall.SIGHUP); err != nil {
				return "", done, failed("reconfigure %s: deliver to instance %d (%s): %v", s.o.Group, n, unitOf[n], err)
			}
			done = append(done, n)
		}
		parts = append(parts, fmt.Sprintf("sent SIGHUP to %d running workers (%s), which re-read it without a restart", len(hup), why))
	}
	if len(restart) > 0 {
		if !w.Reloadable {
			parts = append(parts, fmt.Sprintf("%d running workers keep the old configuration until they restart (no reload_signal, and reloadable = false forbids a rolling restart)", len(restart)))
		} else {
			r, err := s.handoverAll(ctx, "reconfigure", w, restart, nil, progress)
			done = append(done, r...)
			if err != nil {
				return "", done, err
			}
			parts = append(parts, fmt.Sprintf("handed %d instances over to new processes one at a time (no reload_signal: the workers may not handle SIGHUP)", len(restart)))
		}
	}
	return strings.Join(parts, "; "), done, nil
}

// reconfigureEvent is the master.reconfigure event for keys changed in w:
// the keys and how they were delivered; the values stay out of the
// journal (they may be secrets) but for the keys w's public_config
// names, given as a JSON object in the "values" field.
func reconfigureEvent(w *config.Worker, keys []string, how string) events.Event {
	public := map[string]any{}
	for _, k := range keys {
		if v, ok := w.Config[k]; ok && w.Public(k) {
			public[k] = v
		}
	}
	fields := map[string]string{"keys": strings.Join(keys, ","), "delivery": how}
	if len(public) > 0 {
		b, _ := json.Marshal(public)
		fields["values"] = string(b)
	}
	return events.Event{Type: events.MasterReconfigure, Group: w.Name,
		Message: fmt.Sprintf("group %s reconfigured: %s (%s)", w.Name, strings.Join(keys, ", "), how),
		Fields:  fields}
}

// groupStatus is MethodStatus: the group as the supervisor sees it, with
// systemd's view of each instance. full shows every configuration value;
// otherwise only those of public_config keys.
func (s *Supervisor) groupStatus(ctx context.Context, full bool) GroupStatus {
	s.mu.Lock()
	w, amount := s.w, s.amount
	s.mu.Unlock()
	gs := GroupStatus{Group: w.Name, Type: string(w.Type), Sticky: w.Sticky, Amount: amount,
		Config: map[string]any{}, DispatchKnown: s.disp != nil || s.kern != nil}
	if w.Sticky {
		gs.DispatchMode = string(w.Dispatch)
	}
	in := map[int]bool{}
	var buckets map[int]int
	gs.Kernel, buckets = s.kernelStatus()
	if gs.Kernel != nil {
		for _, n := range gs.Kernel.InTable {
			in[n] = true
		}
	}
	for k, v := range w.Config {
		if full || w.Public(k) {
			gs.Config[k] = v
		}
	}
	gs.Headline = s.status()
	gs.Supervisor = UnitStatus{Unit: s.g.SupervisorUnit(), State: string(units.Active), SubState: "running", PID: uint32(os.Getpid())}
	if st, err := s.o.Manager.State(ctx, s.g.SupervisorUnit()); err == nil && st.LoadState == units.Loaded {
		gs.Supervisor.State, gs.Supervisor.SubState = string(st.ActiveState), st.SubState
	}
	var ds DispatchState
	if s.disp != nil {
		ds = s.dispatchState()
		c := ds.DispatchCounters
		gs.Dispatch = &c
		for _, n := range ds.InDispatch {
			in[n] = true
		}
	}
	sts, err := s.o.Manager.States(ctx, s.g.InstancePatterns()...)
	if err != nil {
		// What the main loop saw last.
		s.mu.Lock()
		for _, st := range s.sides {
			sts = append(sts, st)
		}
		s.mu.Unlock()
	}
	slots := map[int][]units.UnitState{}
	for _, st := range sts {
		if n, _, ok := s.g.SideOf(st.Name); ok {
			slots[n] = append(slots[n], st)
		}
	}
	seen := map[int]bool{}
	for n, sides := range slots {
		seen[n] = true
		st, dr := SlotSides(sides)
		is := InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: st.Name, State: string(st.ActiveState), SubState: st.SubState},
			HandedOff: ds.PerInstance[n], Queued: ds.Queued[n], InDispatch: in[n], Buckets: buckets[n]}
		if st.ActiveState.Running() || st.ActiveState == units.Deactivating {
			is.PID, _ = s.o.Manager.MainPID(ctx, st.Name)
		}
		for _, x := range sides {
			r, _ := s.o.Manager.Restarts(ctx, x.Name)
			is.Restarts += r
		}
		if st.ActiveState == units.Active {
			if t, err := s.o.Manager.Since(ctx, st.Name); err == nil && !t.IsZero() {
				is.UptimeSeconds = time.Since(t).Round(time.Millisecond).Seconds()
			}
		}
		if dr != nil {
			if pid, err := s.o.Manager.MainPID(ctx, dr.Name); err == nil && pid != 0 {
				is.Draining = &DrainingStatus{Unit: dr.Name, PID: pid}
				if _, side, ok := s.g.SideOf(dr.Name); ok {
					s.mu.Lock()
					is.Draining.Since = s.draining[sideKey{n, side}]
					s.mu.Unlock()
				}
			}
		}
		gs.Instances = append(gs.Instances, is)
	}
	// Instances wanted that systemd has not loaded.
	for n := 1; n <= amount; n++ {
		if !seen[n] {
			gs.Instances = append(gs.Instances, InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: s.g.Instance(n), State: string(units.Inactive), SubState: "dead"}})
		}
	}
	sort.Slice(gs.Instances, func(i, j int) bool { return gs.Instances[i].Instance < gs.Instances[j].Instance })
	return gs
}

// errorName returns the call error name of err: its own for a
// *CallError, ErrFailed otherwise.
func errorName(err error) (string, string) {
	var ce *CallError
	if errors.As(err, &ce) {
		return ce.Name, ce.Message
	}
	return ErrFailed, err.Error()
}
