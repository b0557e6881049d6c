package integration

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/internal/helloclient"
	"github.com/powerhouse/powerhouse/units"
)

// The load of TestIntegrationFaultsUnderLoad.
//
// The rate is open-loop (a connection is started every 1/rate whatever the
// earlier ones are doing), so a stall shows up as latency of the
// connections that arrive during it instead of being hidden by a client
// that waits. 500 new connections per second: at 125/s per instance, a
// stopped worker's hand-off queue (net.unix.max_dgram_qlen = 10, about 11
// datagrams) is full within ~0.1 s, and a 6 s phase gives ~2,200
// connections of the three other instances, so p99 is the 23rd slowest,
// not a single outlier. It stays far below what the machine serves (the
// benchmark's dispatcher accepted about 6,000 new connections per second,
// docs/BENCHMARKS.md), so that latency measures the dispatcher and not a
// saturated CPU, while the race-instrumented client (about 0.45 ms of CPU
// per connection under -race, 0.35 without: a fifth of a core), the
// dispatcher and four workers share 2 cores.
const (
	faultRate    = 500
	faultSources = 64 // the benchmark's loadgen default: 127.0.0.2 ... 127.0.0.65
	// faultTimeout bounds one connection from connect to answer: well over
	// the SIGSTOP (3 s) during which the stopped worker's queued
	// connections wait, so a timeout means a connection was lost.
	faultTimeout = 8 * time.Second
	// faultBound is the bound on other instances' p99 latency.
	faultBound = 5 * time.Millisecond
	// How long each phase runs on the load's clock, fault and recovery
	// included (a recovery that takes longer makes the phase longer).
	phaseLength    = 6 * time.Second
	baselineLength = 4 * time.Second
	maxInstance    = 8 // instance numbers answered beyond this are "bad"
)

// outcome is what became of one connection.
type outcome uint8

const (
	outPending outcome = iota // never finished: a bug of the load itself
	outOK
	outRefused // connect: ECONNREFUSED
	outReset   // ECONNRESET or EPIPE
	outTimeout // faultTimeout passed
	outEOF     // the connection ended before a whole answer
	outBad     // an answer, but not hello's 200 line
	outOther   // any other error (connect or I/O)
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"pending", "ok", "refused", "reset", "timeout", "eof", "bad", "other"}

func (o outcome) String() string { return outcomeNames[o] }

// connRecord is one connection of the load. Times are on the monotonic
// clock, relative to the start of the load.
type connRecord struct {
	start, end time.Duration // connect start; answer complete (or failure)
	// connected: connect() returned, i.e. the kernel completed the
	// handshake (0 if it failed). A delay before it is the listening
	// socket's (its backlog, SYN retransmits), after it the dispatcher's
	// and the worker's.
	connected time.Duration
	pid       int32 // hello's pid, 0 without an answer
	src       uint8 // index of the source address
	inst      int8  // instance that answered, 0 without an answer
	out       outcome
	err       string // failures only
}

// faultLoad opens faultRate new connections per second to addr, each with
// one HTTP request, round-robin over faultSources source addresses, and
// records every one. Each connection's goroutine owns its record until
// finish returns.
type faultLoad struct {
	addr    string
	req     []byte
	period  time.Duration
	t0      time.Time
	t0Mono  time.Duration // t0 on CLOCK_MONOTONIC, the journal's short-monotonic clock
	dialers [faultSources]*net.Dialer
	home    [faultSources]int8 // each source's instance before the load
	recs    []connRecord
	issued  atomic.Int64
	stop    chan struct{}
	// The pacer's delays, owned by it until finish: when it was more than
	// 20 ms late (the machine starved the test process, and latencies
	// measured then include that) and its worst lateness.
	lateAt  []time.Duration
	maxLate time.Duration
	wg      sync.WaitGroup

	// Live facts for the test's waits, updated as answers arrive. Times
	// are the start (ns since t0) of the latest connection that showed it.
	lastPID [maxInstance + 1]atomic.Int32 // pid that answered last, by instance
	atHome  [maxInstance + 1]atomic.Int64 // a client of instance i answered by i
	moved   [maxInstance + 1]atomic.Int64 // a client of instance i answered by another
	lastOK  atomic.Int64                  // any answer
	// Connections of instance i's clients started and not yet ended.
	inflight [maxInstance + 1]atomic.Int32
}

func sourceAddr(i int) string { return fmt.Sprintf("127.0.0.%d", i+2) }

func newFaultLoad(addr string, maxDuration time.Duration) *faultLoad {
	l := &faultLoad{
		addr:   addr,
		req:    []byte("GET / HTTP/1.1\r\nHost: faults\r\nConnection: close\r\n\r\n"),
		period: time.Second / faultRate,
		recs:   make([]connRecord, int(maxDuration.Seconds()*faultRate)),
		stop:   make(chan struct{}),
	}
	for i := range l.dialers {
		l.dialers[i] = &net.Dialer{
			LocalAddr: &net.TCPAddr{IP: net.ParseIP(sourceAddr(i))},
			Timeout:   faultTimeout,
			// As bench/loadgen: the port is chosen at connect() for the
			// whole 4-tuple, so each source has its own ~28,000 ports.
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				}); err != nil {
					return err
				}
				return serr
			},
		}
	}
	return l
}

// now is the load's clock.
func (l *faultLoad) now() time.Duration { return time.Since(l.t0) }

func (l *faultLoad) start() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	l.t0 = time.Now()
	l.t0Mono = time.Duration(ts.Nano())
	l.wg.Add(1)
	go l.pace()
}

// finish stops starting connections and waits for the ones in flight
// (each ends within faultTimeout). It may be called more than once.
func (l *faultLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// records returns the connections started; only after finish.
func (l *faultLoad) records() []connRecord { return l.recs[:l.issued.Load()] }

// pace starts connection i at i*period. If it falls behind by more than
// 20 ms (the machine is overloaded), it moves its schedule instead of
// bursting to catch up, which would measure the burst.
func (l *faultLoad) pace() {
	defer l.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	next := time.Duration(0)
	for i := range l.recs {
		if d := next - l.now(); d > 0 {
			timer.Reset(d)
			select {
			case <-l.stop:
				return
			case <-timer.C:
			}
		} else {
			select {
			case <-l.stop:
				return
			default:
			}
			l.maxLate = max(l.maxLate, -d)
			if d < -20*time.Millisecond {
				if len(l.lateAt) < 10000 {
					l.lateAt = append(l.lateAt, next)
				}
				next = l.now()
			}
		}
		next += l.period
		l.wg.Add(1)
		go l.one(i)
		l.issued.Store(int64(i + 1))
	}
}

// one makes connection i and records it. Latency is connect start to the
// end of hello's answer line, on the monotonic clock.
func (l *faultLoad) one(i int) {
	defer l.wg.Done()
	r := &l.recs[i]
	r.src = uint8(i % faultSources)
	h := l.home[r.src]
	l.inflight[h].Add(1)
	defer l.inflight[h].Add(-1)
	t := time.Now()
	r.start = t.Sub(l.t0)
	fail := func(o outcome, err error) {
		r.end, r.out, r.err = l.now(), o, err.Error()
	}
	c, err := l.dialers[r.src].Dial("tcp", l.addr)
	if err != nil {
		fail(classifyConnErr(err), err)
		return
	}
	defer c.Close()
	r.connected = l.now()
	c.SetDeadline(t.Add(faultTimeout))
	if _, err := c.Write(l.req); err != nil {
		fail(classifyConnErr(err), err)
		return
	}
	var buf [512]byte
	n, line := 0, []byte(nil)
	for line == nil {
		if n == len(buf) {
			fail(outBad, fmt.Errorf("answer longer than %d bytes: %q", len(buf), buf[:n]))
			return
		}
		m, err := c.Read(buf[n:])
		n += m
		if h := bytes.Index(buf[:n], []byte("\r\n\r\n")); h >= 0 {
			if j := bytes.IndexByte(buf[h+4:n], '\n'); j >= 0 {
				line = buf[h+4 : h+4+j]
				break
			}
		}
		if err != nil {
			if err == io.EOF {
				fail(outEOF, fmt.Errorf("connection closed after %d bytes: %q", n, buf[:n]))
			} else {
				fail(classifyConnErr(err), err)
			}
			return
		}
	}
	end := l.now()
	if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200 ")) {
		fail(outBad, fmt.Errorf("answer %q", buf[:n]))
		return
	}
	rep, err := helloclient.Parse(string(line))
	if err != nil {
		fail(outBad, err)
		return
	}
	_, num, _ := strings.Cut(rep.Instance, "@")
	inst, err1 := strconv.Atoi(num)
	pid, err2 := strconv.ParseInt(rep.PID, 10, 32)
	if err1 != nil || err2 != nil || inst < 1 || inst > maxInstance {
		fail(outBad, fmt.Errorf("answer line %q", line))
		return
	}
	r.end, r.out, r.inst, r.pid = end, outOK, int8(inst), int32(pid)
	l.lastPID[inst].Store(int32(pid))
	if h == r.inst {
		storeMax(&l.atHome[h], int64(r.start))
	} else {
		storeMax(&l.moved[h], int64(r.start))
	}
	storeMax(&l.lastOK, int64(r.start))
	// hello closes after its answer: wait for that (bounded by the
	// deadline), so that the server keeps the TIME_WAIT state.
	c.Read(buf[:])
}

// handoffQueueLen is how many datagrams a hand-off socket queues: one
// more than net.unix.max_dgram_qlen (docs/handoff.md). The box shares the
// host's network namespace, so the host's value is the box's.
func handoffQueueLen(t *testing.T) int32 {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 1<<20 {
		t.Fatalf("net.unix.max_dgram_qlen %q: %v", b, err)
	}
	return int32(n + 1)
}

// selfCPU is the CPU time (user and system) this process has used: the
// load's cost, which matters under -race on 2 cores.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

func classifyConnErr(err error) outcome {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return outRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return outReset
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return outTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return outEOF
	}
	return outOther
}

// faultKill is one SIGKILL: of instance inst's worker, or of the
// supervisor (inst 0), through which every connection passes. The signal
// left between from and to on the load's clock.
type faultKill struct {
	inst     int
	from, to time.Duration
}

// faultPhase is a stretch of the load with at most one fault in it. Its
// connections are those started in [from, to).
type faultPhase struct {
	name    string
	faulted int // instance whose clients are not "other" (0: none)
	from    time.Duration
	to      time.Duration
	kills   []faultKill
	// latencyFrom: other clients' latency counts from here on. It is from,
	// except after the supervisor's SIGKILL, which every client waits
	// through (see TestIntegrationFaultsUnderLoad): there it is when the
	// new supervisor had served every connection that queued meanwhile.
	latencyFrom time.Duration
}

// excused says whether a failed connection was inside a killed process:
// it was in flight when the SIGKILL left (started before its window ended,
// failed after it began), it belonged to the killed process (a client of
// the killed worker's instance, or any client for the supervisor), and it
// ended as a killed process's sockets do, closed (EOF) or reset. A refusal
// or a timeout is never excused: the listening and hand-off sockets are
// systemd's and outlive any process.
func excused(r connRecord, home int, kills []faultKill) bool {
	if r.out != outReset && r.out != outEOF {
		return false
	}
	for _, k := range kills {
		if (k.inst == 0 || k.inst == home) && r.start <= k.to && r.end >= k.from {
			return true
		}
	}
	return false
}

// phaseStats is what one phase measured.
type phaseStats struct {
	conns, ok, excused, failed int
	byOutcome                  [nOutcomes]int
	other                      []time.Duration // latencies of other instances' clients
	slowest                    []connRecord    // other instances' clients, slowest first (a few)
	faultedLat                 []time.Duration // latencies of the faulted instance's clients
	otherMoved                 int             // other clients answered by another than their instance
	worstWindowP99             time.Duration   // worst p99 of other clients over 1 s windows
	failures, excuses          []connRecord
	pacerLate                  int // times the pacer was starved in the phase
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(p*float64(len(sorted))), len(sorted)-1)]
}

// measure sorts the records of phase p into its statistics; lateAt are
// the times the pacer was starved.
func measure(p faultPhase, recs []connRecord, home *[faultSources]int8, lateAt []time.Duration) phaseStats {
	var s phaseStats
	for _, at := range lateAt {
		if at >= p.from && at < p.to {
			s.pacerLate++
		}
	}
	windows := map[time.Duration][]time.Duration{}
	for _, r := range recs {
		if r.start < p.from || r.start >= p.to {
			continue
		}
		s.conns++
		s.byOutcome[r.out]++
		h := int(home[r.src])
		switch {
		case r.out == outOK:
			s.ok++
			lat := r.end - r.start
			if h == p.faulted {
				s.faultedLat = append(s.faultedLat, lat)
				break
			}
			if int(r.inst) != h {
				s.otherMoved++
			}
			if r.start >= p.latencyFrom {
				s.other = append(s.other, lat)
				s.slowest = append(s.slowest, r)
				slices.SortFunc(s.slowest, func(a, b connRecord) int { return cmp.Compare(b.end-b.start, a.end-a.start) })
				s.slowest = s.slowest[:min(len(s.slowest), 3)]
				w := (r.start - p.latencyFrom) / time.Second
				windows[w] = append(windows[w], lat)
			}
		case excused(r, h, p.kills):
			s.excused++
			s.excuses = append(s.excuses, r)
		default:
			s.failed++
			s.failures = append(s.failures, r)
		}
	}
	slices.Sort(s.other)
	slices.Sort(s.faultedLat)
	for _, w := range windows {
		if len(w) < 100 { // a last, partial window says nothing about p99
			continue
		}
		slices.Sort(w)
		s.worstWindowP99 = max(s.worstWindowP99, percentile(w, 0.99))
	}
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func describe(r connRecord, home *[faultSources]int8) string {
	s := fmt.Sprintf("%s (client of web@%d) at %s ms: %s after %s ms", sourceAddr(int(r.src)), home[r.src], ms(r.start), r.out, ms(r.end-r.start))
	if r.connected > 0 {
		s += fmt.Sprintf(" (connected after %s ms)", ms(r.connected-r.start))
	}
	if r.inst > 0 {
		s += fmt.Sprintf(", answered by web@%d pid %d", r.inst, r.pid)
	}
	if r.err != "" {
		s += ": " + r.err
	}
	return s
}

// TestIntegrationFaultsUnderLoad is issue 11's acceptance under faults:
// with the benchmark's 64 client addresses opening new connections at a
// steady rate to the demo's sticky group (4 hello instances, real systemd,
// generated units), it SIGKILLs a worker, SIGKILLs the supervisor,
// `systemctl stop`s an instance (and starts it again) and fills an
// instance's hand-off queue (its worker SIGSTOPped for 3 s). Every
// connection is accounted for: a failure is excused only when it was
// inside a killed process (in flight at the SIGKILL, from that process's
// clients, ending closed or reset); every other failure fails the test.
// In every phase the clients of the other instances must see a p99 below
// 5 ms, connect to answer.
//
// The supervisor has no "other instances": every connection goes through
// it, and the ones that arrive while it restarts (RestartSec=500ms) wait
// in the listening socket's backlog, which systemd holds. For that phase
// the test requires that none of them is lost, reports how long they
// waited, and applies the 5 ms bound once the new supervisor has served
// every connection that queued meanwhile.
//
// The latency bound is measured from a client in the same 2 cores as the
// house: a scenario whose only failures are latencies (nothing lost) is
// run once more in a new house, and only the second run's latencies fail
// the test. Lost connections fail it at once.
func TestIntegrationFaultsUnderLoad(t *testing.T) {
	for attempt := 1; attempt <= 2; attempt++ {
		final := attempt == 2
		slow := false
		t.Run(fmt.Sprintf("attempt %d", attempt), func(t *testing.T) { slow = faultsUnderLoad(t, final) })
		if !slow || t.Failed() {
			return
		}
		t.Logf("attempt %d: no connection lost, but a phase's p99 was over %s ms on this machine: running the scenario once more", attempt, ms(faultBound))
	}
}

// faultsUnderLoad runs the scenario in a new house. A p99 over the bound
// fails t when final, and is otherwise logged and reported (slow).
func faultsUnderLoad(t *testing.T, final bool) (slow bool) {
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")
	ctx := t.Context()
	mgr := h.raw
	const (
		killed  = 1 // its worker gets SIGKILL
		stopped = 2 // systemctl stop, then start
		filled  = 3 // its worker gets SIGSTOP: the queue fills
	)
	unit := func(n int) string { return units.Group{Name: "web"}.Instance(n) }
	const supervisor = "powerhouse@web.service"
	mainPID := func(u string) uint32 {
		pid, err := h.m.MainPID(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	active := func(u string) bool {
		st, err := h.m.State(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		return st.ActiveState == "active"
	}
	for n := 1; n <= 4; n++ {
		waitFor(t, 10*time.Second, unit(n)+" running", func() bool { return active(unit(n)) && mainPID(unit(n)) != 0 })
	}

	l := newFaultLoad("127.0.0.1:9999", 60*time.Second)
	// Every source's instance before the load, asked twice.
	counts := map[int8]int{}
	for i := range l.home {
		var first int8
		for range 2 {
			r, err := get(client(sourceAddr(i)), webURL)
			if err != nil {
				t.Fatalf("client %s: %v", sourceAddr(i), err)
			}
			_, num, _ := strings.Cut(r.Instance, "@")
			n, err := strconv.Atoi(num)
			if err != nil || n < 1 || n > 4 {
				t.Fatalf("client %s: answered by %q", sourceAddr(i), r.Instance)
			}
			if first != 0 && int8(n) != first {
				t.Fatalf("client %s reached web@%d, then web@%d", sourceAddr(i), first, n)
			}
			first = int8(n)
		}
		l.home[i] = first
		counts[first]++
	}
	for _, n := range []int8{killed, stopped, filled} {
		if counts[n] == 0 {
			t.Fatalf("no client of web@%d among %d sources: %v", n, faultSources, counts)
		}
	}
	t.Logf("clients per instance: %v", counts)

	cpu0 := selfCPU()
	l.start()
	t.Cleanup(l.finish)
	// A SIGSTOPped worker must never outlive the test: SIGCONT before the
	// box goes. Cleanups run last-in first-out, so this one runs before
	// the load's finish (which waits for the connections queued at the
	// stopped worker) and the box's Close. Harmless when nothing is stopped.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := mgr.KillUnitWithTarget(ctx, unit(filled), sddbus.All, int32(syscall.SIGCONT)); err != nil {
			t.Logf("SIGCONT to %s at cleanup: %v", unit(filled), err)
		}
	})
	var phases []faultPhase
	begin := func(name string, faulted int) *faultPhase {
		now := l.now()
		if len(phases) > 0 {
			phases[len(phases)-1].to = now
		}
		phases = append(phases, faultPhase{name: name, faulted: faulted, from: now, latencyFrom: now})
		return &phases[len(phases)-1]
	}
	// wait polls cond until it holds or d passes. A wait that times out
	// fails the test and ends the scenario, but what was measured until
	// then is still analysed and printed.
	wait := func(d time.Duration, what string, cond func() bool) bool {
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Errorf("timed out after %v waiting for %s (at %s ms of load); journal:\n%s", d, what, ms(l.now()), h.journal())
				return false
			}
			time.Sleep(10 * time.Millisecond)
		}
		return true
	}
	// runUntil lets the load run until the phase has lasted d on its clock.
	runUntil := func(p *faultPhase, d time.Duration) bool {
		return wait(d+10*time.Second, p.name+" to last "+d.String(), func() bool { return l.now() >= p.from+d })
	}
	signal := func(u string, sig syscall.Signal) (from, to time.Duration) {
		from = l.now()
		if err := mgr.KillUnitWithTarget(ctx, u, sddbus.Main, int32(sig)); err != nil {
			t.Fatalf("%v to %s: %v", sig, u, err)
		}
		return from, l.now()
	}
	// restarted waits until u has a new main PID and is active again.
	restarted := func(u string, old uint32) (uint32, bool) {
		var pid uint32
		ok := wait(15*time.Second, u+" back with a new PID", func() bool {
			pid = mainPID(u)
			return pid != 0 && pid != old && active(u)
		})
		return pid, ok
	}
	// The supervisor's phase, and when its new process was seen up.
	supPhase, up := -1, time.Duration(0)

	// The scenario: each step waits for the event that ends it.
	func() {
		p := begin("baseline", 0)
		if !runUntil(p, baselineLength) {
			return
		}

		p = begin(fmt.Sprintf("SIGKILL worker web@%d", killed), killed)
		old := mainPID(unit(killed))
		from, to := signal(unit(killed), syscall.SIGKILL)
		p.kills = append(p.kills, faultKill{inst: killed, from: from, to: to})
		pid, ok := restarted(unit(killed), old)
		if !ok || !wait(15*time.Second, "the new web@1 worker to answer", func() bool { return uint32(l.lastPID[killed].Load()) == pid }) ||
			!runUntil(p, phaseLength) {
			return
		}

		p = begin("SIGKILL supervisor", 0)
		supPhase = len(phases) - 1
		old = mainPID(supervisor)
		from, to = signal(supervisor, syscall.SIGKILL)
		p.kills = append(p.kills, faultKill{inst: 0, from: from, to: to})
		if _, ok := restarted(supervisor, old); !ok {
			return
		}
		up = l.now()
		if !wait(15*time.Second, "an answer through the new supervisor", func() bool { return time.Duration(l.lastOK.Load()) >= up }) ||
			!runUntil(p, phaseLength) {
			return
		}

		p = begin(fmt.Sprintf("systemctl stop+start web@%d", stopped), stopped)
		if err := h.m.Stop(ctx, unit(stopped)); err != nil {
			t.Errorf("%v", err)
			return
		}
		at := l.now()
		// Its clients move; or, if the supervisor was slow to take it out
		// of dispatch and to stop its hand-off socket, a connection queued
		// there starts it again (socket activation): not a loss, but the
		// operator's stop did not hold, and the test says so.
		var back bool
		if !wait(15*time.Second, "web@2's clients to move", func() bool {
			back = active(unit(stopped))
			return back || time.Duration(l.moved[stopped].Load()) >= at
		}) {
			return
		}
		if back && time.Duration(l.moved[stopped].Load()) < at {
			t.Logf("web@2 became active again by itself %s ms after systemctl stop returned, before any of its clients moved: its hand-off socket started it", ms(l.now()-at))
		}
		if err := h.m.Start(ctx, unit(stopped)); err != nil {
			t.Errorf("%v", err)
			return
		}
		at = l.now()
		if !wait(15*time.Second, "web@2's clients to come back", func() bool { return time.Duration(l.atHome[stopped].Load()) >= at }) ||
			!runUntil(p, phaseLength) {
			return
		}

		p = begin(fmt.Sprintf("queue fill web@%d (SIGSTOP 3s)", filled), filled)
		from, _ = signal(unit(filled), syscall.SIGSTOP)
		// Full: more of web@3's clients wait than its hand-off queue holds
		// (max_dgram_qlen+1 datagrams), or the dispatcher gave up waiting
		// and handed one of them to another instance. Then keep it stopped
		// for 3 s of load.
		qlen := handoffQueueLen(t)
		if !wait(15*time.Second, "web@3's queue to fill", func() bool {
			return l.inflight[filled].Load() > qlen || time.Duration(l.moved[filled].Load()) >= from
		}) || !wait(15*time.Second, "3 s of load with web@3 stopped", func() bool { return l.now() >= from+3*time.Second }) {
			return
		}
		_, at = signal(unit(filled), syscall.SIGCONT)
		if !wait(15*time.Second, "web@3 to answer its clients again", func() bool { return time.Duration(l.atHome[filled].Load()) >= at }) {
			return
		}
		runUntil(p, phaseLength)
	}()
	phases[len(phases)-1].to = l.now()
	// SIGCONT before finish, in case the scenario stopped with web@3
	// stopped: finish would wait for its clients' timeouts.
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	mgr.KillUnitWithTarget(cctx, unit(filled), sddbus.All, int32(syscall.SIGCONT))
	cancel()
	l.finish()
	cpu := selfCPU() - cpu0
	recs := l.records()

	// The supervisor's outage: the connections started before the new
	// supervisor was seen up waited for it; the bound applies once the
	// last of them was answered.
	var outage string
	if supPhase >= 0 && up > 0 {
		sp := &phases[supPhase]
		var held int
		var drained, longest time.Duration
		for _, r := range recs {
			if r.start >= sp.from && r.start < up {
				if r.start >= sp.kills[0].from {
					held++
				}
				drained = max(drained, r.end)
				if r.out == outOK {
					longest = max(longest, r.end-r.start)
				}
			}
		}
		sp.latencyFrom = max(drained, sp.from)
		outage = fmt.Sprintf("%d connections arrived during the restart (%s ms after the SIGKILL until seen up), the longest waited %s ms; the 5 ms bound applies from %s ms after the SIGKILL",
			held, ms(up-sp.kills[0].from), ms(longest), ms(sp.latencyFrom-sp.kills[0].from))
	}

	var pending int
	for _, r := range recs {
		if r.out == outPending {
			pending++
		}
	}
	if pending > 0 {
		t.Errorf("%d connections never finished (the load's bug)", pending)
	}
	if len(recs) == len(l.recs) {
		t.Errorf("the load used all its %d connection slots and stopped early", len(l.recs))
	}
	stats := make([]phaseStats, len(phases))
	var tab strings.Builder
	tw := tabwriter.NewWriter(&tab, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tconns\tok\texcused\tfailed\tother p50 ms\tother p99 ms\tother max ms\tworst 1s p99 ms\tother moved\tfaulted p99 ms\tpacer late\tfailures by kind\t")
	for i, p := range phases {
		s := measure(p, recs, &l.home, l.lateAt)
		stats[i] = s
		var kinds []string
		for o := outRefused; o < nOutcomes; o++ {
			if s.byOutcome[o] > 0 {
				kinds = append(kinds, fmt.Sprintf("%s:%d", o, s.byOutcome[o]))
			}
		}
		var lmax time.Duration
		if len(s.other) > 0 {
			lmax = s.other[len(s.other)-1]
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t\n", p.name, s.conns, s.ok, s.excused, s.failed,
			ms(percentile(s.other, 0.50)), ms(percentile(s.other, 0.99)), ms(lmax), ms(s.worstWindowP99),
			s.otherMoved, ms(percentile(s.faultedLat, 0.99)), s.pacerLate, strings.Join(kinds, ","))
	}
	tw.Flush()
	t.Logf("%d connections in %s s at %d/s from %d sources (pacer more than 20 ms late %d times, at worst %s ms; the test process used %.0f µs of CPU per connection); faulted = the phase's instance's clients, other = the other clients\n%s%s",
		len(recs), fmt.Sprintf("%.1f", l.now().Seconds()), faultRate, faultSources, len(l.lateAt), ms(l.maxLate), float64(cpu.Microseconds())/float64(max(len(recs), 1)), tab.String(), outage)

	for i, p := range phases {
		s := stats[i]
		t.Run(p.name, func(t *testing.T) {
			for _, r := range s.excuses {
				t.Logf("excused, inside the killed process: %s", describe(r, &l.home))
			}
			if s.failed > 0 {
				var b strings.Builder
				for j, r := range s.failures {
					if j == 20 {
						fmt.Fprintf(&b, "\n  ... and %d more", len(s.failures)-j)
						break
					}
					b.WriteString("\n  " + describe(r, &l.home))
				}
				t.Errorf("%d connections refused or lost outside a killed process:%s", s.failed, b.String())
			}
			if len(s.other) < 100 {
				t.Errorf("only %d answers to other instances' clients: too few to measure p99", len(s.other))
			} else if p99 := percentile(s.other, 0.99); p99 >= faultBound {
				starved := ""
				if s.pacerLate > 0 {
					starved = fmt.Sprintf("; the load's pacer was more than 20 ms late %d times in this phase: the machine starved the test process too", s.pacerLate)
				}
				report := t.Errorf
				if !final {
					report, slow = t.Logf, true
				}
				report("other instances' clients: p99 %s ms over %d connections, want < %s ms (p50 %s ms, max %s ms)%s",
					ms(p99), len(s.other), ms(faultBound), ms(percentile(s.other, 0.50)), ms(s.other[len(s.other)-1]), starved)
			}
			for _, r := range s.slowest {
				t.Logf("slowest of other instances' clients: %s", describe(r, &l.home))
			}
		})
	}
	if t.Failed() && os.Getenv("POWERHOUSE_TEST_DEBUG") != "" {
		j, _ := h.run("journalctl", "--no-pager", "-o", "short-monotonic", "-u", "powerhouse@web.service", "-u", "powerhouse-web@*")
		t.Logf("journal of the web group (the load's time 0 is %.6f there):\n%s", l.t0Mono.Seconds(), j)
	}
	return slow
}

// TestFaultsExcused checks the rule that excuses a failed connection.
func TestFaultsExcused(t *testing.T) {
	ms := time.Millisecond
	worker := []faultKill{{inst: 1, from: 100 * ms, to: 105 * ms}}
	sup := []faultKill{{inst: 0, from: 100 * ms, to: 105 * ms}}
	for _, tc := range []struct {
		name  string
		r     connRecord
		home  int
		kills []faultKill
		want  bool
	}{
		{"in flight, killed instance, reset", connRecord{start: 90 * ms, end: 103 * ms, out: outReset}, 1, worker, true},
		{"in flight, killed instance, EOF", connRecord{start: 104 * ms, end: 106 * ms, out: outEOF}, 1, worker, true},
		{"other instance's client", connRecord{start: 90 * ms, end: 103 * ms, out: outReset}, 2, worker, false},
		{"started after the kill", connRecord{start: 106 * ms, end: 107 * ms, out: outReset}, 1, worker, false},
		{"ended before the kill", connRecord{start: 90 * ms, end: 99 * ms, out: outEOF}, 1, worker, false},
		{"timeout is never excused", connRecord{start: 90 * ms, end: 103 * ms, out: outTimeout}, 1, worker, false},
		{"refusal is never excused", connRecord{start: 90 * ms, end: 103 * ms, out: outRefused}, 1, worker, false},
		{"supervisor: any client", connRecord{start: 90 * ms, end: 103 * ms, out: outReset}, 3, sup, true},
		{"no kill", connRecord{start: 90 * ms, end: 103 * ms, out: outReset}, 1, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := excused(tc.r, tc.home, tc.kills); got != tc.want {
				t.Errorf("excused = %v, want %v", got, tc.want)
			}
		})
	}
}
