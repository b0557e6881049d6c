package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/powerhouse/powerhouse/units"
)

// groupsReady checks that the supervisor of every group is ready (active:
// it reports READY=1 once it dispatches to a ready instance), starting
// the ones that are not yet and waiting for that start job. It fails
// naming each group that is not, its unit, the unit's state and result,
// and the last lines its processes wrote to the journal since began:
// the line that says why (a user house whose supervisor could not create
// its runtime directory used to be reported as installed).
func groupsReady(e *env, m units.Manager, scope units.Scope, groups []string, began time.Time) error {
	var bad []string
	for _, name := range groups {
		g := units.Group{Name: name, Scope: scope}
		unit := g.SupervisorUnit()
		st, err := m.State(e.ctx, unit)
		if err == nil && st.ActiveState == units.Active && st.JobType == units.NoJob {
			continue
		}
		// Starting, restarting or failed: a start job ends with its
		// READY=1, or with its failure (systemd bounds it with the
		// unit's TimeoutStartSec=).
		startErr := m.Start(e.ctx, unit)
		if err := e.ctx.Err(); err != nil {
			return err
		}
		st, err = m.State(e.ctx, unit)
		if startErr == nil && err == nil && st.ActiveState == units.Active {
			continue
		}
		bad = append(bad, notReady(e.ctx, m, g, st, began))
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "\n"))
	}
	return nil
}

// notReady says why group g's supervisor is not ready: its state and
// result, and its last lines in the journal.
func notReady(ctx context.Context, m units.Manager, g units.Group, st units.UnitState, began time.Time) string {
	unit := g.SupervisorUnit()
	s := fmt.Sprintf("group %s is not ready: %s is %s", g.Name, unit, st.ActiveState)
	if st.SubState != "" {
		s += " (" + st.SubState + ")"
	}
	if x, err := m.MainExit(ctx, unit); err == nil && x.Result != "" && x.Result != "success" {
		s += ", result " + x.Result
	}
	lines := journalTail(ctx, unit, g.Scope == units.User, began)
	jc := "journalctl -u " + unit
	if g.Scope == units.User {
		jc = "journalctl --user -u " + unit
	}
	switch {
	case len(lines) > 0:
		return s + fmt.Sprintf("; its journal (%s) ends:\n    %s", jc, strings.Join(lines, "\n    "))
	case g.Scope == units.User:
		// A volatile journal is not split by user: only root reads it.
		return s + fmt.Sprintf(" (%s says why; where the journal is root's alone: sudo journalctl _SYSTEMD_USER_UNIT=%s _UID=%d)", jc, unit, os.Getuid())
	}
	return s + fmt.Sprintf(" (%s says why)", jc)
}

// Bounds of what journalTail reads: a few lines, each cut short, within a
// few seconds.
const (
	journalLines   = 5
	journalLineMax = 400
	journalTimeout = 5 * time.Second
)

// journalTail returns the last lines the processes of unit logged since
// since (the supervisor's own words, not systemd's lines about it, which
// after a restart loop are all "Start request repeated too quickly").
// Best effort: none when journalctl is missing or says nothing.
func journalTail(ctx context.Context, unit string, user bool, since time.Time) []string {
	ctx, cancel := context.WithTimeout(ctx, journalTimeout)
	defer cancel()
	base := []string{"--no-pager", "--quiet", "-o", "cat", "-n", strconv.Itoa(4 * journalLines), "--since", "@" + strconv.FormatInt(since.Unix(), 10)}
	var tries [][]string
	if user {
		// The user's own journal, else the system's (where a user's
		// units log when journald does not split by user).
		tries = [][]string{
			append(append([]string{}, base...), "--user", "_SYSTEMD_USER_UNIT="+unit),
			append(append([]string{}, base...), "_SYSTEMD_USER_UNIT="+unit, "_UID="+strconv.Itoa(os.Getuid())),
		}
	} else {
		tries = [][]string{append(append([]string{}, base...), "_SYSTEMD_UNIT="+unit)}
	}
	for _, args := range tries {
		cmd := exec.CommandContext(ctx, "journalctl", args...)
		out := &boundedBuffer{max: 64 << 10}
		cmd.Stdout = out
		if cmd.Run() != nil && out.buf.Len() == 0 {
			continue
		}
		var lines []string
		for _, l := range strings.Split(out.buf.String(), "\n") {
			l = strings.TrimSpace(l)
			// A restart loop logs the same reason at every attempt: once.
			if l == "" || len(lines) > 0 && lines[len(lines)-1] == l {
				continue
			}
			if len(l) > journalLineMax {
				l = strings.ToValidUTF8(l[:journalLineMax], "") + "…"
			}
			lines = append(lines, l)
		}
		if len(lines) > journalLines {
			lines = lines[len(lines)-journalLines:]
		}
		if len(lines) > 0 {
			return lines
		}
	}
	return nil
}
