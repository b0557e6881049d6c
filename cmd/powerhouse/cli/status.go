package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// The status types are the supervisor's (its Status method returns them).
type (
	GroupStatus    = supervisor.GroupStatus
	UnitStatus     = supervisor.UnitStatus
	InstanceStatus = supervisor.InstanceStatus
)

var statusVerb = verb{
	name:  "status",
	args:  "[GROUP...]",
	short: "show each group's supervisor and instances: state, PID, uptime, restarts, connections",
	long: `For each group (all by default): the supervisor's state and, per instance,
its state, main PID, uptime, restart count (systemd's NRestarts), for
sticky groups the connections handed off to it, and the unit serving it
(powerhouse-GROUP@N.service, or powerhouse-GROUP.b@N.service after a
reload) with, while a reload's old process drains, its PID, unit and how
long it has drained. Each group's supervisor
answers for its group; for a group whose supervisor does not run, systemd's
view of its units is shown. Without --config, the groups are those of the
installed configuration, or, when it cannot be read (it is root's alone),
those whose supervisor units systemd knows, with the configuration file
their supervisors run with. --json prints a stable JSON array of groups
(see docs/status.md). --watch is powerhouse top.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		mf := addManagerFlags(fs)
		asJSON := fs.Bool("json", false, "print JSON")
		watch := fs.Bool("watch", false, "the live view of powerhouse top, refreshed every second")
		return func(e *env, args []string) error {
			if *watch {
				return runTop(e, *mf.user, false, time.Second, args)
			}
			var out []GroupStatus
			var m units.Manager
			defer func() {
				if m != nil {
					m.Close()
				}
			}()
			groups, err := statusGroups(e, mf, args, &m)
			if err != nil {
				return err
			}
			for _, sg := range groups {
				gs, err := sg.status(e, *mf.user, &m)
				if err != nil {
					return err
				}
				out = append(out, gs)
			}
			if *asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			printDrain(e, mf)
			printStatus(e, out)
			return nil
		}
	},
}

// statusGroup is a group status shows: its name and, when the
// configuration could be read, its settings.
type statusGroup struct {
	g units.Group
	w *config.Worker // nil: the configuration is not readable
}

// statusGroups lists the groups status shows, in the configuration's
// order: those of --config, else of the installed configuration. When
// that is missing or not readable (a user who is not root), the running
// house names them: the supervisor units systemd has loaded, and the
// configuration their ExecStart= gives (--config FILE), if readable.
// *m is the service manager, connected if needed.
func statusGroups(e *env, mf *managerFlags, args []string, m *units.Manager) ([]statusGroup, error) {
	c, err := mf.load()
	if err != nil && (*mf.config != "" || !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission)) {
		return nil, err
	}
	fromConfig := func(c *config.Config) ([]statusGroup, error) {
		ws, err := groupsOf(c, args)
		if err != nil {
			return nil, err
		}
		var out []statusGroup
		for _, w := range ws {
			out = append(out, statusGroup{g: e.group(w.Name, *mf.user), w: w})
		}
		return out, nil
	}
	if err == nil {
		return fromConfig(c)
	}
	loadErr := err
	if *m, err = connect(e.ctx, *mf.user); err != nil {
		return nil, loadErr
	}
	sups, err := (*m).States(e.ctx, units.SupervisorPattern)
	if err != nil {
		return nil, err
	}
	var names []string
	var exec []string
	for _, st := range sups {
		name, ok := units.GroupOfSupervisor(st.Name)
		if !ok {
			continue
		}
		names = append(names, name)
		if a, err := (*m).ExecStart(e.ctx, st.Name); err == nil && (exec == nil || st.ActiveState.Running()) {
			exec = a
		}
	}
	if len(names) == 0 {
		return nil, loadErr
	}
	if p := configFlag(exec); p != "" {
		if c, err := config.Load(p); err == nil {
			return fromConfig(c)
		}
	}
	sort.Strings(names)
	if len(args) > 0 {
		for _, a := range args {
			if !slices.Contains(names, a) {
				return nil, usagef("no group %q among the house's supervisors (%s)", a, strings.Join(names, ", "))
			}
		}
		names = args
	}
	var out []statusGroup
	for _, n := range names {
		out = append(out, statusGroup{g: e.group(n, *mf.user)})
	}
	return out, nil
}

// configFlag returns the --config value of a supervisor's ExecStart=
// argument vector, "" when it has none.
func configFlag(argv []string) string {
	for i, a := range argv {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			return v
		}
		if a == "--config" && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// statusTimeout bounds a supervisor's answer to Status: it is read from
// memory, and a supervisor that does not answer in that time is shown as
// systemd sees it.
const statusTimeout = 10 * time.Second

// status asks the group's supervisor; when it does not answer, it shows
// systemd's view of the group's units.
func (sg statusGroup) status(e *env, user bool, m *units.Manager) (GroupStatus, error) {
	gs, err := sg.askStatus(e, user, m)
	if sg.w != nil && sg.w.Sticky {
		gs.DispatchMode = string(sg.w.Dispatch)
	}
	return gs, err
}

// askStatus is status without what the configuration says.
func (sg statusGroup) askStatus(e *env, user bool, m *units.Manager) (GroupStatus, error) {
	ctx, cancel := context.WithTimeout(e.ctx, statusTimeout)
	gs, callErr := client(sg.g).Status(ctx)
	cancel()
	if callErr == nil {
		// The supervisor knows its dispatch set: in_dispatch means what
		// it says.
		gs.DispatchKnown = true
		return gs, nil
	}
	if *m == nil {
		var err error
		if *m, err = connect(e.ctx, user); err != nil {
			return gs, err
		}
	}
	gs, err := groupStatus(e, *m, sg.g, sg.w)
	if err != nil {
		return gs, err
	}
	if !notRunning(callErr) && gs.Supervisor.State != string(units.Inactive) && gs.Supervisor.State != string(units.Failed) {
		fmt.Fprintf(e.stderr, "status %s: its supervisor did not answer (%v): showing systemd's view\n", sg.g.Name, callErr)
	}
	return gs, nil
}

func unitStatus(e *env, m units.Manager, unit string) (UnitStatus, error) {
	st, err := m.State(e.ctx, unit)
	if err != nil {
		return UnitStatus{}, err
	}
	us := UnitStatus{Unit: unit, State: string(st.ActiveState), SubState: st.SubState}
	if st.LoadState == units.Loaded {
		us.PID, _ = m.MainPID(e.ctx, unit)
	}
	return us, nil
}

// groupStatus is systemd's view of group g: its supervisor unit and its
// instances, with the dispatch counters its supervisor last published.
// w is nil when the configuration is not readable: the group's type is
// then unknown, and its amount is the instances systemd knows.
func groupStatus(e *env, m units.Manager, g units.Group, w *config.Worker) (GroupStatus, error) {
	gs := GroupStatus{Group: g.Name}
	if w != nil {
		gs.Type, gs.Sticky, gs.Amount, gs.Config = string(w.Type), w.Sticky, w.Amount, w.Config
		if w.Sticky {
			gs.DispatchMode = string(w.Dispatch)
		}
	}
	// The live config is the one the workers read.
	if b, err := os.ReadFile(g.ConfigPath()); err == nil {
		var live map[string]any
		if json.Unmarshal(b, &live) == nil {
			gs.Config = live
		}
	}
	sup, err := unitStatus(e, m, g.SupervisorUnit())
	if err != nil {
		return gs, err
	}
	gs.Supervisor = sup
	var ds supervisor.DispatchState
	// Kernel mode has no dispatch counters: the kernel steers, and the
	// program stays attached while the supervisor is down.
	if gs.Sticky && gs.DispatchMode != "kernel" {
		if b, err := os.ReadFile(g.DispatchStatePath()); err == nil {
			gs.DispatchKnown = json.Unmarshal(b, &ds) == nil
		}
		c := ds.DispatchCounters
		gs.Dispatch = &c
	}
	in := map[int]bool{}
	for _, id := range ds.InDispatch {
		in[id] = true
	}
	// Both sides of each slot: the one serving speaks for it, and an
	// old one still draining after a reload is shown beside it.
	sts, err := m.States(e.ctx, g.InstancePatterns()...)
	if err != nil {
		return gs, err
	}
	slots := map[int][]units.UnitState{}
	for _, st := range sts {
		if n, _, ok := g.SideOf(st.Name); ok {
			slots[n] = append(slots[n], st)
		}
	}
	seen := map[int]bool{}
	for n, sides := range slots {
		seen[n] = true
		st, dr := supervisor.SlotSides(sides)
		is := InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: st.Name, State: string(st.ActiveState), SubState: st.SubState},
			HandedOff: ds.PerInstance[n], Queued: ds.Queued[n], InDispatch: in[n]}
		is.PID, _ = m.MainPID(e.ctx, st.Name)
		for _, x := range sides {
			r, _ := m.Restarts(e.ctx, x.Name)
			is.Restarts += r
		}
		if st.ActiveState == units.Active {
			if t, err := m.Since(e.ctx, st.Name); err == nil && !t.IsZero() {
				is.UptimeSeconds = time.Since(t).Round(time.Millisecond).Seconds()
			}
		}
		if dr != nil {
			if pid, err := m.MainPID(e.ctx, dr.Name); err == nil && pid != 0 {
				is.Draining = &supervisor.DrainingStatus{Unit: dr.Name, PID: pid}
			}
		}
		gs.Instances = append(gs.Instances, is)
	}
	if w == nil {
		gs.Amount = len(seen)
	}
	// Instances the configuration wants but systemd has not loaded.
	for n := 1; n <= gs.Amount; n++ {
		if !seen[n] {
			gs.Instances = append(gs.Instances, InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: g.Instance(n), State: string(units.Inactive), SubState: "dead"}})
		}
	}
	sort.Slice(gs.Instances, func(i, j int) bool { return gs.Instances[i].Instance < gs.Instances[j].Instance })
	return gs, nil
}

func printStatus(e *env, gs []GroupStatus) {
	for i, g := range gs {
		if i > 0 {
			fmt.Fprintln(e.stdout)
		}
		kind := g.Type
		if kind == "" {
			kind = "type unknown: the configuration is not readable"
		}
		if g.Sticky {
			kind += ", sticky"
		}
		if g.DispatchMode != "" {
			kind += ", dispatch " + g.DispatchMode
		}
		fmt.Fprintf(e.stdout, "group %s (%s), %s; supervisor %s: %s (%s)", g.Group, kind, plural(g.Amount, "instance"), g.Supervisor.Unit, g.Supervisor.State, g.Supervisor.SubState)
		if g.Supervisor.PID != 0 {
			fmt.Fprintf(e.stdout, ", pid %d", g.Supervisor.PID)
		}
		fmt.Fprintln(e.stdout)
		if g.Headline != "" {
			fmt.Fprintf(e.stdout, "  %s\n", g.Headline)
		}
		if g.Dispatch != nil {
			ds := g.Dispatch
			fmt.Fprintf(e.stdout, "  dispatch: %d handed off, %d sticky misses, %d dropped, %d PROXY errors\n", ds.HandedOff, ds.StickyMiss, ds.Dropped, ds.ProxyErrors)
			fmt.Fprintf(e.stdout, "  faults: %d queue full, %d accept pauses, %d send errors, %d redials, %d accept errors, %d untrusted PROXY peers, %d PROXY over budget\n",
				ds.QueueFull, ds.AcceptPauses, ds.SendErrors, ds.Redials, ds.AcceptErrors, ds.ProxyUntrusted, ds.ProxyBusy)
		}
		if k := g.Kernel; k != nil {
			printKernel(e, k)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		last := "HANDED OFF"
		if g.DispatchMode == "kernel" {
			// The supervisor hands nothing off: the table's share is
			// what each instance gets.
			last = "BUCKETS"
		}
		fmt.Fprintln(tw, "  INSTANCE\tSTATE\tPID\tUPTIME\tRESTARTS\t"+last+"\tUNIT")
		for _, in := range g.Instances {
			state := in.State + " (" + in.SubState + ")"
			if g.Sticky && g.DispatchKnown && in.State == "active" && !in.InDispatch {
				state += ", out of dispatch"
			}
			up := "-"
			if in.UptimeSeconds > 0 {
				up = (time.Duration(in.UptimeSeconds * float64(time.Second))).Round(time.Second).String()
			}
			count := fmt.Sprint(in.HandedOff)
			if g.DispatchMode == "kernel" {
				count = "-"
				if g.Kernel != nil && g.Kernel.Buckets > 0 && g.Kernel.Steering == "sticky" {
					count = fmt.Sprintf("%d (%.1f%%)", in.Buckets, 100*float64(in.Buckets)/float64(g.Kernel.Buckets))
				}
			}
			fmt.Fprintf(tw, "  %s@%d\t%s\t%d\t%s\t%d\t%s\t%s\n", g.Group, in.Instance, state, in.PID, up, in.Restarts, count, unitColumn(in))
		}
		tw.Flush()
	}
}

// unitColumn names the unit serving an instance and, while a reload's
// old process drains beside it, that one: "powerhouse-web.b@2.service ·
// draining pid 640 (powerhouse-web@2.service, 3s)".
func unitColumn(in InstanceStatus) string {
	col := in.Unit
	if d := in.Draining; d != nil {
		how := d.Unit
		if !d.Since.IsZero() {
			how += ", " + time.Since(d.Since).Round(time.Second).String()
		}
		col += fmt.Sprintf(" · draining pid %d (%s)", d.PID, how)
	}
	return col
}

// printKernel prints a kernel-mode group's steering line.
func printKernel(e *env, k *supervisor.KernelStatus) {
	if k.Steering != "sticky" {
		fmt.Fprintf(e.stdout, "  kernel steering: DEGRADED, plain SO_REUSEPORT (not sticky): %s\n", k.Degraded)
		return
	}
	how := "loaded"
	if k.Adopted {
		how = "adopted from the supervisor before"
	}
	ids := make([]string, len(k.ProgramIDs))
	for i, id := range k.ProgramIDs {
		ids[i] = fmt.Sprint(id)
	}
	fmt.Fprintf(e.stdout, "  kernel steering: %d buckets over %s, program %s (%s); the supervisor is out of the data path\n",
		k.Buckets, plural(len(k.InTable), "instance"), strings.Join(ids, ", "), how)
	if len(k.Waiting) > 0 {
		fmt.Fprintf(e.stdout, "  waiting for the supervisor to take their sockets (it restarts for them): instances %v\n", k.Waiting)
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
