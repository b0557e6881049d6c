package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/units"
)

// A reload hands each instance slot over from the side that serves it to
// the other (units.Side: powerhouse-web@2.service and
// powerhouse-web.b@2.service read the same slot socket), one slot at a
// time: the new side is started and the reload waits for its start job
// (READY=1 of a Type=notify worker); only then is the old side told to
// stop, and its stop job, bounded by TimeoutStopSec=, is its drain. The
// reload does not wait for it: drains overlap, handovers do not.
// docs/ARCHITECTURE.md, "Reload", says why two templates.

// PlanFile is the name, in the group's runtime directory, of the plan of
// a reload in progress (reloadPlan): a supervisor restarted half-way
// through a reload goes on with it.
const PlanFile = "reload.json"

// maxPlan bounds the plan file the supervisor reads back.
const maxPlan = 256 << 10

// reloadPlan is PlanFile: written (atomically, 0600) when a reload
// starts and after each step, removed when it ends.
type reloadPlan struct {
	// Verb is the operation: "reload", or "reconfigure" (its rolling
	// restart of the workers that do not re-read on SIGHUP).
	Verb string `json:"verb"`
	// Started is when the reload began.
	Started time.Time `json:"started"`
	// Instances are the slots to hand over, in order.
	Instances []int `json:"instances"`
	// To is, for each slot whose handover began, the side its new
	// process runs on ("a" or "b"), written before that side is started:
	// of two sides running, it is the new one.
	To map[int]string `json:"to,omitempty"`
	// Done are the slots handed over: their new side was ready and their
	// old side was told to stop.
	Done []int `json:"done,omitempty"`
}

func (s *Supervisor) planPath() string { return filepath.Join(s.g.RuntimeDir(), PlanFile) }

// writePlan records p; a plan that cannot be written costs only the
// resumption of this reload after a supervisor restart.
func (s *Supervisor) writePlan(p *reloadPlan) {
	b, err := json.Marshal(p)
	if err == nil {
		_, err = units.WriteFile(s.planPath(), b, units.Secret)
	}
	if err != nil {
		s.log.Warn("reload plan not written: a supervisor restart would not resume this reload", "err", err)
	}
}

func (s *Supervisor) removePlan() {
	if err := os.Remove(s.planPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("reload plan not removed", "err", err)
	}
}

// readPlan returns the plan of a reload a supervisor before this one left
// unfinished, nil for none. A plan that cannot be read or makes no sense
// is named in the log and removed.
func (s *Supervisor) readPlan() *reloadPlan {
	f, err := os.Open(s.planPath())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("reload plan unreadable: not resumed", "err", err)
		}
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPlan+1))
	if err == nil {
		var p reloadPlan
		if err = parsePlan(b, &p); err == nil {
			return &p
		}
	}
	s.log.Warn("reload plan not resumed: removed", "file", s.planPath(), "err", err)
	s.removePlan()
	return nil
}

// parsePlan decodes and checks a plan file.
func parsePlan(b []byte, p *reloadPlan) error {
	if len(b) > maxPlan {
		return fmt.Errorf("over %d bytes", maxPlan)
	}
	if err := json.Unmarshal(b, p); err != nil {
		return err
	}
	if p.Verb != "reload" && p.Verb != "reconfigure" {
		return fmt.Errorf("unknown operation %q", p.Verb)
	}
	if len(p.Instances) > config.MaxAmount {
		return fmt.Errorf("%d instances, over %d", len(p.Instances), config.MaxAmount)
	}
	for _, list := range [][]int{p.Instances, p.Done} {
		for _, n := range list {
			if n < 1 || n > config.MaxAmount {
				return fmt.Errorf("instance %d out of 1..%d", n, config.MaxAmount)
			}
		}
	}
	for n, side := range p.To {
		if _, ok := parseSide(side); !ok || n < 1 || n > config.MaxAmount {
			return fmt.Errorf("bad side %q for instance %d", side, n)
		}
	}
	return nil
}

func parseSide(v string) (units.Side, bool) {
	switch v {
	case units.SideA.String():
		return units.SideA, true
	case units.SideB.String():
		return units.SideB, true
	}
	return 0, false
}

// serving reports whether a side serves its slot: it runs, and no stop
// job is taking it down.
func serving(st units.UnitState) bool {
	return st.ActiveState.Running() && st.JobType != units.JobStop && st.LoadState != units.Masked
}

// sidesOf reads the state of both sides of slot n from systemd.
func (s *Supervisor) sidesOf(ctx context.Context, n int) ([2]units.UnitState, error) {
	var sts [2]units.UnitState
	for _, side := range []units.Side{units.SideA, units.SideB} {
		st, err := s.o.Manager.State(ctx, s.g.InstanceSide(n, side))
		if err != nil {
			return sts, err
		}
		sts[side] = st
	}
	return sts, nil
}

// newerSide returns, of two sides that both serve slot n, the one that
// became active last (Manager.Since).
func (s *Supervisor) newerSide(ctx context.Context, n int) units.Side {
	a, errA := s.o.Manager.Since(ctx, s.g.InstanceSide(n, units.SideA))
	b, errB := s.o.Manager.Since(ctx, s.g.InstanceSide(n, units.SideB))
	if errB == nil && (errA != nil || b.After(a)) {
		return units.SideB
	}
	return units.SideA
}

// handoverAll hands the slots of list over, one at a time, in order,
// recording its progress in the plan (nil: a new plan). Before each it
// tells systemd that it needs up to that slot's wait for an earlier
// drain, start, and stop of a new side that failed, more
// (EXTEND_TIMEOUT_USEC=): `systemctl reload` runs under the supervisor's
// TimeoutStartSec=, and a long reload that progresses must not be killed
// half-way, while one that hangs still is. It stops at the first slot
// whose new side does not become ready, naming it; the slots after it
// keep their old process. It returns the slots handed over.
func (s *Supervisor) handoverAll(ctx context.Context, verb string, w *config.Worker, list []int, plan *reloadPlan, progress func(Progress)) ([]int, error) {
	if plan == nil {
		plan = &reloadPlan{Verb: verb, Started: time.Now().UTC().Truncate(time.Millisecond), Instances: list, To: map[int]string{}}
	}
	if plan.To == nil {
		plan.To = map[int]string{}
	}
	s.writePlan(plan)
	ext := handoverBound(w.Service) + extendMargin
	var done []int
	for i, n := range list {
		s.o.Notify(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", ext.Microseconds()))
		if err := s.handover(ctx, verb, w, n, fmt.Sprintf("(%d/%d)", i+1, len(list)), plan, progress); err != nil {
			if ctx.Err() != nil {
				// The supervisor stops (a restart, or systemd's stop):
				// the plan stays for the next one, which resumes.
				return done, err
			}
			if len(list) > i+1 {
				err = failed("%s; instances %s keep their old process", err, joinInts(list[i+1:]))
			}
			s.removePlan()
			return done, err
		}
		done = append(done, n)
		plan.Done = append(plan.Done, n)
		s.writePlan(plan)
	}
	s.removePlan()
	return done, nil
}

// handover hands slot n over from its serving side S to the other, T:
// it waits for T to come to rest if an earlier reload's drain still holds
// it, starts T and waits for its start job, then tells S to stop without
// waiting (drainOld). A T that does not become ready is stopped and S
// keeps serving. A slot with no side serving gets side A started, as a
// restart would.
func (s *Supervisor) handover(ctx context.Context, verb string, w *config.Worker, n int, step string, plan *reloadPlan, progress func(Progress)) error {
	sts, err := s.sidesOf(ctx, n)
	if err != nil {
		return failed("%s %s: instance %d: %v", verb, s.o.Group, n, err)
	}
	var from units.Side
	switch a, b := serving(sts[units.SideA]), serving(sts[units.SideB]); {
	case a && b:
		from = s.newerSide(ctx, n)
	case a:
		from = units.SideA
	case b:
		from = units.SideB
	default:
		// No process serves the slot: one is started, on the side
		// systemd is bringing up if any.
		to := units.SideA
		if Member(sts[units.SideB]) && !Member(sts[units.SideA]) {
			to = units.SideB
		}
		unit := s.g.InstanceSide(n, to)
		plan.To[n] = to.String()
		s.writePlan(plan)
		progress(Progress{Message: fmt.Sprintf("%s %s: starting %s: no process served instance %d %s", verb, s.o.Group, unit, n, step), Instance: n})
		t0 := time.Now()
		if err := s.startSide(ctx, w, unit); err != nil {
			return failed("%s %s: instance %d (%s) did not become ready: %v", verb, s.o.Group, n, unit, err)
		}
		pid, _ := s.o.Manager.MainPID(ctx, unit)
		s.emit(events.WorkerReload, n, fmt.Sprintf("worker %s@%d started by a reload: %s (pid %d), ready in %v; no old process", s.o.Group, n, unit, pid, time.Since(t0).Round(time.Millisecond)),
			map[string]string{"new_unit": unit, "new_pid": fmt.Sprint(pid), "ready_ms": fmt.Sprint(time.Since(t0).Milliseconds()), "result": "started"})
		return nil
	}
	to := from.Other()
	oldUnit, newUnit := s.g.InstanceSide(n, from), s.g.InstanceSide(n, to)
	// A reload resumed after a supervisor restart may find the new side
	// still starting (its start job outlived the old supervisor): the
	// start below joins that job rather than stopping it.
	resumedStart := plan.To[n] == to.String() && sts[to].JobType == units.JobStart
	if st := sts[to]; !resumedStart && (!st.ActiveState.AtRest() || st.JobType != units.NoJob) {
		// The other side still drains (an earlier reload's stop), or is
		// busy otherwise: it must be at rest before it starts again.
		// Its stop, joined, ends when it does; bounded by its
		// TimeoutStopSec= (systemd kills it then).
		pid, _ := s.o.Manager.MainPID(ctx, newUnit)
		progress(Progress{Message: fmt.Sprintf("%s %s: waiting for %s (pid %d, %s) to finish draining before instance %d's handover", verb, s.o.Group, newUnit, pid, st.ActiveState, n), Instance: n})
		bound := span(w.Service.TimeoutStop) + extendMargin
		sctx, cancel := context.WithTimeout(ctx, bound)
		err := s.o.Manager.Stop(sctx, newUnit)
		cancel()
		if err != nil {
			return failed("%s %s: instance %d: %s (pid %d) did not come to rest within %v: %v; %s keeps serving", verb, s.o.Group, n, newUnit, pid, bound, err, oldUnit)
		}
	}
	oldPID, _ := s.o.Manager.MainPID(ctx, oldUnit)
	plan.To[n] = to.String()
	s.writePlan(plan)
	progress(Progress{Message: fmt.Sprintf("%s %s: starting %s beside %s (pid %d) %s", verb, s.o.Group, newUnit, oldUnit, oldPID, step), Instance: n})
	t0 := time.Now()
	if err := s.startSide(ctx, w, newUnit); err != nil {
		if ctx.Err() != nil {
			// The supervisor stops half-way: its start job goes on,
			// and the next supervisor resumes the reload (the plan
			// names the new side).
			return failed("%s %s: instance %d: interrupted while %s started: %v", verb, s.o.Group, n, newUnit, err)
		}
		// The new side goes (it may be half up, or up too late); the
		// old one was never told anything and keeps serving.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), span(w.Service.TimeoutStop)+extendMargin)
		if serr := s.o.Manager.Stop(sctx, newUnit); serr != nil {
			s.log.Warn("a new side that did not become ready was not stopped", "unit", newUnit, "err", serr)
		}
		cancel()
		return failed("%s %s: instance %d (%s) did not become ready: %v; %s (pid %d) keeps serving", verb, s.o.Group, n, newUnit, err, oldUnit, oldPID)
	}
	ready := time.Since(t0)
	s.m.handover.Observe(ready.Seconds())
	newPID, _ := s.o.Manager.MainPID(ctx, newUnit)
	progress(Progress{Message: fmt.Sprintf("%s %s: %s (pid %d) ready in %v; %s (pid %d) drains", verb, s.o.Group, newUnit, newPID, ready.Round(time.Millisecond), oldUnit, oldPID), Instance: n})
	s.drainOld(ctx, w, n, oldUnit, newUnit, oldPID, newPID, ready)
	return nil
}

// startSide starts a side and waits for its start job, bounded by the
// workers' start timeout (systemd's own ends the job first) and a margin.
// The error says systemd's Result.
func (s *Supervisor) startSide(ctx context.Context, w *config.Worker, unit string) error {
	sctx, cancel := context.WithTimeout(ctx, span(w.Service.TimeoutStart)+extendMargin)
	defer cancel()
	err := s.o.Manager.Start(sctx, unit)
	if err == nil {
		return nil
	}
	if x, xerr := s.o.Manager.MainExit(ctx, unit); xerr == nil && x.Result != "" && x.Result != "success" {
		err = fmt.Errorf("%w (result %s)", err, x.Result)
	}
	return err
}

// drainWait bounds the wait, after the old process ended, for its drain
// report (sent just before it exits) to be read.
const drainWait = 300 * time.Millisecond

// drainOld stops the old side of slot n in the background: its stop job
// is its drain (SIGTERM, then up to TimeoutStopSec= for the connections it
// holds). When it ends, worker.reload reports the handover: the old and
// new processes, the new one's time to ready (ready < 0: unknown), the
// old one's drain report and systemd's Result of it.
func (s *Supervisor) drainOld(ctx context.Context, w *config.Worker, n int, oldUnit, newUnit string, oldPID, newPID uint32, ready time.Duration) {
	s.drains.Add(1)
	go func() {
		defer s.drains.Done()
		sctx, cancel := context.WithTimeout(ctx, span(w.Service.TimeoutStop)+extendMargin)
		err := s.o.Manager.Stop(sctx, oldUnit)
		cancel()
		if ctx.Err() != nil {
			// The supervisor stops: systemd goes on with the drain.
			return
		}
		f := map[string]string{"old_unit": oldUnit, "new_unit": newUnit, "old_pid": fmt.Sprint(oldPID), "new_pid": fmt.Sprint(newPID)}
		if ready >= 0 {
			f["ready_ms"] = fmt.Sprint(ready.Milliseconds())
		}
		result := "success"
		if x, xerr := s.o.Manager.MainExit(ctx, oldUnit); xerr == nil && x.Result != "" {
			result = x.Result
		}
		if err != nil {
			result = "stop failed: " + err.Error()
		}
		f["result"] = result
		msg := fmt.Sprintf("worker %s@%d reloaded: handed over from %s (pid %d) to %s (pid %d)", s.o.Group, n, oldUnit, oldPID, newUnit, newPID)
		if ready >= 0 {
			msg += fmt.Sprintf(", ready in %v", ready.Round(time.Millisecond))
		}
		// The report comes before the process exits; it may still be
		// on its way through the report socket.
		deadline := time.Now().Add(drainWait)
		for oldPID != 0 {
			if drained, cut, ok := s.o.Reports.Drained(oldPID); ok {
				f["drained"], f["cut"] = fmt.Sprint(drained), fmt.Sprint(cut)
				msg += fmt.Sprintf("; the old process drained %d connections, cut %d", drained, cut)
				break
			}
			if time.Now().After(deadline) {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		msg += " (" + result + ")"
		s.emit(events.WorkerReload, n, msg, f)
	}()
}

// resume goes on with a reload that a supervisor before this one left
// unfinished (plan): of a slot whose new side runs, the old side, if it
// still runs, is told to stop; the slots not handed over yet are. It
// logs what it found, and reports it in its first progress line.
func (s *Supervisor) resume(ctx context.Context, plan *reloadPlan, progress func(Progress)) (OperationResult, error) {
	w := s.worker()
	s.mu.Lock()
	amount := s.amount
	s.mu.Unlock()
	var handed, rest []int
	for _, n := range plan.Instances {
		if n > amount {
			continue // scaled down meanwhile
		}
		sts, err := s.sidesOf(ctx, n)
		if err != nil {
			s.removePlan()
			return OperationResult{}, failed("%s %s resumed after a supervisor restart: instance %d: %v", plan.Verb, s.o.Group, n, err)
		}
		to, began := parseSide(plan.To[n])
		switch {
		case began && serving(sts[to]):
			handed = append(handed, n)
			if serving(sts[to.Other()]) {
				// Killed between the start of the new side and the
				// stop of the old: the stop it did not send.
				oldUnit, newUnit := s.g.InstanceSide(n, to.Other()), s.g.InstanceSide(n, to)
				oldPID, _ := s.o.Manager.MainPID(ctx, oldUnit)
				newPID, _ := s.o.Manager.MainPID(ctx, newUnit)
				s.drainOld(ctx, w, n, oldUnit, newUnit, oldPID, newPID, -1)
			}
		case slices.Contains(plan.Done, n):
			// Handed over, and the new side ended since: not the
			// reload's business any more.
			handed = append(handed, n)
		default:
			rest = append(rest, n)
		}
	}
	what := "none handed over"
	if len(handed) > 0 {
		what = "instances " + joinInts(handed) + " handed over"
	}
	rem := "none remaining"
	if len(rest) > 0 {
		rem = joinInts(rest) + " remaining"
	}
	msg := fmt.Sprintf("%s %s resumed after a supervisor restart: %s, %s", plan.Verb, s.o.Group, what, rem)
	s.log.Warn(msg, "started", plan.Started)
	progress(Progress{Message: msg})
	plan.Instances = rest
	plan.Done = nil
	done, err := s.handoverAll(ctx, plan.Verb, w, rest, plan, progress)
	res := OperationResult{Instances: append(handed, done...)}
	if err != nil {
		return res, err
	}
	res.Message = fmt.Sprintf("%s %s resumed: %d instances handed over; old processes drain for up to %v", plan.Verb, s.o.Group, len(res.Instances), span(w.Service.TimeoutStop))
	return res, nil
}

// settleSlots finds slots with both sides serving and no reload to say
// which is new (an operator started the other side by hand): the newer
// keeps serving, the older is stopped (its stop is its drain), in the
// background. It returns those slots. It runs at the supervisor's start,
// and as the "settle" operation when the main loop sees such a slot
// between operations (settleIfBoth).
//
// So `systemctl restart powerhouse-web@2.service` while side B serves
// instance 2 is a handover the operator asked for: side A starts beside
// B, and B drains once the supervisor sees both.
func (s *Supervisor) settleSlots(ctx context.Context) []int {
	s.mu.Lock()
	var both []int
	for n := range s.state {
		if serving(s.sides[sideKey{n, units.SideA}]) && serving(s.sides[sideKey{n, units.SideB}]) {
			both = append(both, n)
		}
	}
	s.mu.Unlock()
	slices.Sort(both)
	w := s.worker()
	for _, n := range both {
		keep := s.newerSide(ctx, n)
		oldUnit, newUnit := s.g.InstanceSide(n, keep.Other()), s.g.InstanceSide(n, keep)
		s.log.Warn("both sides of an instance run, with no reload in progress: the newer keeps serving, the older stops",
			"instance", n, "keeps", newUnit, "stops", oldUnit)
		s.drains.Add(1)
		go func() {
			defer s.drains.Done()
			sctx, cancel := context.WithTimeout(ctx, span(w.Service.TimeoutStop)+extendMargin)
			defer cancel()
			if err := s.o.Manager.Stop(sctx, oldUnit); err != nil && ctx.Err() == nil {
				s.log.Warn("the older side was not stopped", "unit", oldUnit, "err", err)
			}
		}()
	}
	return both
}

// settleIfBoth queues the "settle" operation when a slot has both sides
// serving and no operation runs or waits (a handover has both serving
// only inside its operation, and stops the old side itself).
func (s *Supervisor) settleIfBoth() {
	s.mu.Lock()
	both := false
	for n := range s.state {
		if serving(s.sides[sideKey{n, units.SideA}]) && serving(s.sides[sideKey{n, units.SideB}]) {
			both = true
			break
		}
	}
	s.mu.Unlock()
	if !both {
		return
	}
	s.opMu.Lock()
	idle := s.running == "" && s.waiting == 0 && !s.stopping
	s.opMu.Unlock()
	if !idle {
		return
	}
	err := s.submit("settle", func(ctx context.Context, progress func(Progress)) (OperationResult, error) {
		settled := s.settleSlots(ctx)
		return OperationResult{Message: fmt.Sprintf("settle %s: %d instances had both sides serving; the older side drains", s.o.Group, len(settled)), Instances: settled}, nil
	}, nil)
	if err != nil {
		s.log.Debug("settle not queued", "err", err)
	}
}
