package supervisor

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/report"
	"github.com/powerhouse/powerhouse/units"
)

// TestReportsDecideDelivery: a worker that declares over the report
// socket that it re-reads its configuration on SIGHUP gets SIGHUP from
// Reconfigure; the others are restarted. The declaration counts for the
// process that made it only: once instance 2 runs another process, the
// old Hello no longer makes it one to signal. A report from a process of
// no instance is refused. The report socket and its datagrams are real;
// the sender is this test process, made instance 2's main process in the
// fake manager.
func TestReportsDecideDelivery(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	r.run()
	r.waitReady()
	waitFor(t, r.n, "the start to end", func() bool { return r.s.runningOp() == "" })
	send := func() {
		c, err := report.NewClient(r.s.g.ReportPath())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Send(report.NewHello(report.FeatureReloadOnSIGHUP)); err != nil {
			t.Fatal(err)
		}
	}
	declares := func(n int) bool { return r.s.o.Reports.ReloadsOnSIGHUP(n) }

	// From no instance: refused, counted.
	send()
	waitFor(t, r.n, "the stray report refused", func() bool {
		r.s.declared.mu.Lock()
		defer r.s.declared.mu.Unlock()
		return r.s.declared.refused == 1
	})

	self := uint32(os.Getpid())
	r.f.setPID(r.instance(2), self)
	waitFor(t, r.n, "instance 2 runs this process", func() bool {
		r.s.mu.Lock()
		defer r.s.mu.Unlock()
		return r.s.pids[2] == self
	})
	send()
	waitFor(t, r.n, "instance 2's declaration", func() bool { return declares(2) })
	if declares(1) || declares(3) {
		t.Error("instances 1 and 3 declared nothing, yet count as declaring")
	}

	edited := strings.Replace(apiTOML, `"blue"`, `"red"`, 1)
	if err := os.WriteFile(r.cfg, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := r.client().Reconfigure(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var signals, restarts []int
	for _, j := range r.f.jobs() {
		verb, unit, _ := strings.Cut(strings.TrimPrefix(j, "signal hangup"), " ")
		// A handover reload starts side B of each instance it renews.
		n, side, ok := r.s.g.SideOf(unit)
		switch {
		case ok && verb == "":
			signals = append(signals, n)
		case ok && verb == "start" && side == units.SideB:
			restarts = append(restarts, n)
		}
	}
	if !slices.Equal(signals, []int{2}) || !slices.Equal(restarts, []int{1, 3}) {
		t.Errorf("SIGHUP to %v and restarts of %v, want [2] and [1 3] (%s)", signals, restarts, res.Message)
	}

	// Another process now: the declaration was the old one's.
	r.f.setPID(r.instance(2), self+1)
	waitFor(t, r.n, "instance 2 runs another process", func() bool {
		r.s.mu.Lock()
		defer r.s.mu.Unlock()
		return r.s.pids[2] == self+1
	})
	if declares(2) {
		t.Error("a Hello of instance 2's previous process still counts")
	}
}

// TestReportsDrained: the drain result a worker sends when its drain is
// over is kept by its PID, from either side of the slot, and answered by
// Reports.Drained; one from a process of no instance is refused and not
// kept. The report socket and its datagrams are real; the sender is this
// test process, made the main process of an instance in the fake manager.
func TestReportsDrained(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	r.run()
	r.waitReady()
	waitFor(t, r.n, "the start to end", func() bool { return r.s.runningOp() == "" })
	drained := r.s.o.Reports.(interface {
		Drained(pid uint32) (drained, cut uint64, ok bool)
	}).Drained
	send := func(m report.DrainResult) {
		c, err := report.NewClient(r.s.g.ReportPath())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	self := uint32(os.Getpid())

	send(report.DrainResult{Drained: 9, Cut: 9})
	waitFor(t, r.n, "the stray report refused", func() bool {
		r.s.declared.mu.Lock()
		defer r.s.declared.mu.Unlock()
		return r.s.declared.refused == 1
	})
	if _, _, ok := drained(self); ok {
		t.Fatal("a drain result from no instance was kept")
	}

	for _, unit := range []string{r.s.g.InstanceSide(2, units.SideA), r.s.g.InstanceSide(3, units.SideB)} {
		r.f.setPID(unit, self)
		want := report.DrainResult{Drained: 200, Cut: 3}
		if unit == r.s.g.InstanceSide(3, units.SideB) {
			want = report.DrainResult{Drained: 7}
		}
		send(want)
		waitFor(t, r.n, "the drain result of "+unit, func() bool {
			d, c, ok := drained(self)
			return ok && d == want.Drained && c == want.Cut
		})
		r.f.setPID(unit, 0)
	}
	if _, _, ok := drained(self + 1); ok {
		t.Error("a PID that reported nothing has a drain result")
	}
}

// TestDrainsBounded: beyond maxDrains results the oldest go first; a
// repeated PID keeps its place and takes the newer counts.
func TestDrainsBounded(t *testing.T) {
	var d declared
	for pid := uint32(1); pid <= maxDrains+10; pid++ {
		d.recordDrain(pid, report.DrainResult{Drained: uint64(pid)})
	}
	if len(d.drains) != maxDrains || len(d.drainOrder) != maxDrains {
		t.Fatalf("%d results kept (%d in order), want %d", len(d.drains), len(d.drainOrder), maxDrains)
	}
	for pid := uint32(1); pid <= 10; pid++ {
		if _, ok := d.drainOf(pid); ok {
			t.Errorf("pid %d, among the oldest, was not evicted", pid)
		}
	}
	d.recordDrain(11, report.DrainResult{Cut: 5})
	if m, ok := d.drainOf(11); !ok || m != (report.DrainResult{Cut: 5}) {
		t.Errorf("pid 11 after a second result: %+v, %v", m, ok)
	}
	if len(d.drainOrder) != maxDrains {
		t.Errorf("a repeated PID grew the order to %d", len(d.drainOrder))
	}
	if m, ok := d.drainOf(maxDrains + 10); !ok || m.Drained != maxDrains+10 {
		t.Errorf("the newest result: %+v, %v", m, ok)
	}
}

// TestHelloPerSide: during a handover both processes of a slot have said
// Hello; the new one's does not hide the old one's, and a process that is
// neither counts for nothing.
func TestHelloPerSide(t *testing.T) {
	d := declared{hello: map[slotSide]heard{}}
	old := report.Hello{Release: "old", Features: report.FeatureReloadOnSIGHUP}
	d.hello[slotSide{2, units.SideA}] = heard{pid: 100, hello: old}
	d.hello[slotSide{2, units.SideB}] = heard{pid: 200, hello: report.Hello{Release: "new"}}
	for _, tc := range []struct {
		pid  uint32
		want string
		ok   bool
	}{{100, "old", true}, {200, "new", true}, {300, "", false}, {0, "", false}} {
		h, ok := d.helloOf(2, tc.pid)
		if ok != tc.ok || h.Release != tc.want {
			t.Errorf("helloOf(2, %d) = %q, %v; want %q, %v", tc.pid, h.Release, ok, tc.want, tc.ok)
		}
	}
	if _, ok := d.helloOf(1, 100); ok {
		t.Error("instance 1 has the Hello of instance 2's process")
	}
}

// TestDrainReportAfterExit: a drain result read after systemd forgot its
// sender (it is sent just before the process exits) still counts when
// that process's Hello was attributed to an instance; from a process that
// never said Hello it is refused.
func TestDrainReportAfterExit(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	r.run()
	r.waitReady()
	waitFor(t, r.n, "the start to end", func() bool { return r.s.runningOp() == "" })
	send := func(m report.Message) {
		c, err := report.NewClient(r.s.g.ReportPath())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	self := uint32(os.Getpid())
	send(report.DrainResult{Drained: 1})
	waitFor(t, r.n, "the report of a process that never said Hello refused", func() bool {
		r.s.declared.mu.Lock()
		defer r.s.declared.mu.Unlock()
		return r.s.declared.refused == 1
	})
	unit := r.s.g.InstanceSide(2, units.SideB)
	r.f.setPID(unit, self)
	send(report.Hello{Release: "test", HandoffVersions: []uint8{handoff.Version}})
	waitFor(t, r.n, "the Hello attributed", func() bool { _, ok := r.s.declared.helloOf(2, self); return ok })
	r.f.setPID(unit, 0) // the process is gone: systemd no longer knows it
	send(report.DrainResult{Drained: 200, Cut: 2})
	waitFor(t, r.n, "the drain result kept", func() bool {
		d, c, ok := r.s.o.Reports.(interface {
			Drained(pid uint32) (drained, cut uint64, ok bool)
		}).Drained(self)
		return ok && d == 200 && c == 2
	})
}

// TestReportsClosedCounts: a worker's Closed report reaches the group's
// dispatcher as that instance's closed connections (what balance_factor
// and fallback = "spread" read open counts from); one from a process of
// no instance is refused and counts for none. The report socket and its
// datagrams are real; the sender is this test process, made instance 2's
// main process in the fake manager.
func TestReportsClosedCounts(t *testing.T) {
	r := stickyRig(t, 3, nil)
	r.run()
	r.waitAll()
	send := func(n uint64) {
		c, err := report.NewClient(r.s.g.ReportPath())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Send(report.Closed{Count: n}); err != nil {
			t.Fatal(err)
		}
	}
	send(5) // from no instance
	waitFor(t, r.n, "the stray report refused", func() bool {
		r.s.declared.mu.Lock()
		defer r.s.declared.mu.Unlock()
		return r.s.declared.refused == 1
	})
	self := uint32(os.Getpid())
	r.f.setPID(r.side(2, units.SideA), self)
	waitFor(t, r.n, "instance 2 runs this process", func() bool {
		r.s.mu.Lock()
		defer r.s.mu.Unlock()
		return r.s.pids[2] == self
	})
	send(3)
	send(4)
	waitFor(t, r.n, "instance 2's closes counted", func() bool { return r.s.disp.Stats().Closed[2] == 7 })
	if st := r.s.disp.Stats(); len(st.Closed) != 1 {
		t.Errorf("Closed = %v, want instance 2's alone", st.Closed)
	}
}
