package units

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Scope says which systemd manager to talk to.
type Scope int

const (
	// System is the system manager: over its private socket as root (no
	// bus daemon needed), over the system bus otherwise.
	System Scope = iota
	// User is the calling user's manager: over its private socket
	// ($XDG_RUNTIME_DIR/systemd/private), the user bus otherwise.
	User
)

// LoadState is a unit's LoadState property.
type LoadState string

// The load states the house cares about.
const (
	Loaded     LoadState = "loaded"
	NotFound   LoadState = "not-found"
	Masked     LoadState = "masked"
	LoadError  LoadState = "error"
	BadSetting LoadState = "bad-setting"
)

// ActiveState is a unit's ActiveState property.
type ActiveState string

// The active states of systemd 252.
const (
	Active       ActiveState = "active"
	Reloading    ActiveState = "reloading"
	Inactive     ActiveState = "inactive"
	Failed       ActiveState = "failed"
	Activating   ActiveState = "activating"
	Deactivating ActiveState = "deactivating"
)

// Running reports whether a unit in state a is up: active or reloading.
func (a ActiveState) Running() bool { return a == Active || a == Reloading }

// AtRest reports whether a unit in state a has no process: inactive or failed.
func (a ActiveState) AtRest() bool { return a == Inactive || a == Failed }

// JobType is the type of a unit's pending job; NoJob when there is none.
type JobType string

// The job types the house cares about.
const (
	NoJob      JobType = ""
	JobStart   JobType = "start"
	JobStop    JobType = "stop"
	JobRestart JobType = "restart"
	JobReload  JobType = "reload"
)

// UnitState is what the supervisor and the CLI need to know of one unit.
type UnitState struct {
	Name        string
	LoadState   LoadState
	ActiveState ActiveState
	SubState    string // type-specific: running, dead, auto-restart, ...
	JobType     JobType
}

// ExitKind says how a service's main process ended.
type ExitKind int

// The kinds of ExecMainCode (the CLD_ codes of waitid(2)).
const (
	NotExited ExitKind = 0
	Exited    ExitKind = 1 // CLD_EXITED: Status is the exit code
	Killed    ExitKind = 2 // CLD_KILLED: Status is the signal
	Dumped    ExitKind = 3 // CLD_DUMPED: Status is the signal
)

// MainExit is how a service's last main process ended.
type MainExit struct {
	Kind   ExitKind
	Status int    // exit code, or signal number
	Result string // the service's Result: success, exit-code, signal, timeout, start-limit-hit, ...
}

// Signal is the signal that ended the process, 0 when it exited.
func (e MainExit) Signal() syscall.Signal {
	if e.Kind == Killed || e.Kind == Dumped {
		return syscall.Signal(e.Status)
	}
	return 0
}

// Manager is the part of a systemd manager the house uses. Every call is
// bounded: by its context, and by CallTimeout for the D-Bus call itself.
// The D-Bus implementation reconnects when the manager's bus goes away
// (daemon-reexec, a dbus restart); a fake implements it for the
// supervisor's unit tests.
type Manager interface {
	// Start, Stop and Restart enqueue a job (mode "replace") and wait,
	// until ctx ends, for its result; a result other than "done" is an
	// error that names the unit and the result.
	Start(ctx context.Context, unit string) error
	Stop(ctx context.Context, unit string) error
	Restart(ctx context.Context, unit string) error
	// StopUnqueued stops unit like Stop but with job mode "fail": it
	// fails, cancelling nothing, when a job is queued for unit or for a
	// unit the stop would take along (an instance an operator just asked
	// to start, whose socket the supervisor is stopping because the
	// instance had come to rest).
	StopUnqueued(ctx context.Context, unit string) error
	// Signal sends sig to the unit's main process alone.
	Signal(ctx context.Context, unit string, sig syscall.Signal) error
	// State returns the state of one unit, loaded or not (not-found).
	State(ctx context.Context, unit string) (UnitState, error)
	// States lists the loaded units matching the glob patterns.
	States(ctx context.Context, patterns ...string) ([]UnitState, error)
	// MainPID is a service's main process, 0 for none.
	MainPID(ctx context.Context, unit string) (uint32, error)
	// Restarts counts the automatic restarts of a service (NRestarts).
	Restarts(ctx context.Context, unit string) (uint32, error)
	// MainExit is how the service's last main process ended.
	MainExit(ctx context.Context, unit string) (MainExit, error)
	// Since is when the unit last entered the active state.
	Since(ctx context.Context, unit string) (time.Time, error)
	// UnitByPID names the unit a process belongs to.
	UnitByPID(ctx context.Context, pid uint32) (string, error)
	// ExecStart is the argument vector of a service's first ExecStart=.
	ExecStart(ctx context.Context, unit string) ([]string, error)
	// UnitFileState is enabled, disabled, static, ... ("" for none).
	UnitFileState(ctx context.Context, unit string) (string, error)
	// DaemonReload makes the manager re-read the unit files.
	DaemonReload(ctx context.Context) error
	// Watch reports the names of units whose properties change, until
	// ctx ends. Changes may be coalesced: a receiver asks for the
	// current state. An empty name means that any unit may have changed
	// (a reconnect): the receiver re-reads everything.
	Watch(ctx context.Context) (<-chan string, error)
	Close() error
}

// CallTimeout bounds each D-Bus call the Manager makes, within its context.
const CallTimeout = 25 * time.Second

// Dialer opens a new go-systemd connection to a manager.
type Dialer func(ctx context.Context) (*sdbus.Conn, error)

// Connect connects to the manager of scope.
func Connect(ctx context.Context, scope Scope) (Manager, error) {
	return NewManager(ctx, scopeDialer(scope))
}

func scopeDialer(scope Scope) Dialer {
	return func(ctx context.Context) (*sdbus.Conn, error) {
		var c *sdbus.Conn
		var err error
		switch {
		case scope == User:
			// The user manager's private socket needs no user bus
			// (dbus-user-session is not everywhere).
			p := filepath.Join(userRuntimeDir(), "systemd", "private")
			c, err = sdbus.NewConnection(func() (*dbus.Conn, error) { return dialPrivate(ctx, p) })
			if err != nil {
				c, err = sdbus.NewUserConnectionContext(ctx)
			}
		case os.Geteuid() == 0:
			c, err = sdbus.NewSystemdConnectionContext(ctx)
			if err != nil {
				c, err = sdbus.NewSystemConnectionContext(ctx)
			}
		default:
			c, err = sdbus.NewSystemConnectionContext(ctx)
		}
		if err != nil {
			return nil, fmt.Errorf("connect to the %s manager: %w", scope, err)
		}
		return c, nil
	}
}

// dialPrivate connects to a manager's private socket: EXTERNAL
// authentication, and no Hello (there is no bus daemon).
func dialPrivate(ctx context.Context, path string) (*dbus.Conn, error) {
	conn, err := dbus.Dial("unix:path="+path, dbus.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(fmt.Sprint(os.Getuid()))}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// NewManager returns a Manager over the connections dial opens: one now,
// and a new one whenever the last is found closed.
func NewManager(ctx context.Context, dial Dialer) (Manager, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	return &dbusManager{dial: dial, c: c, gen: 1}, nil
}

// dbusManager is the Manager over go-systemd.
type dbusManager struct {
	dial Dialer
	mu   sync.Mutex
	c    *sdbus.Conn
	gen  int // counts connections: watchers re-subscribe on a new one
	done bool
}

// conn returns a live connection, dialling a new one if the last closed.
func (m *dbusManager) conn(ctx context.Context) (*sdbus.Conn, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil, 0, errors.New("systemd manager connection closed")
	}
	if m.c.Connected() {
		return m.c, m.gen, nil
	}
	c, err := m.dial(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("reconnect to systemd: %w", err)
	}
	m.c.Close()
	m.c = c
	m.gen++
	return c, m.gen, nil
}

// call runs f on a live connection under CallTimeout, once more on a new
// connection if the first one was found closed.
func (m *dbusManager) call(ctx context.Context, f func(ctx context.Context, c *sdbus.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	for try := 0; ; try++ {
		c, _, err := m.conn(ctx)
		if err != nil {
			return err
		}
		err = f(ctx, c)
		if err == nil || try > 0 || c.Connected() {
			return err
		}
	}
}

func (m *dbusManager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.done {
		m.done = true
		m.c.Close()
	}
	return nil
}

// job runs one job-enqueueing call and waits until systemd reports its end.
// systemd reports it on the connection that enqueued the job: when that
// connection closes meanwhile (daemon-reexec), the end is never reported
// there, and job follows the unit on a new connection until its job is
// gone instead of waiting for ever.
func (m *dbusManager) job(ctx context.Context, what, unit string, enqueue func(c *sdbus.Conn) func(context.Context, string, string, chan<- string) (int, error)) error {
	return m.jobMode(ctx, what, unit, "replace", enqueue)
}

func (m *dbusManager) jobMode(ctx context.Context, what, unit, mode string, enqueue func(c *sdbus.Conn) func(context.Context, string, string, chan<- string) (int, error)) error {
	ch := make(chan string, 1)
	var conn *sdbus.Conn
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) error {
		conn = c
		_, err := enqueue(c)(ctx, unit, mode, ch)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, unit, err)
	}
	check := time.NewTicker(jobCheck)
	defer check.Stop()
	for {
		select {
		case res := <-ch:
			if res != "done" {
				return fmt.Errorf("%s %s: job %s", what, unit, res)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%s %s: %w", what, unit, ctx.Err())
		case <-check.C:
			if !conn.Connected() {
				return m.settle(ctx, what, unit)
			}
		}
	}
}

// jobCheck is how often a job's wait checks that its connection lives.
const jobCheck = time.Second

// settle waits, on a new connection, until unit has no job pending, and
// says whether what (start, restart, stop) ended as asked: systemd's
// report of the job was lost with the old connection.
func (m *dbusManager) settle(ctx context.Context, what, unit string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := m.State(ctx, unit)
		if err == nil && st.JobType == NoJob {
			ok := st.ActiveState.Running()
			if what == "stop" {
				ok = st.ActiveState.AtRest()
			}
			if !ok {
				return fmt.Errorf("%s %s: the connection to systemd closed during the job; the unit is now %s (%s)", what, unit, st.ActiveState, st.SubState)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%s %s: the connection to systemd closed during the job: %w", what, unit, err)
			}
			return fmt.Errorf("%s %s: %w", what, unit, ctx.Err())
		case <-tick.C:
		}
	}
}

func (m *dbusManager) Start(ctx context.Context, unit string) error {
	return m.job(ctx, "start", unit, func(c *sdbus.Conn) func(context.Context, string, string, chan<- string) (int, error) {
		return c.StartUnitContext
	})
}

func (m *dbusManager) Stop(ctx context.Context, unit string) error {
	return m.job(ctx, "stop", unit, func(c *sdbus.Conn) func(context.Context, string, string, chan<- string) (int, error) {
		return c.StopUnitContext
	})
}

func (m *dbusManager) StopUnqueued(ctx context.Context, unit string) error {
	return m.jobMode(ctx, "stop", unit, "fail", func(c *sdbus.Conn) func(context.Context, string, string, chan<- string) (int, error) {
		return c.StopUnitContext
	})
}

// Restart waits, for a Type=notify service, until the new process
// reported READY=1.
func (m *dbusManager) Restart(ctx context.Context, unit string) error {
	return m.job(ctx, "restart", unit, func(c *sdbus.Conn) func(context.Context, string, string, chan<- string) (int, error) {
		return c.RestartUnitContext
	})
}

func (m *dbusManager) Signal(ctx context.Context, unit string, sig syscall.Signal) error {
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) error {
		return c.KillUnitWithTarget(ctx, unit, sdbus.Main, int32(sig))
	})
	if err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, unit, err)
	}
	return nil
}

func (m *dbusManager) States(ctx context.Context, patterns ...string) ([]UnitState, error) {
	var us []sdbus.UnitStatus
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) (err error) {
		us, err = c.ListUnitsByPatternsContext(ctx, nil, patterns)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list units %s: %w", strings.Join(patterns, " "), err)
	}
	return convert(us), nil
}

func (m *dbusManager) State(ctx context.Context, unit string) (UnitState, error) {
	var us []sdbus.UnitStatus
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) (err error) {
		us, err = c.ListUnitsByNamesContext(ctx, []string{unit})
		return err
	})
	if err != nil {
		return UnitState{}, fmt.Errorf("state of %s: %w", unit, err)
	}
	if len(us) == 0 {
		return UnitState{Name: unit, LoadState: NotFound, ActiveState: Inactive}, nil
	}
	return convert(us)[0], nil
}

func convert(us []sdbus.UnitStatus) []UnitState {
	out := make([]UnitState, len(us))
	for i, u := range us {
		out[i] = UnitState{Name: u.Name, LoadState: LoadState(u.LoadState), ActiveState: ActiveState(u.ActiveState),
			SubState: u.SubState, JobType: JobType(u.JobType)}
	}
	return out
}

// property reads one property; iface "" is the Unit interface.
func (m *dbusManager) property(ctx context.Context, unit, iface, name string) (dbus.Variant, error) {
	var p *sdbus.Property
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) (err error) {
		if iface == "" {
			p, err = c.GetUnitPropertyContext(ctx, unit, name)
		} else {
			p, err = c.GetUnitTypePropertyContext(ctx, unit, iface, name)
		}
		return err
	})
	if err != nil {
		return dbus.Variant{}, fmt.Errorf("%s of %s: %w", name, unit, err)
	}
	return p.Value, nil
}

// typed reads a property of type T.
func typed[T any](ctx context.Context, m *dbusManager, unit, iface, name string) (T, error) {
	var zero T
	v, err := m.property(ctx, unit, iface, name)
	if err != nil {
		return zero, err
	}
	t, ok := v.Value().(T)
	if !ok {
		return zero, fmt.Errorf("%s of %s: unexpected D-Bus type %s", name, unit, v.Signature())
	}
	return t, nil
}

func (m *dbusManager) MainPID(ctx context.Context, unit string) (uint32, error) {
	return typed[uint32](ctx, m, unit, "Service", "MainPID")
}

func (m *dbusManager) Restarts(ctx context.Context, unit string) (uint32, error) {
	return typed[uint32](ctx, m, unit, "Service", "NRestarts")
}

func (m *dbusManager) MainExit(ctx context.Context, unit string) (MainExit, error) {
	code, err := typed[int32](ctx, m, unit, "Service", "ExecMainCode")
	if err != nil {
		return MainExit{}, err
	}
	status, err := typed[int32](ctx, m, unit, "Service", "ExecMainStatus")
	if err != nil {
		return MainExit{}, err
	}
	result, err := typed[string](ctx, m, unit, "Service", "Result")
	if err != nil {
		return MainExit{}, err
	}
	return MainExit{Kind: ExitKind(code), Status: int(status), Result: result}, nil
}

func (m *dbusManager) Since(ctx context.Context, unit string) (time.Time, error) {
	us, err := typed[uint64](ctx, m, unit, "", "ActiveEnterTimestamp")
	if err != nil || us == 0 {
		return time.Time{}, err
	}
	return time.UnixMicro(int64(us)), nil
}

func (m *dbusManager) UnitByPID(ctx context.Context, pid uint32) (string, error) {
	var name string
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) (err error) {
		name, err = c.GetUnitNameByPID(ctx, pid)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("unit of pid %d: %w", pid, err)
	}
	return name, nil
}

// execCommand is the D-Bus shape of ExecStart: (path, argv, ignore
// failure, and times and status of the last run).
type execCommand struct {
	Path                          string
	Argv                          []string
	Ignore                        bool
	StartRealtime, StartMonotonic uint64
	ExitRealtime, ExitMonotonic   uint64
	PID                           uint32
	Code, Status                  int32
}

func (m *dbusManager) ExecStart(ctx context.Context, unit string) ([]string, error) {
	v, err := m.property(ctx, unit, "Service", "ExecStart")
	if err != nil {
		return nil, err
	}
	var cmds []execCommand
	if err := dbus.Store([]any{v.Value()}, &cmds); err != nil {
		return nil, fmt.Errorf("ExecStart of %s: %w", unit, err)
	}
	if len(cmds) == 0 {
		return nil, fmt.Errorf("ExecStart of %s: none", unit)
	}
	return cmds[0].Argv, nil
}

func (m *dbusManager) UnitFileState(ctx context.Context, unit string) (string, error) {
	return typed[string](ctx, m, unit, "", "UnitFileState")
}

func (m *dbusManager) DaemonReload(ctx context.Context) error {
	err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) error { return c.ReloadContext(ctx) })
	if err != nil {
		return fmt.Errorf("daemon-reload: %w", err)
	}
	return nil
}

// Watch subscribes on the current connection and again on each new one;
// it checks the connection every second, so a manager that re-executed is
// found even when nothing else calls it.
func (m *dbusManager) Watch(ctx context.Context) (<-chan string, error) {
	out := make(chan string, 256)
	updates := make(chan *sdbus.PropertiesUpdate, 256)
	errs := make(chan error, 16)
	subscribe := func() (int, error) {
		var gen int
		err := m.call(ctx, func(ctx context.Context, c *sdbus.Conn) error {
			_, gen, _ = m.conn(ctx)
			if err := c.Subscribe(); err != nil && !isAlreadySubscribed(err) {
				return err
			}
			c.SetPropertiesSubscriber(updates, errs)
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("subscribe to systemd: %w", err)
		}
		return gen, nil
	}
	gen, err := subscribe()
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(out)
		check := time.NewTicker(time.Second)
		defer check.Stop()
		send := func(name string) {
			select {
			case out <- name:
			default: // the receiver re-reads everything anyway when it catches up
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-errs:
			case u := <-updates:
				send(u.UnitName)
			case <-check.C:
				_, g, err := m.conn(ctx)
				if err != nil || g == gen {
					continue
				}
				if g2, err := subscribe(); err == nil {
					gen = g2
					send("") // events were lost meanwhile: re-read everything
				}
			}
		}
	}()
	return out, nil
}

func isAlreadySubscribed(err error) bool {
	var de dbus.Error
	return errors.As(err, &de) && strings.HasSuffix(de.Name, "AlreadySubscribed")
}
