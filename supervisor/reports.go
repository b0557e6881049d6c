package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/report"
	"github.com/powerhouse/powerhouse/units"
)

// declared is what the group's workers said over the report socket: the
// last Hello of each instance's worker on each side, with the PID that
// sent it, so that a Hello from a process that has since been replaced
// counts for nothing, and the new process of a handover does not hide the
// old one's while both run.
type declared struct {
	mu    sync.Mutex
	hello map[slotSide]heard
	// refused counts datagrams refused or from no instance of the group;
	// logged at most once a minute.
	refused    uint64
	lastLogged time.Time
	// drains are the DrainResults of workers that drained, by sender PID;
	// drainOrder is their arrival order, for evicting the oldest beyond
	// maxDrains. Both made on first use.
	drains     map[uint32]report.DrainResult
	drainOrder []uint32
}

// maxDrains bounds the drain results kept: a reload reads its result
// within a stop timeout of the worker's exit, so the newest thousand are
// more than any reload needs, and a flood of reports cannot grow the map.
const maxDrains = 1024

// recordDrain keeps the drain result that process pid reported; a second
// one from the same PID replaces the first (a PID is reused only after
// the process is gone).
func (d *declared) recordDrain(pid uint32, m report.DrainResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.drains == nil {
		d.drains = map[uint32]report.DrainResult{}
	}
	if _, ok := d.drains[pid]; !ok {
		if len(d.drainOrder) >= maxDrains {
			delete(d.drains, d.drainOrder[0])
			d.drainOrder = append(d.drainOrder[:0], d.drainOrder[1:]...)
		}
		d.drainOrder = append(d.drainOrder, pid)
	}
	d.drains[pid] = m
}

// drainOf returns the drain result that process pid reported.
func (d *declared) drainOf(pid uint32) (report.DrainResult, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.drains[pid]
	return m, ok
}

// slotSide is one side of one instance slot.
type slotSide struct {
	n    int
	side units.Side
}

type heard struct {
	pid   uint32
	hello report.Hello
}

// saidHello reports whether process pid sent a Hello that was attributed
// to an instance of the group.
func (d *declared) saidHello(pid uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.hello {
		if h.pid == pid {
			return true
		}
	}
	return false
}

// helloOf returns the Hello that instance n's worker, main process pid,
// sent; false when it sent none.
func (d *declared) helloOf(n int, pid uint32) (report.Hello, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if pid == 0 {
		return report.Hello{}, false
	}
	for _, side := range []units.Side{units.SideA, units.SideB} {
		if h, ok := d.hello[slotSide{n, side}]; ok && h.pid == pid {
			return h.hello, true
		}
	}
	return report.Hello{}, false
}

// workerReports answers Options.Reports from what the workers declared,
// for the process each instance runs now.
type workerReports struct{ s *Supervisor }

func (r workerReports) ReloadsOnSIGHUP(n int) bool {
	r.s.mu.Lock()
	pid := r.s.pids[n]
	r.s.mu.Unlock()
	h, ok := r.s.declared.helloOf(n, pid)
	return ok && h.Features.Has(report.FeatureReloadOnSIGHUP)
}

// Drained returns the counts that the worker process pid reported when
// its drain ended: connections that ended on their own and connections
// cut at the drain deadline; ok is false when it reported none (a worker
// that does not use the library, an older library, a lost datagram, or a
// result evicted after 1,024 newer ones).
func (r workerReports) Drained(pid uint32) (drained, cut uint64, ok bool) {
	m, ok := r.s.declared.drainOf(pid)
	return m.Drained, m.Cut, ok
}

// listenReports binds the group's report socket, which the workers' group
// may send to (the supervisor owns the file and is a member of that
// group). In a user's house, or without that group, it stays the
// supervisor's own: its workers run as the same user.
func (s *Supervisor) listenReports() (*report.Receiver, error) {
	gid := -1
	if os.Geteuid() == 0 {
		if g, _, err := WorkerGroup(s.worker().Service); err == nil {
			gid = g
		}
	}
	r, err := report.Listen(s.g.ReportPath(), 0o660, gid)
	if err != nil {
		return nil, fmt.Errorf("report socket: %w", err)
	}
	return r, nil
}

// serveReports receives the workers' reports until ctx ends. A datagram
// is attributed to an instance by its sender's PID (GetUnitByPID): a
// process of another group, or of none, is refused, since every group's
// workers may share one user and group.
func (s *Supervisor) serveReports(ctx context.Context, r *report.Receiver) {
	for {
		m, from, err := r.Recv(ctx)
		var de *report.DatagramError
		switch {
		case errors.As(err, &de):
			var ve *report.VersionError
			if errors.As(err, &ve) {
				// A worker of another release: loudly, naming both.
				s.log.Error("a worker reports in a format this supervisor does not read", "pid", de.Sender.PID, "err", err)
				continue
			}
			s.refusedReport(err)
			continue
		case err != nil:
			if ctx.Err() == nil && !errors.Is(err, os.ErrClosed) {
				s.log.Warn("report socket: receiving ended", "err", err)
			}
			return
		}
		unit, err := s.o.Manager.UnitByPID(ctx, uint32(from.PID))
		// Either side of the instance's slot (handover reloads run both).
		n, side, ok := s.g.SideOf(unit)
		if dr, drain := m.(report.DrainResult); drain && err != nil && s.declared.saidHello(uint32(from.PID)) {
			// Sent just before the process exits: systemd may have
			// forgotten the PID by the time it is read. Its Hello,
			// attributed while it ran, vouches for it.
			s.declared.recordDrain(uint32(from.PID), dr)
			s.log.Debug("worker drained", "pid", from.PID, "drained", dr.Drained, "cut", dr.Cut)
			continue
		}
		if err != nil || !ok {
			s.refusedReport(fmt.Errorf("report from pid %d, which is no instance of group %s (unit %q, %v)", from.PID, s.g.Name, unit, err))
			continue
		}
		switch m := m.(type) {
		case report.Hello:
			s.declared.mu.Lock()
			prev, known := s.declared.hello[slotSide{n, side}]
			s.declared.hello[slotSide{n, side}] = heard{pid: uint32(from.PID), hello: m}
			s.declared.mu.Unlock()
			if known && prev.pid == uint32(from.PID) {
				continue // the periodic repeat
			}
			if err := m.Compatible(handoff.Version); err != nil {
				s.log.Error("instance cannot take this supervisor's hand-offs", "instance", n, "unit", unit, "err", err)
				continue
			}
			s.log.Debug("worker declared", "instance", n, "pid", from.PID, "release", m.Release, "features", m.Features.String())
		case report.Draining:
			s.log.Debug("worker draining", "instance", n, "pid", from.PID)
		case report.Closed:
			// The instance's open connections (handed off less closed):
			// what balance_factor bounds and fallback = "spread" compares.
			if s.disp != nil {
				s.disp.Closed(n, m.Count)
			}
		case report.DrainResult:
			s.declared.recordDrain(uint32(from.PID), m)
			s.log.Debug("worker drained", "instance", n, "pid", from.PID, "drained", m.Drained, "cut", m.Cut)
		}
	}
}

// refusedReport counts a refused report and logs it, at most once a minute.
func (s *Supervisor) refusedReport(err error) {
	d := &s.declared
	d.mu.Lock()
	d.refused++
	n := d.refused
	log := time.Since(d.lastLogged) >= time.Minute
	if log {
		d.lastLogged = time.Now()
	}
	d.mu.Unlock()
	if log {
		s.log.Warn("report refused", "refused_so_far", n, "err", err)
	}
}
