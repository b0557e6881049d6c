package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/supervisor"
)

var topVerb = verb{
	name:    "top",
	args:    "[GROUP...]",
	signals: true,
	short:   "a live per-instance view: connections per second, queues, restarts, serving units",
	long: `Shows, refreshed every --interval (1s), each running group (or those
named) and, per instance: whether it is up and in dispatch, the connections
handed off per second and in all, its hand-off queue (connections sent to
it and not yet received, the kernel's figure) and the connections waiting in
the supervisor for room in that queue, open connections when the group's
workers report them, systemd's restart count, and the unit and PID serving
it with any old side still draining after a reload. It reads the groups'
metrics sockets, as powerhouse metrics does (root, or the group
powerhouse). On a terminal it redraws the screen (plain ANSI, fine over
SSH; Ctrl-C ends it); otherwise it prints one block per refresh. --once
looks twice, one interval apart, prints one block and exits: for scripts.
powerhouse status --watch is the same view.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		user := fs.Bool("user", false, "the groups of the user's service manager")
		once := fs.Bool("once", false, "print one view and exit")
		interval := fs.Duration("interval", time.Second, "the refresh `PERIOD` (at least 100ms)")
		return func(e *env, args []string) error {
			return runTop(e, *user, *once, *interval, args)
		}
	},
}

func runTop(e *env, user, once bool, interval time.Duration, args []string) error {
	if interval < 100*time.Millisecond {
		return usagef("--interval %v: at least 100ms", interval)
	}
	base := scopeOf(user).RuntimeBase()
	if e.runtimeRoot != "" {
		base = e.runtimeRoot
	}
	tty := isTerminal(e.stdout)
	var prev *topSample
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; ; i++ {
		socks, err := metricsSockets(base, args)
		if err != nil {
			return err
		}
		fams, errs := gatherGroups(e.ctx, socks)
		cur := sampleOf(fams, time.Now())
		if !once || prev != nil {
			var b strings.Builder
			renderTop(&b, prev, cur, errs, interval, hostQueueBound())
			if tty {
				// Home, clear, redraw: one write, so the screen never
				// shows half a view.
				fmt.Fprint(e.stdout, "\x1b[H\x1b[2J"+b.String())
			} else {
				if i > 1 {
					fmt.Fprintln(e.stdout)
				}
				fmt.Fprint(e.stdout, b.String())
			}
			if once {
				return nil
			}
		}
		prev = cur
		select {
		case <-e.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// hostQueueBound is the host's net.unix.max_dgram_qlen, the bound of the
// hand-off queues (systemd makes the hand-off sockets in the host's
// network namespace; the supervisors, in a private one, cannot read it),
// or "" when it cannot be read.
func hostQueueBound() string {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		return ""
	}
	v := strings.TrimSpace(string(b))
	if _, err := strconv.Atoi(v); err != nil {
		return ""
	}
	return v
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// topInstance is one instance in a sample.
type topInstance struct {
	up, inDispatch bool
	unit           string
	pid            int
	handed         float64
	queue, waiting float64
	open           float64
	hasOpen        bool
	restarts       float64
	draining       []string
}

// topGroup is one group in a sample.
type topGroup struct {
	wanted, handed, misses, dropped float64
	instances                       map[int]*topInstance
}

// topSample is one look at every group's metrics.
type topSample struct {
	at     time.Time
	groups map[string]*topGroup
}

func sampleOf(fams []*dto.MetricFamily, at time.Time) *topSample {
	s := &topSample{at: at, groups: map[string]*topGroup{}}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			g := s.groups[l["group"]]
			if g == nil {
				g = &topGroup{instances: map[int]*topInstance{}}
				s.groups[l["group"]] = g
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
			var in *topInstance
			if x, err := strconv.Atoi(l["instance"]); err == nil {
				in = g.instances[x]
				if in == nil {
					in = &topInstance{}
					g.instances[x] = in
				}
			}
			switch name := f.GetName(); {
			case name == "powerhouse_instances_wanted":
				g.wanted = v
			case name == "powerhouse_handed_off_total":
				g.handed = v
			case name == "powerhouse_sticky_misses_total":
				g.misses = v
			case name == "powerhouse_dropped_total":
				g.dropped = v
			case in == nil:
			case name == "powerhouse_instance_up":
				in.up, in.unit = v == 1, l["unit"]
			case name == "powerhouse_instance_pid":
				in.pid = int(v)
			case name == "powerhouse_instance_in_dispatch":
				in.inDispatch = v == 1
			case name == "powerhouse_instance_handed_off_total":
				in.handed = v
			case name == "powerhouse_instance_handoff_queue_length":
				in.queue = v
			case name == "powerhouse_instance_waiting_connections":
				in.waiting = v
			case name == "powerhouse_instance_open_connections":
				in.open, in.hasOpen = v, true
			case name == "powerhouse_instance_restarts_total":
				in.restarts = v
			case name == "powerhouse_instance_draining":
				in.draining = append(in.draining, l["unit"])
			}
		}
	}
	delete(s.groups, "")
	return s
}

// rate is the growth of a counter per second between two samples; 0
// without the earlier one, or when the counter went back (a supervisor
// restart).
func rate(prev, cur float64, dt time.Duration) float64 {
	if dt <= 0 || cur < prev {
		return 0
	}
	return (cur - prev) / dt.Seconds()
}

// renderTop writes one view of cur, with rates since prev.
func renderTop(w io.Writer, prev, cur *topSample, errs []error, interval time.Duration, bound string) {
	fmt.Fprintf(w, "powerhouse top · %s · every %v", cur.at.Format("15:04:05"), interval)
	if bound != "" {
		fmt.Fprintf(w, " · hand-off queues hold %s (net.unix.max_dgram_qlen)", bound)
	}
	fmt.Fprintln(w)
	names := make([]string, 0, len(cur.groups))
	for n := range cur.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		g := cur.groups[name]
		var pg *topGroup
		var dt time.Duration
		if prev != nil {
			pg, dt = prev.groups[name], cur.at.Sub(prev.at)
		}
		if pg == nil {
			pg = &topGroup{handed: g.handed, instances: map[int]*topInstance{}}
		}
		up := 0
		for _, in := range g.instances {
			if in.up {
				up++
			}
		}
		fmt.Fprintf(w, "\ngroup %s: %d/%d up · %s conn/s · %.0f misses · %.0f dropped\n", name, up, int(g.wanted),
			supervisor.FormatRate(rate(pg.handed, g.handed, dt)), g.misses, g.dropped)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  INSTANCE\tSTATE\tCONN/S\tHANDED OFF\tQUEUE\tWAITING\tOPEN\tRESTARTS\tPID\tUNIT")
		ids := make([]int, 0, len(g.instances))
		for n := range g.instances {
			ids = append(ids, n)
		}
		sort.Ints(ids)
		for _, n := range ids {
			in := g.instances[n]
			state := "down"
			switch {
			case in.up && in.inDispatch:
				state = "up"
			case in.up:
				state = "up, out of dispatch"
			}
			before := in.handed
			if p := pg.instances[n]; p != nil {
				before = p.handed
			}
			open := "-"
			if in.hasOpen {
				open = strconv.FormatFloat(in.open, 'f', 0, 64)
			}
			pid := "-"
			if in.pid > 0 {
				pid = strconv.Itoa(in.pid)
			}
			unit := in.unit
			for _, d := range in.draining {
				unit += " · draining " + d
			}
			fmt.Fprintf(tw, "  %s@%d\t%s\t%s\t%.0f\t%.0f\t%.0f\t%s\t%.0f\t%s\t%s\n", name, n, state,
				supervisor.FormatRate(rate(before, in.handed, dt)), in.handed, in.queue, in.waiting, open, in.restarts, pid, unit)
		}
		tw.Flush()
	}
	if len(names) == 0 {
		fmt.Fprintln(w, "\nno group answers")
	}
	for _, err := range errs {
		fmt.Fprintf(w, "! %v\n", err)
	}
}
