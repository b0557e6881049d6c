package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/units"
)

// stickyRig is a sticky group of amount instances in hand-off mode, its
// public socket a unix socket of the test's.
func stickyRig(t *testing.T, amount int, prepare func(f *fakeManager, o *Options)) *rig {
	t.Helper()
	dir, err := os.MkdirTemp("", "pub")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pub := filepath.Join(dir, "pub.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: pub, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // f keeps it listening
	toml := strings.Replace(strings.Replace(apiTOML, `listen = ["127.0.0.1:9"]`, "sticky = true\nlisten = [\""+pub+"\"]", 1),
		"amount = 3", fmt.Sprintf("amount = %d", amount), 1)
	return newRig(t, toml, "api", func(fm *fakeManager, o *Options) {
		o.Files = append(o.Files, f)
		if prepare != nil {
			prepare(fm, o)
		}
	})
}

// side is the unit of instance n on side s.
func (r *rig) side(n int, s units.Side) string { return r.s.g.InstanceSide(n, s) }

// indexOf is the position of job in the fake's log, -1 when absent.
func indexOf(jobs []string, job string) int { return slices.Index(jobs, job) }

// TestHandoverDrainsOverlap: in a sticky group whose old processes take
// a while to stop (their stop job is their drain), a reload hands every
// slot over without waiting for any drain: the next slot's new side
// starts while the previous slot's old side still drains, and the reload
// ends with all three draining. Each new side is ready before its old
// side is told to stop. Status shows, per slot, the new process serving
// and the old one draining. Through it all, and once the drains end,
// every slot stays in the dispatcher's set (slot membership: up while
// either side is), and no slot's socket is stopped (it would take the new
// side along, Requires=).
func TestHandoverDrainsOverlap(t *testing.T) {
	r := stickyRig(t, 3, nil)
	drains := map[int]chan struct{}{}
	for n := 1; n <= 3; n++ {
		drains[n] = make(chan struct{})
		r.f.drain[r.side(n, units.SideA)] = drains[n]
	}
	r.run()
	r.waitAll()
	waitFor(t, r.n, "3 in dispatch", func() bool { return r.s.disp.Up.Len() == 3 })
	// Any moment the set loses a slot is recorded.
	var minUp atomic.Int64
	minUp.Store(3)
	watch, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for watch.Err() == nil {
			if n := int64(r.s.disp.Up.Len()); n < minUp.Load() {
				minUp.Store(n)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	old := map[int]uint32{}
	for n := 1; n <= 3; n++ {
		old[n] = r.f.pidOf(r.side(n, units.SideA))
	}
	res, err := r.client().Reload(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Instances, []int{1, 2, 3}) {
		t.Errorf("result %+v", res)
	}
	jobs := r.f.jobs()
	for n := 1; n <= 3; n++ {
		a, b := r.side(n, units.SideA), r.side(n, units.SideB)
		if !r.f.draining(a) {
			t.Errorf("%s is not draining after the reload ended", a)
		}
		// Ready (its start job ended, the fake's Start returned) before
		// the old one's stop.
		if sb, sa := indexOf(jobs, "start "+b), indexOf(jobs, "stop "+a); sb < 0 || sa < sb {
			t.Errorf("instance %d: start of the new side at %d, stop of the old at %d: %q", n, sb, sa, jobs)
		}
		if n > 1 && indexOf(jobs, "start "+b) < indexOf(jobs, "stop "+r.side(n-1, units.SideA)) {
			t.Errorf("instance %d's handover began before instance %d's old side was told to stop: %q", n, n-1, jobs)
		}
	}
	// Status: new serving, old draining.
	var gs GroupStatus
	waitFor(t, r.n, "status with the drains", func() bool {
		gs, err = r.client().Status(context.Background())
		if err != nil || len(gs.Instances) != 3 {
			return false
		}
		for _, in := range gs.Instances {
			if in.Draining == nil || in.Draining.Since.IsZero() {
				return false
			}
		}
		return true
	})
	for _, in := range gs.Instances {
		n := in.Instance
		b := r.side(n, units.SideB)
		if in.Unit != b || in.PID != r.f.pidOf(b) || in.State != "active" || !in.InDispatch ||
			in.Draining.Unit != r.side(n, units.SideA) || in.Draining.PID != old[n] {
			t.Errorf("status of instance %d: %+v draining %+v", n, in, in.Draining)
		}
	}
	if up := r.s.disp.Up.Len(); up != 3 {
		t.Errorf("%d slots in dispatch while the old sides drain, want 3", up)
	}
	// Metrics: three handovers timed; per slot the new side up, the
	// old one draining.
	fams := gathered(t, r.s)
	if h := fams["powerhouse_handover_seconds"]; h == nil || h.GetMetric()[0].GetHistogram().GetSampleCount() != 3 {
		t.Errorf("powerhouse_handover_seconds: %v", h)
	}
	for n := 1; n <= 3; n++ {
		in := fmt.Sprint(n)
		if v, ok := value(fams, "powerhouse_instance_up", map[string]string{"instance": in, "unit": r.side(n, units.SideB)}); !ok || v != 1 {
			t.Errorf("instance %d: new side up %v (present %v)", n, v, ok)
		}
		if v, ok := value(fams, "powerhouse_instance_draining", map[string]string{"instance": in, "unit": r.side(n, units.SideA)}); !ok || v != 1 {
			t.Errorf("instance %d: old side draining %v (present %v)", n, v, ok)
		}
	}
	// The drains end, in another order than they began.
	for _, n := range []int{3, 1, 2} {
		close(drains[n])
	}
	waitFor(t, r.n, "3 worker.reload events", func() bool { return len(r.n.eventsOf(events.WorkerReload)) == 3 })
	waitFor(t, r.n, "the old processes' worker.stop", func() bool {
		stops := 0
		for _, e := range r.n.eventsOf(events.WorkerStop) {
			if e.Fields["unit"] == r.side(e.Instance, units.SideA) && e.Fields["pid"] == fmt.Sprint(old[e.Instance]) {
				stops++
			}
		}
		return stops == 3
	})
	// The stop of a resting slot's socket runs after the observation:
	// give it its chance to (wrongly) happen, through one more refresh.
	r.s.kick <- struct{}{}
	waitFor(t, r.n, "a refresh", func() bool { return len(r.s.kick) == 0 })
	stopWatch()
	<-watched
	if m := minUp.Load(); m != 3 {
		t.Errorf("the dispatch set fell to %d slots during the handovers, want 3 throughout", m)
	}
	if up := r.s.disp.Up.Len(); up != 3 {
		t.Errorf("%d slots in dispatch after the drains, want 3", up)
	}
	for _, j := range r.f.jobs() {
		if strings.HasSuffix(j, ".socket") {
			t.Errorf("a slot's socket was stopped: %q", j)
		}
	}
	if up, _ := r.s.upCount(); up != 3 {
		t.Errorf("%d slots up, want 3", up)
	}
}

// TestReloadWaitsForEarlierDrain: a second reload comes while the first
// one's old processes still drain: a slot's other side must come to rest
// before it starts again. The reload says it waits, starts nothing on
// that side meanwhile, and goes on once the drain ends.
func TestReloadWaitsForEarlierDrain(t *testing.T) {
	r := newRig(t, strings.Replace(apiTOML, "amount = 3", "amount = 1", 1), "api", nil)
	drain := make(chan struct{})
	a, b := r.side(1, units.SideA), r.side(1, units.SideB)
	r.f.drain[a] = drain
	r.run()
	r.waitAll()
	if _, err := r.client().Reload(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if !r.f.draining(a) {
		t.Fatalf("%s not draining", a)
	}
	lines := make(chan string, 16)
	errc := make(chan error, 1)
	go func() {
		_, err := r.client().Reload(context.Background(), func(p Progress) { lines <- p.Message })
		errc <- err
	}()
	want := fmt.Sprintf("reload api: waiting for %s (pid %d, deactivating) to finish draining before instance 1's handover", a, r.f.pidOf(a))
	select {
	case l := <-lines:
		if l != want {
			t.Errorf("progress %q, want %q", l, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no progress line")
	}
	starts := func() int {
		n := 0
		for _, j := range r.f.jobs() {
			if j == "start "+a {
				n++
			}
		}
		return n
	}
	before := starts()
	select {
	case err := <-errc:
		t.Fatalf("the second reload ended while the first one's drain went on: %v", err)
	default:
	}
	close(drain)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if starts() != before+1 || !serving(mustState(t, r.f, a)) || r.f.pidOf(b) != 0 {
		t.Errorf("after the drain: %s %+v, %s pid %d, jobs %q", a, mustState(t, r.f, a), b, r.f.pidOf(b), r.f.jobs())
	}
}

func mustState(t *testing.T, f *fakeManager, unit string) units.UnitState {
	t.Helper()
	st, err := f.State(context.Background(), unit)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// syncBuffer is a log sink for more than one goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// again is a new supervisor over r's manager, configuration and runtime
// directory (r's must have ended): a supervisor restarted by systemd.
func (r *rig) again(t *testing.T, log io.Writer) *rig {
	o := r.s.o
	r2 := &rig{t: t, f: r.f, n: newNotes(), cfg: r.cfg, dir: r.dir, hup: make(chan struct{}, 1), group: r.group}
	o.Notify, o.Emit, o.Reload = r2.n.Notify, r2.n.Emit, r2.hup
	o.Log = slog.New(slog.NewTextHandler(log, nil))
	var err error
	if r2.s, err = New(o); err != nil {
		t.Fatal(err)
	}
	return r2
}

// TestReloadResumesAfterRestart: the supervisor stops (systemd restarts
// it) in the middle of a reload, while instance 2's new side starts;
// that side becomes ready after it is gone, so instance 2 runs both
// sides. The next supervisor finds the plan: it stops instance 2's old
// side, hands instance 3 over, leaves instance 1 (handed over already)
// alone, says what it found, and removes the plan.
func TestReloadResumesAfterRestart(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	hold := make(chan struct{})
	defer close(hold)
	r.f.hold[r.side(2, units.SideB)] = hold
	r.run()
	r.waitAll()
	errc := make(chan error, 1)
	go func() { _, err := r.client().Reload(context.Background(), nil); errc <- err }()
	waitFor(t, r.n, "instance 2's new side starting", func() bool {
		return mustState(t, r.f, r.side(2, units.SideB)).ActiveState == units.Activating
	})
	b, err := os.ReadFile(r.s.planPath())
	if err != nil {
		t.Fatal(err)
	}
	var plan reloadPlan
	if err := json.Unmarshal(b, &plan); err != nil || plan.Verb != "reload" || !slices.Equal(plan.Instances, []int{1, 2, 3}) ||
		plan.To[1] != "b" || plan.To[2] != "b" || !slices.Equal(plan.Done, []int{1}) {
		t.Errorf("plan %s (%v)", b, err)
	}
	if fi, err := os.Stat(r.s.planPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("plan file mode %v %v", fi.Mode(), err)
	}
	// The restart: the running operation ends with the supervisor.
	r.stop()
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	r.done <- nil // for the cleanup
	<-errc
	if _, err := os.Stat(r.s.planPath()); err != nil {
		t.Fatalf("the plan went with the supervisor: %v", err)
	}
	// Instance 2's new side comes up meanwhile (READY=1 after all).
	r.f.mu.Lock()
	delete(r.f.hold, r.side(2, units.SideB))
	r.f.mu.Unlock()
	r.f.set(r.side(2, units.SideB), units.Active, "")
	oldPID2, newPID2 := r.f.pidOf(r.side(2, units.SideA)), r.f.pidOf(r.side(2, units.SideB))
	newPID1 := r.f.pidOf(r.side(1, units.SideB))
	r.f.mu.Lock()
	r.f.log = nil
	r.f.mu.Unlock()

	var log syncBuffer
	r2 := r.again(t, &log)
	r2.run()
	waitFor(t, r2.n, "the resumed reload's end", func() bool {
		_, err := os.Stat(r2.s.planPath())
		return os.IsNotExist(err) && len(r2.n.eventsOf(events.WorkerReload)) == 2
	})
	jobs := r2.f.jobs()
	for _, want := range []string{"stop " + r.side(2, units.SideA), "start " + r.side(3, units.SideB), "stop " + r.side(3, units.SideA)} {
		if !slices.Contains(jobs, want) {
			t.Errorf("no %q in %q", want, jobs)
		}
	}
	// (The start's converge starts each slot's serving side: a no-op.)
	for _, j := range jobs {
		if j == "stop "+r.side(1, units.SideB) || j == "start "+r.side(1, units.SideA) || j == "stop "+r.side(2, units.SideB) || strings.HasPrefix(j, "restart ") {
			t.Errorf("instance 1 or 2's new side touched: %q", jobs)
		}
	}
	if p := r.f.pidOf(r.side(1, units.SideB)); p != newPID1 {
		t.Errorf("instance 1 handed over again: pid %d -> %d", newPID1, p)
	}
	for _, e := range r2.n.eventsOf(events.WorkerReload) {
		if e.Instance == 2 && (e.Fields["old_pid"] != fmt.Sprint(oldPID2) || e.Fields["new_pid"] != fmt.Sprint(newPID2) || e.Fields["ready_ms"] != "") {
			t.Errorf("worker.reload of instance 2: %+v", e)
		}
	}
	if !strings.Contains(log.String(), "reload api resumed after a supervisor restart: instances 1, 2 handed over, 3 remaining") {
		t.Errorf("the resumption is not in the log:\n%s", log.String())
	}
	for n := 1; n <= 3; n++ {
		if st := mustState(t, r.f, r.side(n, units.SideA)); st.ActiveState != units.Inactive {
			t.Errorf("instance %d's old side %s", n, st.ActiveState)
		}
	}
}

// TestBothSidesWithoutPlan: a supervisor that starts with both sides of
// a slot running and no reload to say which is new keeps the newer and
// stops the older, either way round.
func TestBothSidesWithoutPlan(t *testing.T) {
	r := newRig(t, strings.Replace(apiTOML, "amount = 3", "amount = 2", 1), "api", func(f *fakeManager, o *Options) {
		t0 := time.Now().Add(-time.Hour)
		for i, unit := range []string{
			units.Group{Name: "api"}.InstanceSide(1, units.SideA), units.Group{Name: "api"}.InstanceSide(1, units.SideB),
			units.Group{Name: "api"}.InstanceSide(2, units.SideB), units.Group{Name: "api"}.InstanceSide(2, units.SideA),
		} {
			f.set(unit, units.Active, "")
			f.unit(unit).since = t0.Add(time.Duration(i%2) * time.Minute)
		}
	})
	r.run()
	r.waitAll()
	waitFor(t, r.n, "the older sides to stop", func() bool {
		return !serving(mustState(t, r.f, r.side(1, units.SideA))) && !serving(mustState(t, r.f, r.side(2, units.SideB)))
	})
	if !serving(mustState(t, r.f, r.side(1, units.SideB))) || !serving(mustState(t, r.f, r.side(2, units.SideA))) {
		t.Errorf("a newer side was stopped: jobs %q", r.f.jobs())
	}
}

// TestParsePlan: a plan file is bounded and checked before it is
// resumed.
func TestParsePlan(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{`{"verb":"reload","instances":[1,2],"to":{"1":"b"},"done":[1]}`, ""},
		{`{"verb":"reconfigure","instances":[3]}`, ""},
		{`{"verb":"rm -rf","instances":[1]}`, `unknown operation "rm -rf"`},
		{`{"verb":"reload","instances":[0]}`, "instance 0 out of 1..1024"},
		{`{"verb":"reload","instances":[1],"done":[2000]}`, "instance 2000 out of"},
		{`{"verb":"reload","instances":[1],"to":{"1":"c"}}`, `bad side "c" for instance 1`},
		{`{"verb":"reload","instances":[1],"to":{"-1":"a"}}`, `bad side "a" for instance -1`},
		{`{"verb":"reload"`, "unexpected end"},
		{`{"verb":"reload","instances":[` + strings.Repeat("1,", 1100) + `1]}`, "over 1024"},
		{strings.Repeat(" ", maxPlan+1), "over 262144 bytes"},
	} {
		var p reloadPlan
		err := parsePlan([]byte(tc.in), &p)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("parsePlan(%.60q) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

// TestSlotSides: of a slot's two services, the one serving speaks for
// it, and the other is shown draining while its stop job runs.
func TestSlotSides(t *testing.T) {
	st := func(name string, a units.ActiveState, job units.JobType) units.UnitState {
		return units.UnitState{Name: name, LoadState: units.Loaded, ActiveState: a, JobType: job}
	}
	const a, b = "powerhouse-web@2.service", "powerhouse-web.b@2.service"
	for _, tc := range []struct {
		name          string
		sts           []units.UnitState
		speaks, drain string
	}{
		{"one side", []units.UnitState{st(a, units.Active, "")}, a, ""},
		{"handed over, old draining", []units.UnitState{st(a, units.Deactivating, units.JobStop), st(b, units.Active, "")}, b, a},
		{"new coming up, old serving", []units.UnitState{st(a, units.Active, ""), st(b, units.Activating, units.JobStart)}, a, ""},
		{"old at rest", []units.UnitState{st(b, units.Active, ""), st(a, units.Inactive, "")}, b, ""},
		{"both at rest, one failed", []units.UnitState{st(a, units.Inactive, ""), st(b, units.Failed, "")}, b, ""},
		{"slot stopping", []units.UnitState{st(a, units.Deactivating, units.JobStop), st(b, units.Inactive, "")}, a, ""},
	} {
		speaks, drain := SlotSides(tc.sts)
		got := ""
		if drain != nil {
			got = drain.Name
		}
		if speaks.Name != tc.speaks || got != tc.drain {
			t.Errorf("%s: speaks %s, draining %q; want %s, %q", tc.name, speaks.Name, got, tc.speaks, tc.drain)
		}
	}
}

// TestKernelHandoverKeepsSlots: in kernel mode, a reload's handovers
// (old sides draining, then stopped) never take a slot out of the bucket
// table, never clear its socket from the array, and never stop its
// socket unit: the new side listens on that very socket.
func TestKernelHandoverKeepsSlots(t *testing.T) {
	var p *fakeSteer
	r, _ := kernelRig(t, 4, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil })
	drains := map[int]chan struct{}{}
	for n := 1; n <= 4; n++ {
		drains[n] = make(chan struct{})
		r.f.drain[r.side(n, units.SideA)] = drains[n]
	}
	r.run()
	r.waitAll()
	all := []int{1, 2, 3, 4}
	waitFor(t, r.n, "table of 4", func() bool { tb, _ := p.state(); return slices.Equal(tb, all) })
	p.mu.Lock()
	first := len(p.history)
	p.mu.Unlock()
	if _, err := r.client().Reload(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range drains {
		close(c)
	}
	waitFor(t, r.n, "4 worker.reload events", func() bool { return len(r.n.eventsOf(events.WorkerReload)) == 4 })
	waitFor(t, r.n, "the old sides seen at rest", func() bool {
		r.s.mu.Lock()
		defer r.s.mu.Unlock()
		for n := 1; n <= 4; n++ {
			if st, ok := r.s.sides[sideKey{n, units.SideA}]; !ok || st.ActiveState != units.Inactive {
				return false
			}
		}
		return true
	})
	r.s.kick <- struct{}{}
	waitFor(t, r.n, "a refresh", func() bool { return len(r.s.kick) == 0 })
	p.mu.Lock()
	history := slices.Clone(p.history[first:])
	p.mu.Unlock()
	for _, tb := range history {
		if !slices.Equal(tb, all) {
			t.Errorf("the bucket table became %v during the handovers (history %v)", tb, history)
		}
	}
	if tb, slots := p.state(); !slices.Equal(tb, all) || !slices.Equal(slots, all) {
		t.Errorf("after the handovers: table %v, socket slots %v", tb, slots)
	}
	for _, j := range r.f.jobs() {
		if strings.HasSuffix(j, ".socket") && !strings.HasPrefix(j, "start ") {
			t.Errorf("a slot's socket unit was touched: %q", j)
		}
	}
}

// TestBothSidesAtRunTime: an operator who starts the other side of a
// serving instance by hand (systemctl restart powerhouse-api@2.service
// while side B serves it) gets a handover: the supervisor sees both
// serving between operations, the newer keeps serving, the older stops.
func TestBothSidesAtRunTime(t *testing.T) {
	r := newRig(t, strings.Replace(apiTOML, "amount = 3", "amount = 2", 1), "api", nil)
	r.run()
	r.waitAll()
	waitFor(t, r.n, "side A of both instances serving", func() bool {
		return serving(mustState(t, r.f, r.side(1, units.SideA))) && serving(mustState(t, r.f, r.side(2, units.SideA)))
	})
	r.f.set(r.side(2, units.SideB), units.Active, "")
	waitFor(t, r.n, "the older side of instance 2 to stop", func() bool {
		return !serving(mustState(t, r.f, r.side(2, units.SideA)))
	})
	if !serving(mustState(t, r.f, r.side(2, units.SideB))) || !serving(mustState(t, r.f, r.side(1, units.SideA))) {
		t.Errorf("a newer or unrelated side was stopped: jobs %q", r.f.jobs())
	}
}

// TestResumeJoinsStartingSide: a supervisor killed while an instance's new
// side starts leaves systemd's start job running; the next supervisor's
// resumed reload waits for that start rather than stopping the side and
// starting it again.
func TestResumeJoinsStartingSide(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	hold := make(chan struct{})
	released := false
	defer func() {
		if !released {
			close(hold)
		}
	}()
	r.f.hold[r.side(2, units.SideB)] = hold
	r.run()
	r.waitAll()
	errc := make(chan error, 1)
	go func() { _, err := r.client().Reload(context.Background(), nil); errc <- err }()
	waitFor(t, r.n, "instance 2's new side starting", func() bool {
		return mustState(t, r.f, r.side(2, units.SideB)).ActiveState == units.Activating
	})
	r.stop()
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	r.done <- nil // for the cleanup
	<-errc
	// systemd's start job outlives the supervisor that asked for it.
	r.f.mu.Lock()
	r.f.unit(r.side(2, units.SideB)).st.JobType = units.JobStart
	r.f.log = nil
	r.f.mu.Unlock()

	r2 := r.again(t, &syncBuffer{})
	r2.run()
	waitFor(t, r2.n, "the resumed reload to join instance 2's start", func() bool {
		return slices.Contains(r2.f.jobs(), "start "+r.side(2, units.SideB))
	})
	close(hold)
	released = true
	waitFor(t, r2.n, "the resumed reload's end", func() bool {
		_, err := os.Stat(r2.s.planPath())
		return os.IsNotExist(err)
	})
	if slices.Contains(r2.f.jobs(), "stop "+r.side(2, units.SideB)) {
		t.Errorf("the starting new side was stopped and started again: %q", r2.f.jobs())
	}
	waitFor(t, r2.n, "instance 2 served by its new side only", func() bool {
		return serving(mustState(t, r.f, r.side(2, units.SideB))) && !serving(mustState(t, r.f, r.side(2, units.SideA)))
	})
}
