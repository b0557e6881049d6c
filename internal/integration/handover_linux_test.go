package integration

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/helloclient"
	"github.com/powerhouse/powerhouse/units"
)

// The handover tests (issue 14): a reload starts each slot's other side,
// waits for its READY=1, then stops the old side without waiting, which
// drains; the slot keeps its clients throughout.
const (
	longLived    = 200                    // long-lived connections held across the reload
	streamSrcs   = 64                     // sources of the stream of new connections
	linePeriod   = 100 * time.Millisecond // a line on every long-lived connection
	streamPeriod = 100 * time.Millisecond // a request from every stream source
	// p99Floor: the reload's p99 is held to twice the steady state's, but
	// never to less than twice this. On loopback the steady p99 can be
	// 0.5 ms, and a 2-core machine shared with other tests stalls single
	// requests for a few ms whatever PowerHouse does; a slot whose new
	// connections waited for its restart (the old reload) took hundreds
	// of ms, far above it.
	p99Floor = 10 * time.Millisecond
)

// echoSrc is the i-th long-lived connection's source: 127.0.0.2 and up;
// streamSrc the stream's: 127.0.1.2 and up. All of 127/8 is local.
func echoSrc(i int) string   { return fmt.Sprintf("127.0.%d.%d", i/250, 2+i%250) }
func streamSrc(i int) string { return fmt.Sprintf("127.0.1.%d", 2+i) }

func srcs(n int, f func(int) string) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = f(i)
	}
	return s
}

// TestIntegrationHandoverReload: a reload of a 3-instance sticky group in
// hand-off mode under long-lived connections and a stream of new ones.
func TestIntegrationHandoverReload(t *testing.T) { handoverReload(t, "handoff") }

// TestIntegrationHandoverReloadKernel: the same in kernel mode, where
// both sides of a slot share the slot's listening socket.
func TestIntegrationHandoverReloadKernel(t *testing.T) { handoverReload(t, "kernel") }

// handoverReload holds 200 long-lived connections (a line every 100 ms
// each) and a stream of new connections from 64 sources across
// `systemctl reload`, and checks that
//   - the reload returns while the old processes still drain (drains
//     overlap), and every slot is seen, in systemd and in `powerhouse
//     status`, with its old process draining beside its new one serving;
//   - no long-lived connection is cut: each ends when its client closes it,
//     after the reload returned, before the drain timeout, and the next
//     connection from its source reaches the same slot and its new process;
//   - no new connection fails, each source stays on its slot, and their p99
//     during the reload stays under twice the steady state's;
//   - the journal has a worker.reload per slot with old_pid, new_pid,
//     ready_ms, drained (at least the slot's long-lived connections) and
//     cut=0.
func handoverReload(t *testing.T, dispatch string) {
	// The drain timeout (90% of timeout_stop) is far beyond the
	// connections' life: they end on their own, none is cut.
	h := newHandoverHouse(t, handoverConfig(dispatch, helloExec(), `timeout_stop = "10s"`+"\n"+`timeout_start = "10s"`))
	for n, p := range servingPIDs(t, h) {
		if want := h.show(handoverGroup.InstanceSide(n, units.SideA), "MainPID"); p != want {
			t.Fatalf("slot %d serves from pid %s, side a is pid %s", n, p, want)
		}
	}
	load := startPaced(srcs(streamSrcs, streamSrc), streamPeriod)
	defer load.finish()
	// The watchers of systemd and status poll from before the steady
	// window: they cost CPU, which both windows must share alike.
	slots := watchSlots(h)
	defer slots.finish()
	status := watchStatus(h)
	defer status.finish()

	r := reloadRound(t, h, load)
	var evs []reloadEvent
	waitFor(t, 10*time.Second, fmt.Sprintf("%d worker.reload events", handoverSlots), func() bool {
		all, err := reloadEvents(h)
		evs = nil
		for _, e := range all {
			if n, _ := strconv.Atoi(e["instance"]); e["old_pid"] == r.before[n] {
				evs = append(evs, e)
			}
		}
		return err == nil && len(evs) >= handoverSlots
	})
	// p99 is a latency on a machine that other work shares: a round whose
	// reload fell on someone else's burst is run again, twice at most.
	rounds := []*handoverRound{r}
	for len(rounds) < 3 && !rounds[len(rounds)-1].p99ok() {
		last := rounds[len(rounds)-1]
		t.Logf("round %d: p99 %v during the reload, %v steady: another round; the slowest: %s", len(rounds), p99(last.during), p99(last.steady), slowest(last.during, last.start, 8))
		rounds = append(rounds, reloadRound(t, h, load))
	}
	load.waitServed(t, 2*streamSrcs)
	slots.finish()
	status.finish()
	load.finish()
	before, after := r.before, r.after

	t.Run("long-lived connections drained, none cut", func(t *testing.T) {
		for i, r := range rounds {
			for _, c := range r.long.failed() {
				t.Errorf("round %d: %s (%s pid %s): %s: %v", i+1, c.src, c.inst, c.pid, errKind(c.err), c.err)
			}
		}
		least := int(r.ended.Sub(r.start) / linePeriod / 2)
		for _, c := range r.long.conns {
			if c.err == nil && c.said < least {
				t.Errorf("%s: only %d lines echoed, want at least %d", c.src, c.said, least)
			}
		}
		if len(rounds) > 1 {
			return // the next connections reach later rounds' processes
		}
		// The next connection of each source: same slot, new process.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var wrong []string
		for _, c := range r.long.conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e, err := helloclient.DialEcho(t.Context(), c.src, handoverAddr)
				var rep helloclient.Reply
				if err == nil {
					rep, err = e.Say("again", 10*time.Second)
					e.Close()
				}
				n, _ := strconv.Atoi(strings.TrimPrefix(c.inst, "web@"))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					wrong = append(wrong, fmt.Sprintf("%s: %v", c.src, err))
				case rep.Instance != c.inst || rep.PID != after[n] || rep.PID == c.pid:
					wrong = append(wrong, fmt.Sprintf("%s: was on %s pid %s, now %s pid %s (the slot's new process: %s)", c.src, c.inst, c.pid, rep.Instance, rep.PID, after[n]))
				}
			}()
		}
		wg.Wait()
		if len(wrong) > 0 {
			t.Errorf("%d of %d sources' next connection did not reach their slot's new process: %s", len(wrong), len(r.long.conns), strings.Join(wrong[:min(len(wrong), 5)], "; "))
		}
		t.Logf("%d long-lived connections (%v), %d lines echoed, ended %v after the reload began; next connections on the new processes",
			len(r.long.conns), r.per, r.long.said.Load(), r.ended.Sub(r.start).Round(time.Millisecond))
	})

	t.Run("new connections: none failed, p99 under twice the steady state's", func(t *testing.T) {
		failed, moved := load.failures()
		if len(failed) > 0 {
			t.Errorf("%d new connections failed: %s", len(failed), sampleErrs(failed, r.start))
		}
		for _, m := range moved {
			t.Errorf("a source changed slots: %s", m)
		}
		last := rounds[len(rounds)-1]
		ps, pd := p99(last.steady), p99(last.during)
		if !last.p99ok() {
			t.Errorf("p99 during the reload %v, steady %v: want under %v (in %d rounds); the slowest: %s", pd, ps, p99Bound(ps), len(rounds), slowest(last.during, last.start, 15))
		}
		t.Logf("new connections: %d steady (p99 %v), %d during the reload and drains (p99 %v, bound %v), 0 failed; round %d",
			len(last.steady), ps.Round(10*time.Microsecond), len(last.during), pd.Round(10*time.Microsecond), p99Bound(ps), len(rounds))
	})

	t.Run("reload returned before the drains ended; systemd and status show both", func(t *testing.T) {
		for i, r := range rounds {
			if r.took >= r.drainsEnd.Sub(r.start) {
				t.Errorf("round %d: the reload took %v, the drains ended %v after it began", i+1, r.took, r.drainsEnd.Sub(r.start))
			}
			for _, bad := range r.returned {
				t.Errorf("round %d: when systemctl reload returned, slot %s", i+1, bad)
			}
		}
		slots.checkNeverDown(t)
		for n := 1; n <= handoverSlots; n++ {
			pair := [2]string{after[n], before[n]}
			if !slots.overlap[n][pair] {
				t.Errorf("slot %d: systemd never showed new pid %s serving beside old pid %s draining (seen %v)", n, after[n], before[n], slots.overlap[n])
			}
			if !status.seen[n][pair] {
				t.Errorf("slot %d: powerhouse status never showed pid %s serving and pid %s draining (seen %v; errors %v)", n, after[n], before[n], status.seen[n], status.errs[:min(len(status.errs), 3)])
			}
		}
		if !strings.Contains(status.sample, "draining") {
			t.Errorf("powerhouse status, while a process drained, does not say so:\n%s", status.sample)
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("powerhouse status during the drains:\n%s", status.sample)
		}
		t.Logf("systemctl reload returned in %v; drains ended %v after the reload began", r.took.Round(time.Millisecond), r.drainsEnd.Sub(r.start).Round(time.Millisecond))
	})

	t.Run("worker.reload events", func(t *testing.T) {
		byN := map[int]reloadEvent{}
		for _, e := range evs {
			n, _ := strconv.Atoi(e["instance"])
			if _, dup := byN[n]; dup {
				t.Errorf("two worker.reload events for slot %d: %v", n, evs)
			}
			byN[n] = e
		}
		for n := 1; n <= handoverSlots; n++ {
			e := byN[n]
			if e == nil {
				t.Errorf("no worker.reload for slot %d: %v", n, evs)
				continue
			}
			drained, derr := strconv.Atoi(e["drained"])
			_, rerr := strconv.Atoi(e["ready_ms"])
			conns := r.per[fmt.Sprintf("web@%d", n)]
			switch {
			case e["old_pid"] != before[n] || e["new_pid"] != after[n]:
				t.Errorf("slot %d: old_pid %q new_pid %q, want %s and %s", n, e["old_pid"], e["new_pid"], before[n], after[n])
			case rerr != nil:
				t.Errorf("slot %d: ready_ms %q", n, e["ready_ms"])
			case derr != nil || drained < conns:
				t.Errorf("slot %d: drained %q, want at least its %d long-lived connections", n, e["drained"], conns)
			case e["cut"] != "0":
				t.Errorf("slot %d: cut %q, want 0", n, e["cut"])
			}
			t.Logf("worker.reload slot %d: old_pid %s new_pid %s (%s → %s) ready_ms %s drained %s cut %s result %s",
				n, e["old_pid"], e["new_pid"], e["old_unit"], e["new_unit"], e["ready_ms"], e["drained"], e["cut"], e["result"])
		}
	})
}

// p99Bound is the most the reload's p99 may be: twice the steady
// state's, never less than twice p99Floor.
func p99Bound(steady time.Duration) time.Duration { return 2 * max(steady, p99Floor) }

// handoverRound is one reload under load.
type handoverRound struct {
	before, after  map[int]string // each slot's serving PID
	long           *echoes
	per            map[string]int // long-lived connections per instance
	start          time.Time      // of the reload
	took           time.Duration  // of systemctl reload
	ended          time.Time      // the long-lived connections were closed
	drainsEnd      time.Time      // every slot at rest on one side
	steady, during []sample
	returned       []string // slots not draining-and-serving when the reload returned
}

func (r *handoverRound) p99ok() bool { return p99(r.during) < p99Bound(p99(r.steady)) }

// reloadRound holds longLived long-lived connections, measures the steady
// state of load, reloads, keeps the connections 3 s from the reload's
// start (at least until just after it returned: far less than the drain
// timeout), has their clients close them one by one over 500 ms (as
// clients do, not in one burst of the test's making), and waits until
// every old process has drained and exited.
func reloadRound(t *testing.T, h *house, load *pacedLoad) *handoverRound {
	t.Helper()
	r := &handoverRound{before: servingPIDs(t, h)}
	r.long = holdEchoes(srcs(longLived, echoSrc), linePeriod)
	t.Cleanup(func() { r.long.finish(0) })
	r.long.up.Wait()
	if f := r.long.failed(); len(f) > 0 {
		t.Fatalf("%d long-lived connections failed before the reload, e.g. %s: %v", len(f), f[0].src, f[0].err)
	}
	r.per = r.long.perSlot()
	for n := 1; n <= handoverSlots; n++ {
		if r.per[fmt.Sprintf("web@%d", n)] == 0 {
			t.Fatalf("no long-lived connection reached web@%d: %v", n, r.per)
		}
	}
	for _, c := range r.long.conns {
		n, _ := strconv.Atoi(strings.TrimPrefix(c.inst, "web@"))
		if c.pid != r.before[n] {
			t.Fatalf("%s: answered by %s pid %s, the slot's process is %s", c.src, c.inst, c.pid, r.before[n])
		}
	}

	steadyFrom := time.Now()
	load.waitServed(t, 15*streamSrcs)
	r.start = time.Now()
	r.steady = load.window(steadyFrom, r.start)
	out, err := h.box.Systemctl(t.Context(), "reload", handoverGroup.SupervisorUnit())
	r.took = time.Since(r.start)
	if err != nil {
		t.Fatalf("systemctl reload: %v\n%s", err, out)
	}
	// The reload returned: every old process still runs, draining (its
	// long-lived connections are open; the last slot's stop job may not
	// have begun yet), every new one serves.
	for _, s := range mustSlots(t, h) {
		var draining, serving int
		for _, sd := range s.sides() {
			switch {
			case sd.running() && sd.PID == r.before[s.N]:
				draining++
			case sd.serving() && sd.running():
				serving++
			}
		}
		if draining != 1 || serving != 1 {
			r.returned = append(r.returned, fmt.Sprintf("%s; want its old pid %s draining and a new one serving", s, r.before[s.N]))
		}
	}
	time.Sleep(max(time.Until(r.start.Add(3*time.Second)), 500*time.Millisecond)) // the connections' fixed life: a duration, not an event
	r.long.finish(500 * time.Millisecond)
	r.ended = time.Now()
	waitFor(t, 20*time.Second, "every old process to finish its drain", func() bool {
		for _, s := range mustSlots(t, h) {
			if !s.settled() {
				return false
			}
		}
		return true
	})
	r.drainsEnd = time.Now()
	r.after = servingPIDs(t, h)
	r.during = load.window(r.start, r.drainsEnd)
	return r
}

// TestIntegrationHandoverNeverReady: the reload's new process for slot 1
// never sends READY=1: after timeout_start it is stopped, the reload
// fails naming the instance and its unit, and the old processes keep
// serving every client (same instance, same PID), long-lived connections
// included; no request fails.
func TestIntegrationHandoverNeverReady(t *testing.T) { handoverNeverReady(t, "handoff") }

// TestIntegrationHandoverNeverReadyKernel: the same in kernel mode, where
// the new process that never becomes ready holds the slot's listening
// socket too, and must not take its connections (or, stopped, end it).
func TestIntegrationHandoverNeverReadyKernel(t *testing.T) { handoverNeverReady(t, "kernel") }

func handoverNeverReady(t *testing.T, dispatch string) {
	const marker = "/run/never-ready"
	h := newHandoverHouse(t, handoverConfig(dispatch,
		helloBehind("if [ -e "+marker+" ]; then exec sleep 600; fi"), `timeout_start = "3s"`+"\n"+`timeout_stop = "5s"`))
	before := servingPIDs(t, h)
	clients := stickyMap(t, webClients)

	load := startPaced(srcs(32, streamSrc), streamPeriod)
	defer load.finish()
	long := holdEchoes(srcs(30, echoSrc), linePeriod)
	defer long.finish(0)
	long.up.Wait()
	load.waitServed(t, 64)
	slots := watchSlots(h)
	if err := os.WriteFile(h.box.Path(marker), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := h.box.Systemctl(t.Context(), "reload", handoverGroup.SupervisorUnit())
	took := time.Since(start)
	if err == nil {
		t.Fatalf("systemctl reload succeeded with a new process that never became ready:\n%s", out)
	}
	load.waitServed(t, 64)
	slots.finish()
	long.finish(0)
	load.finish()

	j, _ := h.run("journalctl", "--no-pager", "-o", "cat", "-u", handoverGroup.SupervisorUnit())
	b1 := handoverGroup.InstanceSide(1, units.SideB)
	for _, want := range []string{fmt.Sprintf("instance 1 (%s) did not become ready", b1), "instances 2, 3 keep their old process"} {
		if !strings.Contains(j, want) {
			t.Errorf("the supervisor's journal does not say %q:\n%s", want, j)
		}
	}
	if took < 3*time.Second {
		t.Errorf("the reload failed after %v, before the start timeout of 3s", took)
	}
	for _, s := range mustSlots(t, h) {
		if !s.settled() || s.A.PID != before[s.N] {
			t.Errorf("slot %s after the failed reload: want only side a, pid %s", s, before[s.N])
		}
	}
	slots.checkNeverDown(t)
	for a, inst := range stickyMap(t, webClients) {
		if inst != clients[a] {
			t.Errorf("%s moved from %s to %s", a, clients[a], inst)
		}
	}
	failed, moved := load.failures()
	if len(failed) > 0 || len(moved) > 0 {
		t.Errorf("%d requests failed (%s), sources moved: %v", len(failed), sampleErrs(failed, start), moved)
	}
	for _, c := range long.conns {
		n, _ := strconv.Atoi(strings.TrimPrefix(c.inst, "web@"))
		if c.err != nil || c.pid != before[n] {
			t.Errorf("long-lived %s on %s pid %s (the slot's: %s): %v", c.src, c.inst, c.pid, before[n], c.err)
		}
	}
	t.Logf("reload failed after %v; %d requests and %d long-lived connections served by the old processes, 0 failed", took.Round(time.Millisecond), load.served.Load(), len(long.conns))
}

// TestIntegrationHandoverSupervisorKilled: the supervisor is SIGKILLed in
// the middle of a reload, once slot 1 handed over and slot 2's new process
// is starting (each new process takes a second to become ready here).
// Throughout, every slot has a serving side and no request fails; the
// restarted supervisor finds the interrupted reload and the group ends
// fully on new processes, one side per slot, or reports a partial state.
func TestIntegrationHandoverSupervisorKilled(t *testing.T) {
	const marker = "/run/slow-start"
	h := newHandoverHouse(t, handoverConfig("handoff",
		helloBehind("if [ -e "+marker+" ]; then sleep 1; fi"), `timeout_start = "10s"`+"\n"+`timeout_stop = "5s"`))
	before := servingPIDs(t, h)
	oldSup := h.show(handoverGroup.SupervisorUnit(), "MainPID")

	load := startPaced(srcs(32, streamSrc), streamPeriod)
	defer load.finish()
	load.waitServed(t, 64)
	slots := watchSlots(h)
	if err := os.WriteFile(h.box.Path(marker), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	reloaded := make(chan error, 1)
	started := time.Now()
	go func() {
		_, err := h.box.Systemctl(t.Context(), "reload", handoverGroup.SupervisorUnit())
		reloaded <- err
	}()
	var at []slotState
	waitFor(t, 20*time.Second, "slot 1 handed over and slot 2's new process starting", func() bool {
		at = mustSlots(t, h)
		s1, s2 := at[0], at[1]
		return len(s1.serving()) == 1 && s1.serving()[0] != before[1] && s2.B.Active == "activating"
	})
	h.systemctl("kill", "-s", "KILL", handoverGroup.SupervisorUnit())
	t.Logf("SIGKILL of the supervisor (pid %s) with slots %v", oldSup, at)
	if err := <-reloaded; err == nil {
		t.Error("systemctl reload succeeded though its supervisor was killed")
	}
	waitFor(t, 20*time.Second, "a new supervisor", func() bool {
		p := h.show(handoverGroup.SupervisorUnit(), "MainPID")
		return p != "0" && p != oldSup && h.show(handoverGroup.SupervisorUnit(), "ActiveState") == "active"
	})
	newSup := h.show(handoverGroup.SupervisorUnit(), "MainPID")
	// Within the bound of a handover per slot (start, drain), every slot
	// comes to rest on one side.
	var end []slotState
	waitFor(t, 30*time.Second, "every slot at rest on one side", func() bool {
		end = mustSlots(t, h)
		for _, s := range end {
			if !s.settled() {
				return false
			}
		}
		return true
	})
	load.waitServed(t, 64)
	slots.finish()
	load.finish()

	slots.checkNeverDown(t)
	failed, moved := load.failures()
	if len(failed) > 0 || len(moved) > 0 {
		t.Errorf("%d requests failed (%s), sources moved: %v", len(failed), sampleErrs(failed, started), moved)
	}
	var old []int
	for _, s := range end {
		if s.serving()[0] == before[s.N] {
			old = append(old, s.N)
		}
	}
	j, _ := h.run("journalctl", "--no-pager", "-o", "cat", "-u", handoverGroup.SupervisorUnit(), "_PID="+newSup)
	// The new supervisor found the interrupted reload and says so.
	if !strings.Contains(j, "resumed") {
		t.Errorf("the new supervisor does not report the interrupted reload it resumed:\n%s", j)
	}
	if len(old) > 0 {
		// A partial end is allowed only when the new supervisor says so.
		if !strings.Contains(j, "partial") && !strings.Contains(j, "interrupted") {
			t.Errorf("slots %v kept their old process and the new supervisor did not report it:\n%s", old, j)
		}
		t.Logf("the group ended partially reloaded (old processes in slots %v), as the supervisor reported", old)
	} else {
		t.Logf("the group ended fully on new processes: %v (was %v); served %d requests, 0 failed", end, before, load.served.Load())
	}
	if testing.Verbose() {
		t.Logf("the new supervisor's journal:\n%s", j)
	}
}
