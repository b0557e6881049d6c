package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
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
its state, main PID, uptime, restart count (systemd's NRestarts) and, for
sticky groups, the connections handed off to it. --json prints a stable
JSON array of groups (see docs/status.md).`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		mf := addManagerFlags(fs)
		asJSON := fs.Bool("json", false, "print JSON")
		return func(e *env, args []string) error {
			c, err := mf.load()
			if err != nil {
				return err
			}
			ws, err := groupsOf(c, args)
			if err != nil {
				return err
			}
			m, err := mf.connect(e)
			if err != nil {
				return err
			}
			defer m.Close()
			var out []GroupStatus
			for _, w := range ws {
				gs, err := groupStatus(e, m, w)
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
			printStatus(e, out)
			return nil
		}
	},
}

func unitStatus(e *env, m units.Manager, unit string) (UnitStatus, error) {
	st, err := m.State(e.ctx, unit)
	if err != nil {
		return UnitStatus{}, err
	}
	us := UnitStatus{Unit: unit, State: string(st.ActiveState), SubState: st.SubState}
	if st.LoadState == "loaded" {
		us.PID, _ = m.MainPID(e.ctx, unit)
	}
	return us, nil
}

func groupStatus(e *env, m units.Manager, w *config.Worker) (GroupStatus, error) {
	gs := GroupStatus{Group: w.Name, Type: string(w.Type), Sticky: w.Sticky, Amount: w.Amount, Config: w.Config}
	// The live config is the one the workers read.
	if b, err := os.ReadFile(units.Group{Name: w.Name}.ConfigPath()); err == nil {
		var live map[string]any
		if json.Unmarshal(b, &live) == nil {
			gs.Config = live
		}
	}
	sup, err := unitStatus(e, m, units.Group{Name: w.Name}.SupervisorUnit())
	if err != nil {
		return gs, err
	}
	gs.Supervisor = sup
	var ds supervisor.DispatchState
	if w.Sticky {
		if b, err := os.ReadFile(units.Group{Name: w.Name}.DispatchStatePath()); err == nil {
			gs.DispatchKnown = json.Unmarshal(b, &ds) == nil
		}
		c := ds.DispatchCounters
		gs.Dispatch = &c
	}
	in := map[int]bool{}
	for _, id := range ds.InDispatch {
		in[id] = true
	}
	sts, err := m.States(e.ctx, "powerhouse-"+w.Name+"@*.service")
	if err != nil {
		return gs, err
	}
	seen := map[int]bool{}
	for _, st := range sts {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(st.Name, "powerhouse-"+w.Name+"@"), ".service"))
		if err != nil {
			continue
		}
		seen[n] = true
		is := InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: st.Name, State: string(st.ActiveState), SubState: st.SubState},
			HandedOff: ds.PerInstance[n], Queued: ds.Queued[n], InDispatch: in[n]}
		is.PID, _ = m.MainPID(e.ctx, st.Name)
		is.Restarts, _ = m.Restarts(e.ctx, st.Name)
		if st.ActiveState == "active" {
			if t, err := m.Since(e.ctx, st.Name); err == nil && !t.IsZero() {
				is.UptimeSeconds = time.Since(t).Round(time.Millisecond).Seconds()
			}
		}
		gs.Instances = append(gs.Instances, is)
	}
	// Instances the configuration wants but systemd has not loaded.
	for n := 1; n <= w.Amount; n++ {
		if !seen[n] {
			gs.Instances = append(gs.Instances, InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: units.Group{Name: w.Name}.Instance(n), State: "inactive", SubState: "dead"}})
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
		if g.Sticky {
			kind += ", sticky"
		}
		fmt.Fprintf(e.stdout, "group %s (%s), %s; supervisor %s: %s (%s)", g.Group, kind, plural(g.Amount, "instance"), g.Supervisor.Unit, g.Supervisor.State, g.Supervisor.SubState)
		if g.Supervisor.PID != 0 {
			fmt.Fprintf(e.stdout, ", pid %d", g.Supervisor.PID)
		}
		fmt.Fprintln(e.stdout)
		if g.Dispatch != nil {
			ds := g.Dispatch
			fmt.Fprintf(e.stdout, "  dispatch: %d handed off, %d sticky misses, %d dropped, %d PROXY errors\n", ds.HandedOff, ds.StickyMiss, ds.Dropped, ds.ProxyErrors)
			fmt.Fprintf(e.stdout, "  faults: %d queue full, %d send errors, %d redials, %d accept errors, %d untrusted PROXY peers, %d PROXY over budget\n",
				ds.QueueFull, ds.SendErrors, ds.Redials, ds.AcceptErrors, ds.ProxyUntrusted, ds.ProxyBusy)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  INSTANCE\tSTATE\tPID\tUPTIME\tRESTARTS\tHANDED OFF")
		for _, in := range g.Instances {
			state := in.State + " (" + in.SubState + ")"
			if g.Sticky && g.DispatchKnown && in.State == "active" && !in.InDispatch {
				state += ", out of dispatch"
			}
			up := "-"
			if in.UptimeSeconds > 0 {
				up = (time.Duration(in.UptimeSeconds * float64(time.Second))).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "  %s@%d\t%s\t%d\t%s\t%d\t%d\n", g.Group, in.Instance, state, in.PID, up, in.Restarts, in.HandedOff)
		}
		tw.Flush()
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
