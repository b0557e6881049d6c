package supervisor

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/report"
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
		n, ok := r.s.g.InstanceOf(unit)
		switch {
		case ok && verb == "":
			signals = append(signals, n)
		case ok && verb == "restart":
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
