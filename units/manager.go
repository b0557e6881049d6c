package units

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Scope says which systemd manager to talk to.
type Scope int

const (
	// System is the system manager: over its private socket as root (no
	// bus daemon needed), over the system bus otherwise.
	System Scope = iota
	// User is the calling user's manager, over the user bus.
	User
)

// UnitState is what the supervisor needs to know of one unit.
type UnitState struct {
	Name        string
	LoadState   string // loaded, not-found, masked, ...
	ActiveState string // active, activating, deactivating, inactive, failed, reloading
	SubState    string
	JobType     string // the pending job: start, stop, restart, ...; "" when none
}

// Manager is a connection to a systemd manager.
type Manager struct {
	c *sdbus.Conn
}

// Connect connects to the manager of scope.
func Connect(ctx context.Context, scope Scope) (*Manager, error) {
	var c *sdbus.Conn
	var err error
	switch {
	case scope == User:
		c, err = sdbus.NewUserConnectionContext(ctx)
	case os.Geteuid() == 0:
		c, err = sdbus.NewSystemdConnectionContext(ctx)
		if err != nil {
			c, err = sdbus.NewSystemConnectionContext(ctx)
		}
	default:
		c, err = sdbus.NewSystemConnectionContext(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to systemd: %w", err)
	}
	return &Manager{c: c}, nil
}

// NewManager wraps an existing go-systemd connection (tests connect to a
// private systemd this way).
func NewManager(c *sdbus.Conn) *Manager { return &Manager{c: c} }

// Close closes the connection.
func (m *Manager) Close() { m.c.Close() }

// Conn returns the underlying go-systemd connection.
func (m *Manager) Conn() *sdbus.Conn { return m.c }

// job runs one job-enqueueing call and waits until systemd reports its end.
func (m *Manager) job(ctx context.Context, what, unit string, call func(context.Context, string, string, chan<- string) (int, error)) error {
	ch := make(chan string, 1)
	if _, err := call(ctx, unit, "replace", ch); err != nil {
		return fmt.Errorf("%s %s: %w", what, unit, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("%s %s: job %s", what, unit, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: %w", what, unit, ctx.Err())
	}
}

// Start starts unit and waits for the job to finish.
func (m *Manager) Start(ctx context.Context, unit string) error {
	return m.job(ctx, "start", unit, m.c.StartUnitContext)
}

// Stop stops unit and waits for the job to finish.
func (m *Manager) Stop(ctx context.Context, unit string) error {
	return m.job(ctx, "stop", unit, m.c.StopUnitContext)
}

// Restart restarts unit and waits for the job to finish: for a Type=notify
// service, until the new process reported READY=1.
func (m *Manager) Restart(ctx context.Context, unit string) error {
	return m.job(ctx, "restart", unit, m.c.RestartUnitContext)
}

// States lists the loaded units matching the glob patterns.
func (m *Manager) States(ctx context.Context, patterns ...string) ([]UnitState, error) {
	us, err := m.c.ListUnitsByPatternsContext(ctx, nil, patterns)
	if err != nil {
		return nil, fmt.Errorf("list units %s: %w", strings.Join(patterns, " "), err)
	}
	return convert(us), nil
}

// State returns the state of one unit, loaded or not.
func (m *Manager) State(ctx context.Context, unit string) (UnitState, error) {
	us, err := m.c.ListUnitsByNamesContext(ctx, []string{unit})
	if err != nil {
		return UnitState{}, fmt.Errorf("state of %s: %w", unit, err)
	}
	if len(us) == 0 {
		return UnitState{Name: unit, LoadState: "not-found", ActiveState: "inactive"}, nil
	}
	return convert(us)[0], nil
}

func convert(us []sdbus.UnitStatus) []UnitState {
	out := make([]UnitState, len(us))
	for i, u := range us {
		out[i] = UnitState{Name: u.Name, LoadState: u.LoadState, ActiveState: u.ActiveState, SubState: u.SubState, JobType: u.JobType}
	}
	return out
}

// Property returns one property of unit's type-specific interface, such as
// Service.MainPID or Service.NRestarts.
func (m *Manager) Property(ctx context.Context, unit, iface, name string) (any, error) {
	p, err := m.c.GetUnitTypePropertyContext(ctx, unit, iface, name)
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", name, unit, err)
	}
	return p.Value.Value(), nil
}

// Watch reports the names of units whose properties change, until ctx
// ends. Changes may be coalesced: a receiver asks for the current state.
func (m *Manager) Watch(ctx context.Context) (<-chan string, error) {
	if err := m.c.Subscribe(); err != nil && !isAlreadySubscribed(err) {
		return nil, fmt.Errorf("subscribe to systemd: %w", err)
	}
	updates := make(chan *sdbus.PropertiesUpdate, 256)
	errs := make(chan error, 16)
	m.c.SetPropertiesSubscriber(updates, errs)
	out := make(chan string, 256)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-errs:
			case u := <-updates:
				select {
				case out <- u.UnitName:
				default: // the receiver re-reads everything anyway when it catches up
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
