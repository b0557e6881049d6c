package integration

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/helloclient"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// The handover tests' house: one sticky group "web" of examples/hello
// with handoverSlots instances on handoverAddr (the demo's port: the
// houses take sdbox.Exclusive's lock), in either dispatch mode.
const (
	handoverSlots = 3
	handoverAddr  = "127.0.0.1:9999"
)

var handoverGroup = units.Group{Name: "web"}

// handoverConfig is the house: dispatch "handoff" or "kernel"; exec is
// the TOML value of exec (hello itself, or a shell around it); service
// holds [worker.service] lines (timeouts).
func handoverConfig(dispatch, exec, service string) string {
	return fmt.Sprintf(`title = "handover"
[[worker]]
name     = %q
exec     = %s
amount   = %d
sticky   = true
dispatch = %q
listen   = [%q]
[worker.service]
%s
`, handoverGroup.Name, exec, handoverSlots, dispatch, handoverAddr, service)
}

// helloExec is the exec value that runs hello directly; helloBehind runs
// it from a shell that first runs script (a marker-file switch).
func helloExec() string { return strconv.Quote(boxBin + "/hello") }

func helloBehind(script string) string {
	return fmt.Sprintf(`["/bin/sh", "-c", %q]`, script+"; exec "+boxBin+"/hello")
}

// newHandoverHouse boots the house, starts it and waits until every slot
// answers clients; the supervisor's and instances' journal goes to the log
// of a test that fails.
func newHandoverHouse(t *testing.T, cfg string) *house {
	t.Helper()
	h := newHouse(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			args := []string{"--no-pager", "-o", "short-monotonic", "-n", "300", "-u", handoverGroup.SupervisorUnit()}
			for _, p := range handoverGroup.InstancePatterns() {
				args = append(args, "-u", p)
			}
			if debugJournal {
				args = []string{"--no-pager", "-o", "short-monotonic"}
			}
			out, _ := h.run("journalctl", args...)
			t.Logf("the group's journal:\n%s", out)
		}
	})
	h.systemctl("start", "powerhouse.target")
	waitFor(t, 30*time.Second, "every slot to answer clients", func() bool {
		seen := map[string]bool{}
		for i := range 40 {
			r, err := get(client(clientAddr(i)), "http://"+handoverAddr+"/")
			if err != nil {
				return false
			}
			seen[r.Instance] = true
		}
		return len(seen) == handoverSlots
	})
	return h
}

// sideState is one side of a slot as systemd sees it.
type sideState struct {
	Unit, Active, Sub, PID string
}

// serving: the side's process runs and takes new work.
func (s sideState) serving() bool { return s.Active == "active" || s.Active == "reloading" }

// running: the side has a process (serving, starting or draining).
func (s sideState) running() bool { return s.PID != "" && s.PID != "0" }

// slotState is both sides of one instance slot.
type slotState struct {
	N    int
	A, B sideState
}

// sides returns both sides, A first.
func (s slotState) sides() [2]sideState { return [2]sideState{s.A, s.B} }

// serving returns the PIDs of the slot's serving sides.
func (s slotState) serving() []string {
	var p []string
	for _, sd := range s.sides() {
		if sd.serving() && sd.running() {
			p = append(p, sd.PID)
		}
	}
	return p
}

// settled: exactly one side runs, serving, and the other is at rest.
func (s slotState) settled() bool {
	n := 0
	for _, sd := range s.sides() {
		switch {
		case sd.serving() && sd.running():
			n++
		case sd.Active != "inactive" && sd.Active != "failed":
			return false
		}
	}
	return n == 1
}

func (s slotState) String() string {
	return fmt.Sprintf("%d: a %s/%s pid %s, b %s/%s pid %s", s.N, s.A.Active, s.A.Sub, s.A.PID, s.B.Active, s.B.Sub, s.B.PID)
}

// slotStates asks systemd about both sides of every slot, over the
// house's D-Bus connection: no process spawned, so that polling it costs
// the machine little. It may run outside the test goroutine: it returns
// errors, never fails t.
func slotStates(ctx context.Context, h *house) ([]slotState, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var st []slotState
	for n := 1; n <= handoverSlots; n++ {
		s := slotState{N: n}
		for _, sd := range []units.Side{units.SideA, units.SideB} {
			u := handoverGroup.InstanceSide(n, sd)
			us, err := h.m.State(ctx, u)
			if err != nil {
				return nil, err
			}
			pid, err := h.m.MainPID(ctx, u)
			if err != nil {
				return nil, err
			}
			x := sideState{Unit: u, Active: string(us.ActiveState), Sub: us.SubState, PID: strconv.Itoa(int(pid))}
			if sd == units.SideA {
				s.A = x
			} else {
				s.B = x
			}
		}
		st = append(st, s)
	}
	return st, nil
}

// mustSlots is slotStates in the test goroutine.
func mustSlots(t *testing.T, h *house) []slotState {
	t.Helper()
	st, err := slotStates(t.Context(), h)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// servingPIDs returns each slot's one serving PID, failing when a slot
// has none or two.
func servingPIDs(t *testing.T, h *house) map[int]string {
	t.Helper()
	m := map[int]string{}
	for _, s := range mustSlots(t, h) {
		p := s.serving()
		if len(p) != 1 {
			t.Fatalf("slot %s: %d serving sides, want 1", s, len(p))
		}
		m[s.N] = p[0]
	}
	return m
}

// slotWatch polls systemd about every slot until stopped: it records
// whether any slot was ever seen without a serving side (an instance
// down), and each slot's (serving, draining) PID pairs.
type slotWatch struct {
	stop, done chan struct{}
	once       sync.Once
	mu         sync.Mutex
	polls      int
	down       []string                   // "slot state" when a slot had no serving side
	overlap    map[int]map[[2]string]bool // slot -> {serving PID, draining PID} seen together
	errs       []string
}

func watchSlots(h *house) *slotWatch {
	w := &slotWatch{stop: make(chan struct{}), done: make(chan struct{}), overlap: map[int]map[[2]string]bool{}}
	go func() {
		defer close(w.done)
		for {
			st, err := slotStates(context.Background(), h)
			w.mu.Lock()
			w.polls++
			if err != nil {
				w.errs = append(w.errs, err.Error())
			}
			for _, s := range st {
				srv := s.serving()
				if len(srv) == 0 {
					w.down = append(w.down, s.String())
				}
				for _, sd := range s.sides() {
					if sd.Active == "deactivating" && sd.running() && len(srv) == 1 && srv[0] != sd.PID {
						if w.overlap[s.N] == nil {
							w.overlap[s.N] = map[[2]string]bool{}
						}
						w.overlap[s.N][[2]string{srv[0], sd.PID}] = true
					}
				}
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(25 * time.Millisecond): // poll: systemd's D-Bus signals would race the test's own reads
			}
		}
	}()
	return w
}

func (w *slotWatch) finish() { w.once.Do(func() { close(w.stop) }); <-w.done }

// check fails t for every poll that saw a slot without a serving side.
func (w *slotWatch) checkNeverDown(t *testing.T) {
	t.Helper()
	if len(w.errs) > 0 {
		t.Errorf("%d of %d polls of systemd failed, e.g. %s", len(w.errs), w.polls, w.errs[0])
	}
	if len(w.down) > 0 {
		t.Errorf("%d times (of %d polls) a slot had no serving side, an instance down: %s", len(w.down), w.polls, strings.Join(w.down[:min(len(w.down), 5)], "; "))
	}
}

// statusWatch asks the supervisor for its status (what `powerhouse
// status --json web` prints, over its control socket: no process spawned
// per poll) until stopped and records, per slot, the (serving PID,
// draining PID) pairs it showed, and the text of `powerhouse status web`
// once while a slot drained.
type statusWatch struct {
	stop, done chan struct{}
	once       sync.Once
	mu         sync.Mutex
	seen       map[int]map[[2]string]bool
	sample     string // `powerhouse status` while a process drained
	errs       []string
}

// statusJSON is the part of the status the watch reads.
type statusJSON struct {
	Instances []struct {
		Instance int    `json:"instance"`
		Unit     string `json:"unit"`
		PID      uint32 `json:"pid"`
		Draining *struct {
			Unit string `json:"unit"`
			PID  uint32 `json:"pid"`
		} `json:"draining"`
	} `json:"instances"`
}

func watchStatus(h *house) *statusWatch {
	w := &statusWatch{stop: make(chan struct{}), done: make(chan struct{}), seen: map[int]map[[2]string]bool{}}
	c := supervisor.Client{Path: h.box.Path(handoverGroup.ControlPath())}
	go func() {
		defer close(w.done)
		for {
			var g statusJSON
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := c.Call(ctx, supervisor.MethodStatus, nil, nil, &g)
			cancel()
			w.mu.Lock()
			if err != nil {
				w.errs = append(w.errs, err.Error())
			}
			drains := false
			{
				for _, in := range g.Instances {
					if in.Draining == nil || in.Draining.PID == 0 {
						continue
					}
					drains = true
					if w.seen[in.Instance] == nil {
						w.seen[in.Instance] = map[[2]string]bool{}
					}
					w.seen[in.Instance][[2]string{strconv.Itoa(int(in.PID)), strconv.Itoa(int(in.Draining.PID))}] = true
				}
			}
			sampled := w.sample != ""
			w.mu.Unlock()
			if drains && !sampled {
				text, _ := h.powerhouse("status", handoverGroup.Name)
				w.mu.Lock()
				w.sample = text
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond): // poll: status is a question, not a stream
			}
		}
	}()
	return w
}

func (w *statusWatch) finish() { w.once.Do(func() { close(w.stop) }); <-w.done }

// echoConn is one long-lived connection (examples/hello's line-echo).
type echoConn struct {
	src       string
	inst, pid string // who answered the first line
	said      int    // lines echoed
	err       error  // why it ended before its time (a cut, a timeout)
}

// echoes holds long-lived connections, one per source address, each
// sending a line every period and checking its echo, until finish: then
// each closes its connection, on its own.
type echoes struct {
	conns []*echoConn
	up    sync.WaitGroup // every connection has had its first echo (or failed)
	wg    sync.WaitGroup
	ends  []chan struct{} // one per connection
	once  sync.Once
	said  atomic.Int64
}

func holdEchoes(srcs []string, period time.Duration) *echoes {
	e := &echoes{}
	for i, src := range srcs {
		c := &echoConn{src: src}
		end := make(chan struct{})
		e.conns = append(e.conns, c)
		e.ends = append(e.ends, end)
		e.up.Add(1)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.run(c, end, period, time.Duration(i)*period/time.Duration(len(srcs)))
		}()
	}
	return e
}

func (e *echoes) run(c *echoConn, end <-chan struct{}, period, offset time.Duration) {
	first := true
	defer func() {
		if first {
			e.up.Done()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	conn, err := helloclient.DialEcho(ctx, c.src, handoverAddr)
	cancel()
	if err != nil {
		c.err = fmt.Errorf("connect: %w", err)
		return
	}
	defer conn.Close()
	// Spread the lines of all connections over the period.
	time.Sleep(offset)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		msg := fmt.Sprintf("%s line %d", c.src, c.said)
		// Generous: a loaded machine may stall a second; a cut
		// connection answers at once with EOF or a reset.
		r, err := conn.Say(msg, 10*time.Second)
		if err != nil {
			c.err = fmt.Errorf("after %d lines: %w", c.said, err)
			return
		}
		if first {
			c.inst, c.pid = r.Instance, r.PID
			first = false
			e.up.Done()
		} else if r.Instance != c.inst || r.PID != c.pid {
			c.err = fmt.Errorf("line %d answered by %s pid %s, the connection's first by %s pid %s", c.said, r.Instance, r.PID, c.inst, c.pid)
			return
		}
		c.said++
		e.said.Add(1)
		select {
		case <-end:
			return
		case <-tick.C:
		}
	}
}

// finish has the clients close their connections, one after the other
// over spread, and waits for them.
func (e *echoes) finish(spread time.Duration) {
	e.once.Do(func() {
		for i, end := range e.ends {
			if i > 0 && spread > 0 {
				time.Sleep(spread / time.Duration(len(e.ends))) // the clients' pace
			}
			close(end)
		}
	})
	e.wg.Wait()
}

// failed returns the connections that ended with an error.
func (e *echoes) failed() []*echoConn {
	var f []*echoConn
	for _, c := range e.conns {
		if c.err != nil {
			f = append(f, c)
		}
	}
	return f
}

// perSlot counts the connections per instance ("web@2").
func (e *echoes) perSlot() map[string]int {
	m := map[string]int{}
	for _, c := range e.conns {
		m[c.inst]++
	}
	return m
}

// sample is one request of a pacedLoad.
type sample struct {
	at        time.Time // when it was sent
	took      time.Duration
	src, inst string
	pid       string
	err       error
}

// pacedLoad sends, from each source address, a GET / on a new connection
// every period (open loop per source: a slow answer delays only that
// source's next request), until stopped, and keeps every sample.
type pacedLoad struct {
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []sample
	served  atomic.Int64
}

func startPaced(srcs []string, period time.Duration) *pacedLoad {
	l := &pacedLoad{stop: make(chan struct{})}
	for i, src := range srcs {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := client(src)
			time.Sleep(time.Duration(i) * period / time.Duration(len(srcs)))
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				at := time.Now()
				r, err := get(c, "http://"+handoverAddr+"/")
				s := sample{at: at, took: time.Since(at), src: src, inst: r.Instance, pid: r.PID, err: err}
				l.mu.Lock()
				l.samples = append(l.samples, s)
				l.mu.Unlock()
				if err == nil {
					l.served.Add(1)
				}
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return l
}

func (l *pacedLoad) finish() { l.once.Do(func() { close(l.stop) }); l.wg.Wait() }

// waitServed waits until n more requests were served.
func (l *pacedLoad) waitServed(t *testing.T, n int64) {
	t.Helper()
	target := l.served.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more requests served", n), func() bool { return l.served.Load() >= target })
}

// window returns the samples sent in [from, to).
func (l *pacedLoad) window(from, to time.Time) []sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w []sample
	for _, s := range l.samples {
		if !s.at.Before(from) && s.at.Before(to) {
			w = append(w, s)
		}
	}
	return w
}

// failures returns every failed request, and the sources that reached
// more than one instance.
func (l *pacedLoad) failures() (failed []sample, moved []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	insts := map[string]map[string]bool{}
	for _, s := range l.samples {
		if s.err != nil {
			failed = append(failed, s)
			continue
		}
		if insts[s.src] == nil {
			insts[s.src] = map[string]bool{}
		}
		insts[s.src][s.inst] = true
	}
	for src, m := range insts {
		if len(m) > 1 {
			moved = append(moved, fmt.Sprintf("%s reached %v", src, slices.Sorted(func(yield func(string) bool) {
				for k := range m {
					if !yield(k) {
						return
					}
				}
			})))
		}
	}
	return failed, moved
}

// sampleErrs lists up to 5 failed samples as "src +when: error".
func sampleErrs(ss []sample, since time.Time) string {
	var b []string
	for _, s := range ss[:min(len(ss), 5)] {
		b = append(b, fmt.Sprintf("%s at +%v: %v", s.src, s.at.Sub(since).Round(time.Millisecond), s.err))
	}
	return strings.Join(b, "; ")
}

// slowest lists the n slowest samples: when (after since), where, how long.
func slowest(ss []sample, since time.Time, n int) string {
	ss = slices.Clone(ss)
	slices.SortFunc(ss, func(a, b sample) int { return cmp.Compare(b.took, a.took) })
	var b []string
	for _, s := range ss[:min(len(ss), n)] {
		b = append(b, fmt.Sprintf("+%v %s %s/%s %v", s.at.Sub(since).Round(time.Millisecond), s.src, s.inst, s.pid, s.took.Round(100*time.Microsecond)))
	}
	return strings.Join(b, "; ")
}

// p99 of the samples' latencies.
func p99(ss []sample) time.Duration {
	if len(ss) == 0 {
		return 0
	}
	d := make([]time.Duration, len(ss))
	for i, s := range ss {
		d[i] = s.took
	}
	slices.Sort(d)
	return d[(len(d)*99+99)/100-1]
}

// reloadEvent is one worker.reload event from the journal, its
// POWERHOUSE_ fields lower-cased without the prefix.
type reloadEvent map[string]string

// reloadEvents reads the group's worker.reload events (journalctl -o json).
func reloadEvents(h *house) ([]reloadEvent, error) {
	out, err := h.run("journalctl", "--no-pager", "-o", "json", "POWERHOUSE_EVENT=worker.reload", "POWERHOUSE_GROUP="+handoverGroup.Name)
	if err != nil {
		return nil, fmt.Errorf("journalctl: %w: %s", err, out)
	}
	var evs []reloadEvent
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			continue // "-- No entries --" and the like
		}
		e := reloadEvent{}
		for k, v := range raw {
			if s, ok := v.(string); ok && strings.HasPrefix(k, "POWERHOUSE_") {
				e[strings.ToLower(strings.TrimPrefix(k, "POWERHOUSE_"))] = s
			}
		}
		evs = append(evs, e)
	}
	return evs, sc.Err()
}

// debugJournal is set to log the whole box journal of a failed test.
var debugJournal = os.Getenv("POWERHOUSE_TEST_DEBUG") != ""

// errKind names an echo failure for the report: a cut (the worker closed
// or reset the connection), or a timeout.
func errKind(err error) string {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "cut"
}
