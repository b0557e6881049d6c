package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
	"time"

	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// The verbs that act on a running group (reload, scale, set, status) are
// clients of its supervisor's API (supervisor.Client on
// units.Group.ControlPath): the supervisor carries the operation out,
// reports its progress and emits its events; the verb prints what it
// says.

// scopeOf is the service manager a verb's --user flag selects.
func scopeOf(user bool) units.Scope {
	if user {
		return units.User
	}
	return units.System
}

// flagWord is "--user " for a command line about the user's manager.
func flagWord(user bool) string {
	if f := scopeOf(user).Flag(); f != "" {
		return f + " "
	}
	return ""
}

// group names the units and paths of group name in the scope user says.
func (e *env) group(name string, user bool) units.Group {
	return units.Group{Name: name, Scope: scopeOf(user), Root: e.runtimeRoot}
}

// client is the API of g's supervisor.
func client(g units.Group) *supervisor.Client {
	return &supervisor.Client{Path: g.ControlPath()}
}

// notRunning reports whether err, from a call to a supervisor, means that
// none listens: its socket is not there, or nobody accepts on it.
func notRunning(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
}

// supervisorState says, for a message about a supervisor that does not
// answer, what systemd knows of its unit: "powerhouse@web.service is
// inactive". stopped is false when the unit runs (or starts, or stops)
// and its supervisor does not answer all the same: that is a failure,
// not a group at rest. Best effort: without the service manager it names
// the socket nobody answers on, and the group counts as stopped.
func (e *env) supervisorState(g units.Group) (state string, stopped bool) {
	unit := g.SupervisorUnit()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	m, err := connect(ctx, g.Scope == units.User)
	if err != nil {
		return fmt.Sprintf("no supervisor answers on %s, and %v", g.ControlPath(), err), true
	}
	defer m.Close()
	st, err := m.State(ctx, unit)
	switch {
	case err != nil:
		return fmt.Sprintf("no supervisor answers on %s", g.ControlPath()), true
	case st.ActiveState.AtRest():
		return fmt.Sprintf("%s is %s", unit, st.ActiveState), true
	}
	return fmt.Sprintf("%s is %s, but nothing answers on %s", unit, st.ActiveState, g.ControlPath()), false
}

// noAnswer is the error of a verb whose group's supervisor unit runs but
// does not answer on its socket; done says what the verb did before
// ("3 instances saved in F; "), if anything.
func noAnswer(verb string, g units.Group, state, done string) error {
	return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse %s: group %s: %sits supervisor does not answer (%s): see journalctl %s-u %s", verb, g.Name, done, state, flagWord(g.Scope == units.User), g.SupervisorUnit())}
}

// callFailed is the error a verb returns for a call its supervisor
// answered with a failure: the supervisor's message as it gave it (it
// names the group and the instance), which is also what `systemctl
// reload` shows, since ExecReload= runs the same verb.
func callFailed(verb string, err error) error {
	var ce *supervisor.CallError
	if errors.As(err, &ce) {
		return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse %s: %s", verb, ce.Message)}
	}
	return err
}

// progress prints a supervisor's progress replies as they come, one line
// each, prefixed with the verb and the group unless the supervisor's line
// already starts with its own ("reload web: ..."), which names the
// operation that runs (install --now runs a reload).
func (e *env) progress(verb, group string) func(supervisor.Progress) {
	return func(p supervisor.Progress) {
		if op, _, ok := strings.Cut(p.Message, " "+group+": "); ok && op != "" && !strings.Contains(op, " ") {
			fmt.Fprintln(e.stderr, p.Message)
			return
		}
		fmt.Fprintf(e.stderr, "%s %s: %s\n", verb, group, p.Message)
	}
}
