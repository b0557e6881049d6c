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
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/internal/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// GroupStatus is one group in `powerhouse status --json`. The field names
// are stable; new fields may be added.
type GroupStatus struct {
	Group      string           `json:"group"`
	Type       string           `json:"type"`
	Sticky     bool             `json:"sticky"`
	Amount     int              `json:"amount"`
	Supervisor UnitStatus       `json:"supervisor"`
	Config     map[string]any   `json:"config"`
	Dispatch   *DispatchStatus  `json:"dispatch,omitempty"`
	Instances  []InstanceStatus `json:"instances"`

	dispatchKnown bool // the supervisor has published its dispatch set
}

// UnitStatus is a unit's state as systemd reports it.
type UnitStatus struct {
	Unit     string `json:"unit"`
	State    string `json:"state"`     // ActiveState
	SubState string `json:"sub_state"` // SubState
	PID      uint32 `json:"pid"`       // MainPID, 0 when not running
}

// DispatchStatus are a sticky group's counters since its supervisor started.
type DispatchStatus = supervisor.DispatchCounters

// InstanceStatus is one worker instance.
type InstanceStatus struct {
	Instance int `json:"instance"`
	UnitStatus
	UptimeSeconds float64 `json:"uptime_seconds"` // since it became active; 0 when not active
	Restarts      uint32  `json:"restarts"`       // systemd's NRestarts
	HandedOff     uint64  `json:"handed_off"`     // connections dispatched to it (sticky groups)
	Queued        int     `json:"queued"`         // connections waiting now for room in its hand-off queue (sticky groups)
	InDispatch    bool    `json:"in_dispatch"`    // receives new connections (sticky groups)
}

func init() {
	register(&command{
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
	})
}

func unitStatus(e *env, m *units.Manager, unit string) (UnitStatus, error) {
	st, err := m.State(e.ctx, unit)
	if err != nil {
		return UnitStatus{}, err
	}
	us := UnitStatus{Unit: unit, State: st.ActiveState, SubState: st.SubState}
	if st.LoadState == "loaded" {
		if v, err := m.Property(e.ctx, unit, "Service", "MainPID"); err == nil {
			us.PID, _ = v.(uint32)
		}
	}
	return us, nil
}

func groupStatus(e *env, m *units.Manager, w *config.Worker) (GroupStatus, error) {
	gs := GroupStatus{Group: w.Name, Type: string(w.Type), Sticky: w.Sticky, Amount: w.Amount, Config: w.Config}
	// The live config is the one the workers read.
	if b, err := os.ReadFile(generator.GroupConfigPath(w.Name)); err == nil {
		var live map[string]any
		if json.Unmarshal(b, &live) == nil {
			gs.Config = live
		}
	}
	sup, err := unitStatus(e, m, generator.SupervisorService(w.Name))
	if err != nil {
		return gs, err
	}
	gs.Supervisor = sup
	var ds supervisor.DispatchState
	if w.Sticky {
		if b, err := os.ReadFile(supervisor.DispatchStatePath(generator.RuntimeDir, w.Name)); err == nil {
			gs.dispatchKnown = json.Unmarshal(b, &ds) == nil
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
		is := InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: st.Name, State: st.ActiveState, SubState: st.SubState},
			HandedOff: ds.PerInstance[n], Queued: ds.Queued[n], InDispatch: in[n]}
		if v, err := m.Property(e.ctx, st.Name, "Service", "MainPID"); err == nil {
			is.PID, _ = v.(uint32)
		}
		if v, err := m.Property(e.ctx, st.Name, "Service", "NRestarts"); err == nil {
			is.Restarts, _ = v.(uint32)
		}
		if st.ActiveState == "active" {
			if p, err := m.Conn().GetUnitPropertyContext(e.ctx, st.Name, "ActiveEnterTimestamp"); err == nil {
				if us, ok := p.Value.Value().(uint64); ok && us > 0 {
					is.UptimeSeconds = time.Since(time.UnixMicro(int64(us))).Round(time.Millisecond).Seconds()
				}
			}
		}
		gs.Instances = append(gs.Instances, is)
	}
	// Instances the configuration wants but systemd has not loaded.
	for n := 1; n <= w.Amount; n++ {
		if !seen[n] {
			gs.Instances = append(gs.Instances, InstanceStatus{Instance: n, UnitStatus: UnitStatus{Unit: generator.WorkerService(w.Name, n), State: "inactive", SubState: "dead"}})
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
			if g.Sticky && g.dispatchKnown && in.State == "active" && !in.InDispatch {
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
