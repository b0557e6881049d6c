package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/units"
)

// fakeManager is a units.Manager held in memory. It is a fake for the
// error paths a real systemd cannot be made to produce on demand in a
// unit test: an instance whose start fails or hits the start limit, a
// restart that hangs until released, a unit that flaps, a bus that goes
// away (every call fails, the watch closes) and comes back. The real
// systemd paths are tested in internal/integration.
type fakeManager struct {
	mu      sync.Mutex
	units   map[string]*fakeUnit
	nextPID uint32
	watches []chan string
	// fail makes a unit's next start or restart jobs fail with the
	// service Result given ("exit-code", "start-limit-hit", "timeout").
	fail map[string]string
	// hold makes a restart of the unit wait until the channel closes.
	hold map[string]chan struct{}
	// drain makes a stop of the unit, while its process runs, take until
	// the channel closes: the unit is deactivating with a stop job, its
	// process still there (an old side draining after a handover).
	// Another stop meanwhile joins it, as systemd's does.
	drain map[string]chan struct{}
	// busErr, when set, is the error of every call (the bus went away).
	busErr error
	// stall, when set, makes State wait until it closes (a manager that
	// does not answer).
	stall chan struct{}
	// log records every job and signal, in order: "restart UNIT", ...
	log []string
}

type fakeUnit struct {
	st       units.UnitState
	pid      uint32
	restarts uint32
	exit     units.MainExit
	since    time.Time
}

func newFake() *fakeManager {
	return &fakeManager{units: map[string]*fakeUnit{}, fail: map[string]string{}, hold: map[string]chan struct{}{}, drain: map[string]chan struct{}{}, nextPID: 100}
}

func (f *fakeManager) unit(name string) *fakeUnit {
	u := f.units[name]
	if u == nil {
		u = &fakeUnit{st: units.UnitState{Name: name, LoadState: units.Loaded, ActiveState: units.Inactive, SubState: "dead"}}
		f.units[name] = u
	}
	return u
}

// changed tells every watcher that unit changed; f.mu is held.
func (f *fakeManager) changed(name string) {
	for _, w := range f.watches {
		select {
		case w <- name:
		default:
		}
	}
}

// set puts a unit in a state (a crash, a flap) and tells the watchers.
func (f *fakeManager) set(name string, a units.ActiveState, result string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.unit(name)
	u.st.ActiveState = a
	if a.Running() {
		if u.pid == 0 {
			f.nextPID++
			u.pid = f.nextPID
			u.since = time.Now()
		}
		u.st.SubState = "running"
	} else {
		if u.pid != 0 {
			u.exit = units.MainExit{Kind: units.Killed, Status: int(syscall.SIGKILL), Result: result}
		}
		u.pid = 0
		u.st.SubState = string(a)
		u.restarts++
	}
	f.changed(name)
}

func (f *fakeManager) busy() error {
	if f.busErr != nil {
		return f.busErr
	}
	return nil
}

// setBus makes every call fail with err (nil: the bus is back), and
// closes the watches when it goes away, as units.Manager's do when they
// give up.
func (f *fakeManager) setBus(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.busErr = err
	if err != nil {
		for _, w := range f.watches {
			close(w)
		}
		f.watches = nil
	}
}

func (f *fakeManager) jobs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

func (f *fakeManager) start(ctx context.Context, name string, restart bool) error {
	verb := "start"
	if restart {
		verb = "restart"
	}
	f.mu.Lock()
	if err := f.busy(); err != nil {
		f.mu.Unlock()
		return fmt.Errorf("%s %s: %w", verb, name, err)
	}
	f.log = append(f.log, verb+" "+name)
	hold := f.hold[name]
	if hold != nil {
		// The job runs until released: the unit is activating.
		u := f.unit(name)
		u.st.ActiveState, u.st.SubState, u.st.JobType = units.Activating, "start", units.JobType(verb)
		f.changed(name)
	}
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			f.mu.Lock()
			f.unit(name).st.JobType = units.NoJob
			f.mu.Unlock()
			return fmt.Errorf("%s %s: %w", verb, name, ctx.Err())
		}
	}
	f.mu.Lock()
	f.unit(name).st.JobType = units.NoJob
	defer f.mu.Unlock()
	u := f.unit(name)
	if res, ok := f.fail[name]; ok {
		if u.pid != 0 {
			u.exit = units.MainExit{Kind: units.Killed, Status: int(syscall.SIGTERM), Result: "success"}
		}
		u.pid = 0
		u.st.ActiveState, u.st.SubState = units.Failed, "failed"
		u.exit.Result = res
		f.changed(name)
		return fmt.Errorf("%s %s: job failed", verb, name)
	}
	if restart || u.pid == 0 {
		if u.pid != 0 {
			u.exit = units.MainExit{Kind: units.Killed, Status: int(syscall.SIGTERM), Result: "success"}
		}
		f.nextPID++
		u.pid = f.nextPID
		u.since = time.Now()
	}
	u.st.ActiveState, u.st.SubState = units.Active, "running"
	f.changed(name)
	return nil
}

func (f *fakeManager) Start(ctx context.Context, name string) error { return f.start(ctx, name, false) }
func (f *fakeManager) Restart(ctx context.Context, name string) error {
	return f.start(ctx, name, true)
}

// StopUnqueued is Stop, failing when a job is queued for the unit (the
// fake's units have a job only while a start or restart waits).
func (f *fakeManager) StopUnqueued(ctx context.Context, name string) error {
	f.mu.Lock()
	job := f.unit(name).st.JobType
	f.mu.Unlock()
	if job != "" {
		return fmt.Errorf("stop %s: transaction is destructive (a %s job is queued)", name, job)
	}
	return f.Stop(ctx, name)
}

func (f *fakeManager) Stop(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy(); err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	f.log = append(f.log, "stop "+name)
	u := f.unit(name)
	if d := f.drain[name]; d != nil && u.pid != 0 {
		if u.st.JobType != units.JobStop {
			u.st.ActiveState, u.st.SubState, u.st.JobType = units.Deactivating, "stop-sigterm", units.JobStop
			f.changed(name)
		}
		f.mu.Unlock()
		select {
		case <-d:
		case <-ctx.Done():
			f.mu.Lock()
			return fmt.Errorf("stop %s: %w", name, ctx.Err())
		}
		f.mu.Lock()
		if u.st.JobType != units.JobStop {
			return nil // a joined stop ended it already
		}
		u.st.JobType = units.NoJob
	}
	if u.pid != 0 {
		u.exit = units.MainExit{Kind: units.Killed, Status: int(syscall.SIGTERM), Result: "success"}
	}
	u.pid = 0
	u.st.ActiveState, u.st.SubState = units.Inactive, "dead"
	f.changed(name)
	return nil
}

func (f *fakeManager) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy(); err != nil {
		return err
	}
	f.log = append(f.log, fmt.Sprintf("signal %s %s", sig, name))
	return nil
}

func (f *fakeManager) State(ctx context.Context, name string) (units.UnitState, error) {
	f.mu.Lock()
	if stall := f.stall; stall != nil {
		f.mu.Unlock()
		<-stall
		f.mu.Lock()
		f.stall = nil
	}
	defer f.mu.Unlock()
	if err := f.busy(); err != nil {
		return units.UnitState{}, err
	}
	if u, ok := f.units[name]; ok {
		return u.st, nil
	}
	return units.UnitState{Name: name, LoadState: units.NotFound, ActiveState: units.Inactive, SubState: "dead"}, nil
}

func (f *fakeManager) States(ctx context.Context, patterns ...string) ([]units.UnitState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy(); err != nil {
		return nil, err
	}
	var out []units.UnitState
	for name, u := range f.units {
		for _, p := range patterns {
			if ok, _ := filepath.Match(p, name); ok {
				out = append(out, u.st)
				break
			}
		}
	}
	return out, nil
}

func (f *fakeManager) prop(name string, get func(u *fakeUnit)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy(); err != nil {
		return err
	}
	if u, ok := f.units[name]; ok {
		get(u)
	}
	return nil
}

func (f *fakeManager) MainPID(ctx context.Context, name string) (p uint32, err error) {
	err = f.prop(name, func(u *fakeUnit) { p = u.pid })
	return
}

func (f *fakeManager) Restarts(ctx context.Context, name string) (n uint32, err error) {
	err = f.prop(name, func(u *fakeUnit) { n = u.restarts })
	return
}

func (f *fakeManager) MainExit(ctx context.Context, name string) (x units.MainExit, err error) {
	err = f.prop(name, func(u *fakeUnit) { x = u.exit })
	return
}

func (f *fakeManager) Since(ctx context.Context, name string) (t time.Time, err error) {
	err = f.prop(name, func(u *fakeUnit) {
		if u.st.ActiveState == units.Active {
			t = u.since
		}
	})
	return
}

// UnitByPID names the unit whose main process is pid, as systemd would
// (a worker's own children aside).
func (f *fakeManager) UnitByPID(ctx context.Context, pid uint32) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, u := range f.units {
		if u.pid == pid && pid != 0 {
			return name, nil
		}
	}
	return "", fmt.Errorf("fake: no unit has pid %d", pid)
}

// setPID makes pid the main process of unit (a report from this test
// process then comes from that unit) and tells the watchers.
func (f *fakeManager) setPID(name string, pid uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unit(name).pid = pid
	f.changed(name)
}
func (f *fakeManager) ExecStart(ctx context.Context, name string) ([]string, error) {
	return nil, errors.New("fake: no ExecStart")
}
func (f *fakeManager) UnitFileState(ctx context.Context, name string) (string, error) { return "", nil }
func (f *fakeManager) DaemonReload(ctx context.Context) error                         { return nil }
func (f *fakeManager) Close() error                                                   { return nil }

func (f *fakeManager) Watch(ctx context.Context) (<-chan string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy(); err != nil {
		return nil, err
	}
	c := make(chan string, 256)
	f.watches = append(f.watches, c)
	return c, nil
}

// draining says whether unit is deactivating with its stop job.
func (f *fakeManager) draining(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.units[name]
	return u != nil && u.st.ActiveState == units.Deactivating && u.st.JobType == units.JobStop
}

// pidOf is unit's main PID, 0 for none.
func (f *fakeManager) pidOf(name string) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u := f.units[name]; u != nil {
		return u.pid
	}
	return 0
}

// notes records what the supervisor tells systemd and the events it emits.
type notes struct {
	mu     sync.Mutex
	notify []string
	events []events.Event
	ch     chan struct{} // signalled on each record
}

func newNotes() *notes { return &notes{ch: make(chan struct{}, 1)} }

func (n *notes) poke() {
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

func (n *notes) Notify(s string) error {
	n.mu.Lock()
	n.notify = append(n.notify, s)
	n.mu.Unlock()
	n.poke()
	return nil
}

func (n *notes) Emit(e events.Event) error {
	n.mu.Lock()
	n.events = append(n.events, e)
	n.mu.Unlock()
	n.poke()
	return nil
}

// find returns the notifications that contain s.
func (n *notes) find(s string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, x := range n.notify {
		if strings.Contains(x, s) {
			out = append(out, x)
		}
	}
	return out
}

func (n *notes) eventsOf(t events.Type) []events.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []events.Event
	for _, e := range n.events {
		if e.Type == t {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls cond, on every record and every 10ms, until it holds or
// 10s pass.
func waitFor(t *testing.T, n *notes, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-n.ch:
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// rig is a supervisor under test with its fake manager, its
// configuration file and its runtime directory.
type rig struct {
	t     *testing.T
	f     *fakeManager
	n     *notes
	s     *Supervisor
	cfg   string // configuration file
	dir   string // runtime root
	hup   chan struct{}
	done  chan error
	stop  context.CancelFunc
	group string
}

// newRig writes the configuration toml and builds a supervisor of group
// over a fake manager; prepare adjusts the fake and the options before
// New.
func newRig(t *testing.T, toml, group string, prepare func(f *fakeManager, o *Options)) *rig {
	t.Helper()
	// A short path: the control socket's must fit in sun_path.
	dir, err := os.MkdirTemp("", "sup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "powerhouse.toml")
	if err := os.WriteFile(cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, f: newFake(), n: newNotes(), cfg: cfg, dir: filepath.Join(dir, "run"), hup: make(chan struct{}, 1), group: group}
	o := Options{Config: c, Group: group, RuntimeRoot: r.dir, Manager: r.f, Notify: r.n.Notify, Emit: r.n.Emit,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Reload: r.hup, Poll: 50 * time.Millisecond, StartTimeout: 5 * time.Second}
	if testing.Verbose() {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if prepare != nil {
		prepare(r.f, &o)
	}
	if r.s, err = New(o); err != nil {
		t.Fatal(err)
	}
	return r
}

// run starts the supervisor; it is stopped at the end of the test.
func (r *rig) run() {
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	r.done = make(chan error, 1)
	go func() { r.done <- r.s.Run(ctx) }()
	r.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.t.Error("Run did not return after its context ended")
		}
	})
}

func (r *rig) waitReady() {
	r.t.Helper()
	waitFor(r.t, r.n, "READY=1", func() bool { return len(r.n.find("READY=1")) > 0 })
}

// waitAll waits until every instance wanted is up and the start is over.
func (r *rig) waitAll() {
	r.t.Helper()
	r.waitReady()
	waitFor(r.t, r.n, "every instance up", func() bool {
		up, amount := r.s.upCount()
		return up == amount && r.s.runningOp() == ""
	})
}

func (r *rig) client() *Client { return &Client{Path: r.s.g.ControlPath()} }

func (r *rig) instance(n int) string { return r.s.g.Instance(n) }

// apiTOML is a group that is not sticky: its instances share the socket.
const apiTOML = `
[[worker]]
name = "api"
exec = "/bin/true"
amount = 3
listen = ["127.0.0.1:9"]
[worker.config]
secret = "s3cret"
color = "blue"
`
