package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

const (
	group       = "web" // the sticky group the screens are about
	victim      = 2     // the instance screen 5 kills
	clients     = 12    // client addresses of the stickiness table
	rounds      = 5     // new connections per client address
	loadClients = 8     // addresses of each load during the reload
	cmdTimeout  = time.Minute
)

// notRoot is printed instead of the demo without root.
const notRoot = `make demo boots a private systemd (PID 1 of its own namespaces, the test
harness internal/sdbox) so that it can show PowerHouse without touching
this machine's services. That needs root:

    sudo make demo

On a host where PowerHouse is installed (make build && sudo make install),
the same tour is, from the repository:

    sudo powerhouse install --now testdata/demo.toml
    powerhouse generate testdata/demo.toml               # the units
    powerhouse status
    curl --interface 127.0.0.2 http://127.0.0.1:9999/    # again, and from .3, .4, ...:
                                                         # each address keeps its instance
    sudo systemctl reload powerhouse@web                 # handover reload
    sudo systemctl kill -s KILL powerhouse-web@2.service # it comes back
    powerhouse events
    sudo powerhouse uninstall
`

// demo is one run of the tour.
type demo struct {
	*report
	o    Options
	cfg  *config.Config
	web  *config.Worker
	box  *sdbox.Box
	m    units.Manager
	rows []stickyRow // screen 3's table, for screens 4 and 5
}

// Run runs the demo and returns its exit code: 0 when every step did what
// it claims, 1 otherwise (and when ctx ended it early), 2 when it cannot
// run here. Whatever happens after the box booted, Run tears it down
// before it returns.
func Run(ctx context.Context, o Options, out io.Writer) int {
	began := time.Now()
	if os.Geteuid() != 0 {
		fmt.Fprint(out, notRoot)
		return exitCannot
	}
	if !hasBus() {
		fmt.Fprintln(out, "demo: the private systemd needs a D-Bus system bus daemon: apt-get install dbus")
		return exitCannot
	}
	cfg, err := config.Load(o.Config)
	if err != nil {
		fmt.Fprintf(out, "demo: %v\n", err)
		return exitCannot
	}
	web := cfg.Worker(group)
	if web == nil || !web.Sticky || web.Amount < victim {
		fmt.Fprintf(out, "demo: %s needs a sticky group %q of at least %d instances\n", o.Config, group, victim)
		return exitCannot
	}
	if err := portsFree(); err != nil {
		fmt.Fprintf(out, "demo: %v: the demo house listens there (another demo, a test or a PowerHouse install is using it); try again when it is free\n", err)
		return exitCannot
	}
	d := &demo{report: &report{out: out}, o: o, cfg: cfg, web: web}
	fmt.Fprintf(out, "PowerHouse demo: %s in a private systemd, %d groups (%s: %d sticky instances).\n\n",
		rel(o.Config), len(cfg.Workers), group, web.Amount)

	d.muted = func() bool { return ctx.Err() != nil }
	err = d.boot(ctx)
	if err == nil {
		err = d.tour(ctx)
	}
	if err != nil {
		d.fail(err)
	}
	d.muted = nil
	if ctx.Err() != nil {
		fmt.Fprintf(out, "\n» %v: stopping the demo\n", context.Cause(ctx))
		d.failed = append(d.failed, fmt.Sprintf("interrupted: %v", context.Cause(ctx)))
	}
	d.teardown()
	return d.finish(began)
}

// boot starts the box and installs the house in it.
func (d *demo) boot(ctx context.Context) error {
	var binds []sdbox.Bind
	for _, b := range d.o.Binds {
		binds = append(binds, sdbox.Bind{Source: b.Host, Target: b.Box})
	}
	for _, v := range d.o.Visible {
		binds = append(binds, sdbox.Bind{Source: v, Target: v})
	}
	err := d.step("booting a private systemd", time.Second, func() error {
		b, err := sdbox.Boot(ctx, nil, sdbox.Options{Name: "powerhouse-demo", Binds: binds})
		if err != nil {
			return err
		}
		d.box = b
		m, err := units.NewManager(ctx, b.Manager)
		if err != nil {
			return fmt.Errorf("connect to the box's systemd: %w", err)
		}
		d.m = m
		return nil
	})
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	fmt.Fprintf(d.out, "  systemd is PID 1 of box %q (host PID %d); its /run, /tmp, /etc and /etc/systemd/system are private\n\n",
		d.box.Name(), d.box.PID())

	var out string
	err = d.step("powerhouse install --now "+rel(d.o.Config), time.Second, func() error {
		var err error
		out, err = d.powerhouse(ctx, "install", "--now", d.o.Config)
		return err
	})
	d.block("", out)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// tour shows the six screens. An error means a screen could not go on;
// failed checks are only recorded.
func (d *demo) tour(ctx context.Context) error {
	for _, s := range []func(context.Context) error{d.unitsScreen, d.statusScreen, d.stickyScreen, d.reloadScreen, d.killScreen, d.eventsScreen} {
		if err := s(ctx); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// unitsScreen shows what install wrote.
func (d *demo) unitsScreen(ctx context.Context) error {
	d.title("The units `powerhouse install` generated")
	dir := "/etc/systemd/system"
	entries, err := os.ReadDir(d.box.Path(dir))
	if err != nil {
		return fmt.Errorf("units: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "powerhouse") && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	d.printf("  In the box's %s (%d files): %s", dir, len(names), strings.Join(names, " "))
	d.printf("")
	shown := generator.GroupSockets(d.cfg.Worker(group))
	shown = append(shown, units.SupervisorTemplate, units.Group{Name: group}.WorkerTemplate(), units.Group{Name: group}.HandoffTemplate())
	for _, u := range shown {
		b, err := d.box.ReadFile(filepath.Join(dir, u))
		if err != nil {
			return fmt.Errorf("units: %w", err)
		}
		d.block("", "# "+filepath.Join(dir, u)+"\n"+foldUnit(string(b)))
		d.printf("")
	}
	want := []string{units.Target}
	for _, w := range d.cfg.Workers {
		want = append(want, units.Group{Name: w.Name}.SupervisorUnit(), units.Group{Name: w.Name}.Instance(1))
		if w.Type == config.Cluster {
			want = append(want, generator.GroupSockets(&w)...)
		}
		if w.Sticky {
			want = append(want, units.Group{Name: w.Name}.HandoffSocket(1))
		}
	}
	var missing []string
	for _, u := range want {
		st, err := d.m.State(ctx, u)
		if err != nil || st.LoadState != "loaded" {
			missing = append(missing, u)
		}
	}
	d.check(len(missing) == 0, "systemd loaded the house's units (%d checked)%s", len(want), listIf(" — not loaded: ", missing))
	enabled, _ := d.m.UnitFileState(ctx, units.Target)
	d.check(enabled == "enabled", "%s is enabled (starts at boot)", units.Target)
	return nil
}

// statusScreen shows the state of the house.
func (d *demo) statusScreen(ctx context.Context) error {
	d.title("The house at work: powerhouse status, systemctl list-units")
	// The supervisor publishes its dispatch set once a second: wait for
	// it, so that the screen shows the house as it serves.
	gs, err := d.waitDispatch(ctx)
	if err != nil {
		return err
	}
	out, err := d.powerhouse(ctx, "status")
	d.block("powerhouse status", out)
	if err != nil {
		return fmt.Errorf("powerhouse status: %w", err)
	}
	d.printf("")
	lu, err := d.box.Systemctl(ctx, "list-units", "--no-pager", "powerhouse*")
	d.block("systemctl list-units 'powerhouse*'", untilBlank(string(lu)))
	if err != nil {
		return fmt.Errorf("systemctl list-units: %w", err)
	}
	d.printf("")

	for _, g := range gs {
		var down []string
		for _, in := range g.Instances {
			switch {
			case in.State != "active" || in.PID == 0:
				down = append(down, fmt.Sprintf("%s@%d is %s", g.Group, in.Instance, in.State))
			case g.Sticky && !in.InDispatch:
				down = append(down, fmt.Sprintf("%s@%d is out of dispatch", g.Group, in.Instance))
			}
		}
		d.check(g.Supervisor.State == "active" && len(g.Instances) == g.Amount && len(down) == 0,
			"group %s: supervisor %s, %d of %d instances active%s", g.Group, g.Supervisor.State, g.Amount-len(down), g.Amount, listIf(" — ", down))
	}
	d.check(len(gs) == len(d.cfg.Workers), "status shows the %d groups of %s", len(d.cfg.Workers), rel(d.o.Config))
	return nil
}

// waitDispatch waits until every instance of the sticky group is active
// and in its supervisor's dispatch set, and returns the status of every
// group, each as its supervisor reports it: the demo asks them over their
// control sockets (supervisor.Client), as any program may.
func (d *demo) waitDispatch(ctx context.Context) ([]supervisor.GroupStatus, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var gs []supervisor.GroupStatus
		var err error
		for _, w := range d.cfg.Workers {
			c := supervisor.Client{Path: d.box.Path(units.Group{Name: w.Name}.ControlPath())}
			var s supervisor.GroupStatus
			if s, err = c.Status(ctx); err != nil {
				err = fmt.Errorf("status of group %s from its supervisor: %w", w.Name, err)
				break
			}
			gs = append(gs, s)
		}
		in := 0
		for _, g := range gs {
			if g.Group != group {
				continue
			}
			for _, i := range g.Instances {
				if i.State == "active" && i.InDispatch {
					in++
				}
			}
		}
		switch {
		case err == nil && in == d.web.Amount:
			return gs, nil
		case time.Now().After(deadline) && err != nil:
			return nil, err
		case time.Now().After(deadline):
			return gs, nil
		}
		select { // poll: a supervisor starting its instances has no event to wait on from here
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stickyScreen asks the web group from many client addresses.
func (d *demo) stickyScreen(ctx context.Context) error {
	d.title(fmt.Sprintf("Sticky: %d client addresses × %d new connections", clients, rounds))
	d.printf("  Each request opens a new TCP connection to %s from its client address; the", webAddr)
	d.printf("  supervisor hands it to the instance that rendezvous hashing picks for that address.")
	d.printf("")
	rows := make([]stickyRow, clients)
	for i := range rows {
		rows[i] = stickyRow{addr: clientAddr(i), instances: map[string]int{}, pids: map[string]bool{}}
	}
	// Round after round, so that no client's requests come back to back.
	for range rounds {
		for i := range rows {
			c := newClient(rows[i].addr, false)
			r, err := get(ctx, c, webURL)
			if err != nil {
				return fmt.Errorf("request from %s: %w", rows[i].addr, err)
			}
			rows[i].asked++
			rows[i].instances[r.Instance]++
			rows[i].pids[r.PID] = true
		}
	}
	d.block("", stickyTable(rows))
	d.printf("")
	per := map[string]int{}
	sticky := 0
	for _, row := range rows {
		if inst := row.sameInstance(); inst != "" && len(row.pids) == 1 {
			sticky++
			per[inst]++
		}
	}
	d.check(sticky == clients, "%d of %d client addresses always answered by the same instance (and process)", sticky, clients)
	var spread []string
	for _, inst := range sortedKeys(per) {
		spread = append(spread, fmt.Sprintf("%s: %d", inst, per[inst]))
	}
	d.check(len(per) > 1, "the clients are spread over %d of %d instances (%s)", len(per), d.web.Amount, strings.Join(spread, ", "))
	d.rows = rows

	// A load balancer in front speaks the PROXY protocol: the client
	// address in its header decides, not the balancer's own.
	const far = "203.0.113.7:51234"
	d.printf("")
	d.printf("  Behind a load balancer: PROXY protocol on %s, client %s, from two balancer addresses:", proxyAddr, far)
	var got []reply
	for _, lb := range []string{clientAddr(0), clientAddr(1)} {
		r, err := proxyGet(ctx, lb, far)
		if err != nil {
			return fmt.Errorf("PROXY request from %s: %w", lb, err)
		}
		d.printf("    via %-10s → instance=%s pid=%s remote=%s", lb, r.Instance, r.PID, r.Remote)
		got = append(got, r)
	}
	d.check(got[0].Instance == got[1].Instance && got[0].Remote == far && got[1].Remote == far,
		"the worker sees the original client %s, and it keeps its instance whichever balancer sends it", far)
	return nil
}

// reloadScreen reloads the web group while clients keep asking and
// long-lived connections stay open: a handover per instance, the new
// process ready before the old one drains.
func (d *demo) reloadScreen(ctx context.Context) error {
	d.title("Handover reload under load: systemctl reload " + units.Group{Name: group}.SupervisorUnit())
	n := d.web.Amount
	before, err := d.pids(ctx, n)
	if err != nil {
		return err
	}
	addrs := make([]string, 0, loadClients)
	for i := 0; i < loadClients && i < len(d.rows); i++ {
		addrs = append(addrs, d.rows[i].addr)
	}
	d.printf("  Load: %d clients on new connections and %d on kept-alive ones (%s … %s), asking non-stop,",
		len(addrs), len(addrs), addrs[0], addrs[len(addrs)-1])
	var longAddrs []string
	for i := range longConns {
		longAddrs = append(longAddrs, clientAddr(longFrom+i))
	}
	d.printf("  and %d long-lived connections (%s … %s), a line every %v each: hello's line-echo,",
		longConns, longAddrs[0], longAddrs[len(longAddrs)-1], linePeriod)
	d.printf("  a hijacked connection as a WebSocket is, which a restart would cut.")
	fresh := startLoad(ctx, webURL, addrs, false)
	kept := startLoad(ctx, webURL, addrs, true)
	stopLoad := func() { fresh.stop(); kept.stop() }
	defer stopLoad()
	long := startLong(ctx, longAddrs)
	defer long.stop()
	okNow := func() int64 { return fresh.ok.Load() + kept.ok.Load() }
	failedNow := func() int64 { return fresh.failed.Load() + kept.failed.Load() }
	for _, l := range []*load{fresh, kept} {
		if err := l.waitServed(ctx, 100, 20*time.Second); err != nil {
			return fmt.Errorf("load before the reload: %w", err)
		}
	}
	long.up.Wait()
	if cut := long.cut(); len(cut) > 0 {
		return fmt.Errorf("long-lived connections before the reload: %s", strings.Join(cut, "; "))
	}
	perLong := long.perInstance()
	d.printf("  PIDs before: %s; long-lived connections per instance: %s", pidList(before), countList(perLong))
	d.printf("")

	okStart, failStart := okNow(), failedNow()
	reloadErr := make(chan error, 1)
	start := time.Now()
	go func() {
		out, err := d.box.Systemctl(ctx, "reload", units.Group{Name: group}.SupervisorUnit())
		if err != nil {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		reloadErr <- err
	}()
	d.printf("» systemctl reload %s …", units.Group{Name: group}.SupervisorUnit())
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var rerr error
	// Every instance seen serving from its new process beside its old
	// one draining: the handover.
	overlap := map[int]bool{}
	show := func() {
		now, err := d.slots(ctx, n)
		if err != nil {
			return
		}
		for i, s := range now {
			if s.draining.pid == before[i] && s.serving.pid != 0 && s.serving.pid != before[i] {
				overlap[i] = true
			}
		}
		d.printf("  … %5v  %s  %d requests answered, %d failed", time.Since(start).Round(100*time.Millisecond),
			handoverLine(now), okNow()-okStart, failedNow()-failStart)
	}
wait:
	for {
		select {
		case rerr = <-reloadErr:
			break wait
		case <-tick.C:
			show()
		}
	}
	took := time.Since(start)
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.check(rerr == nil, "systemctl reload %s returned in %v: each instance's new process was ready before its old one was told to stop", units.Group{Name: group}.SupervisorUnit(), seconds(took)) {
		d.printf("")
	} else {
		d.printf("    %v", rerr)
	}
	show()
	// The long-lived connections go on a second more while the old
	// processes drain, then their clients close them.
	for end := time.After(time.Second); ; {
		select {
		case <-end:
		case <-tick.C:
			show()
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		break
	}
	long.stop()
	d.printf("  The long-lived connections' clients close them (%d lines echoed); the old processes finish draining.", long.lines.Load())
	var after map[int]uint32
	drainStart := time.Now()
	err = d.step("waiting for the old processes to drain and exit", time.Second, func() error {
		deadline := time.Now().Add(40 * time.Second)
		for {
			now, err := d.slots(ctx, n)
			if err == nil {
				done := true
				for _, s := range now {
					if s.draining.pid != 0 {
						done = false
					}
				}
				if done {
					after = map[int]uint32{}
					for i, s := range now {
						after[i] = s.serving.pid
					}
					return nil
				}
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("still draining after 40s: %s", handoverLine(now))
			}
			time.Sleep(50 * time.Millisecond) // poll: the state is systemd's
		}
	})
	if err != nil {
		return err
	}
	drained := time.Since(drainStart)
	// Keep asking a little after the reload: the new processes serve.
	for _, l := range []*load{fresh, kept} {
		if err := l.waitServed(ctx, 100, 20*time.Second); err != nil {
			d.fail(fmt.Errorf("load after the reload: %w", err))
		}
	}
	stopLoad()
	total, failed := okNow(), failedNow()
	okDuring, failDuring := okNow()-okStart, failedNow()-failStart

	evs, err := d.waitReloadEvents(ctx, n, start.Add(-time.Second), 10*time.Second)
	if err != nil {
		return err
	}
	d.printf("")
	d.printf("  The handovers (worker.reload events):")
	var cutTotal, drainedTotal int
	var badEvents []string
	for i := 1; i <= n; i++ {
		e, ok := evs[i]
		if !ok {
			badEvents = append(badEvents, fmt.Sprintf("%s@%d: no worker.reload", group, i))
			continue
		}
		f := e.Fields
		dr, cut := atoiOr(f["drained"]), atoiOr(f["cut"])
		d.printf("    %s@%d  PID %s → %s  ready in %s ms  %s connections drained, %s cut  (%s → %s)",
			group, i, f["old_pid"], f["new_pid"], f["ready_ms"], f["drained"], f["cut"], f["old_unit"], f["new_unit"])
		if dr < 0 || cut < 0 {
			badEvents = append(badEvents, fmt.Sprintf("%s@%d: drained %q, cut %q", group, i, f["drained"], f["cut"]))
			continue
		}
		drainedTotal += dr
		cutTotal += cut
	}
	d.printf("  PIDs after:  %s; the drains took %v after the reload returned", pidList(after), seconds(drained))
	d.printf("")
	d.printf("  reload: %d requests during the reload, %d failed", okDuring+failDuring, failDuring)
	d.printf("")
	d.check(failed == 0, "%d failed of %d requests under load (%d during the reload)%s", failed, total+failed, okDuring+failDuring, failureSample(fresh, kept))
	cut := long.cut()
	d.check(len(cut) == 0, "%d cut of %d long-lived connections: each ended when its client closed it%s", len(cut), longConns, listIf(" — cut: ", cut[:min(len(cut), 3)]))
	d.check(len(badEvents) == 0 && cutTotal == 0 && drainedTotal >= longConns,
		"the old processes drained %d connections and cut %d (worker.reload)%s", drainedTotal, cutTotal, listIf(" — ", badEvents))
	var missed []string
	for i := 1; i <= n; i++ {
		if !overlap[i] {
			missed = append(missed, fmt.Sprintf("%s@%d", group, i))
		}
	}
	d.check(len(missed) == 0, "every instance was seen with its new process serving while its old one drained%s", listIf(" — not: ", missed))
	var same []string
	for i := 1; i <= n; i++ {
		if after[i] == before[i] || after[i] == 0 {
			same = append(same, fmt.Sprintf("%s@%d", group, i))
		}
	}
	d.check(len(same) == 0, "every instance runs a new process%s", listIf(" — not: ", same))
	var moved []string
	seen := fresh.instancesOf()
	for a, insts := range kept.instancesOf() {
		seen[a] = append(seen[a], insts...)
	}
	for _, row := range d.rows {
		for _, inst := range seen[row.addr] {
			if inst != row.sameInstance() {
				moved = append(moved, fmt.Sprintf("%s→%s", row.addr, inst))
			}
		}
	}
	sort.Strings(moved)
	d.check(len(moved) == 0, "every client stayed on its instance through the reload%s", listIf(" — moved: ", moved))
	return nil
}

// killScreen kills one instance with SIGKILL while clients keep asking.
func (d *demo) killScreen(ctx context.Context) error {
	// After the reload, the instance may run on either side.
	sl, err := d.slotOf(ctx, victim)
	if err != nil {
		return err
	}
	unit := sl.serving.unit
	if unit == "" {
		unit = units.Group{Name: group}.Instance(victim)
	}
	inst := fmt.Sprintf("%s@%d", group, victim)
	d.title("A worker killed: systemctl kill -s KILL " + unit)
	// Its clients: from the table, or found among more addresses.
	var mine, others []string
	for _, row := range d.rows {
		if row.sameInstance() == inst {
			mine = append(mine, row.addr)
		} else {
			others = append(others, row.addr)
		}
	}
	for i := clients; len(mine) == 0 && i < 250; i++ {
		r, err := get(ctx, newClient(clientAddr(i), false), webURL)
		if err != nil {
			return fmt.Errorf("request from %s: %w", clientAddr(i), err)
		}
		if r.Instance == inst {
			mine = append(mine, clientAddr(i))
		}
	}
	if len(mine) == 0 {
		return fmt.Errorf("no client address reaches %s", inst)
	}
	old, err := d.mainPID(ctx, unit)
	if err != nil {
		return err
	}
	restarts0, _ := d.m.Restarts(ctx, unit)
	d.printf("  %s runs PID %d and serves %s.", inst, old, strings.Join(mine, " "))
	d.printf("  Load: all %d clients keep asking on new connections.", len(mine)+len(others))
	l := startLoad(ctx, webURL, append(append([]string(nil), mine...), others...), false)
	defer l.stop()
	if err := l.waitServed(ctx, 100, 20*time.Second); err != nil {
		return fmt.Errorf("load before the kill: %w", err)
	}
	d.printf("")
	if out, err := d.box.Systemctl(ctx, "kill", "-s", "KILL", unit); err != nil {
		return fmt.Errorf("systemctl kill: %w: %s", err, out)
	}
	var pid uint32
	err = d.step(fmt.Sprintf("waiting for %s to come back (Restart=always)", inst), time.Second, func() error {
		deadline := time.Now().Add(20 * time.Second)
		for {
			p, err := d.mainPID(ctx, unit)
			st, serr := d.m.State(ctx, unit)
			if err == nil && serr == nil && p != 0 && p != old && st.ActiveState == "active" {
				pid = p
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not back with a new process after 20s (MainPID %d, %s)", unit, p, st.ActiveState)
			}
			time.Sleep(10 * time.Millisecond) // poll: the state is systemd's
		}
	})
	if err != nil {
		return err
	}
	if err := l.waitServed(ctx, 200, 20*time.Second); err != nil {
		d.fail(fmt.Errorf("load after the kill: %w", err))
	}
	l.stop()
	restarts, _ := d.m.Restarts(ctx, unit)
	d.printf("  %s: PID %d killed, now PID %d; systemd's NRestarts %v → %v", inst, old, pid, restarts0, restarts)
	d.printf("")
	d.check(pid != old, "%s came back with a new process", inst)

	fails := l.failuresOf()
	var otherFailed, mineFailed int
	for _, a := range others {
		otherFailed += len(fails[a])
	}
	for _, a := range mine {
		mineFailed += len(fails[a])
	}
	d.check(otherFailed == 0, "clients of the other instances: %d failed", otherFailed)
	// A request inside the killed process dies with it: at most one per
	// client of that instance, since each asks one request at a time.
	// Connections handed off while it was down wait in its hand-off
	// socket, which systemd holds, and the new process serves them.
	d.check(mineFailed <= len(mine), "clients of %s: %d failed (at most %d: a request inside the killed process dies with it)%s",
		inst, mineFailed, len(mine), firstOf(fails, mine))
	var wrong []string
	for _, a := range mine {
		r, err := get(ctx, newClient(a, false), webURL)
		if err != nil || r.Instance != inst || r.PID != strconv.Itoa(int(pid)) {
			wrong = append(wrong, fmt.Sprintf("%s: %+v %v", a, r, err))
			continue
		}
		d.printf("    %-10s → instance=%s pid=%s", a, r.Instance, r.PID)
	}
	d.check(len(wrong) == 0, "%s's clients are served by the new %s (PID %d)%s", inst, inst, pid, listIf(" — not: ", wrong))
	return nil
}

// eventsScreen shows what the supervisors wrote to journald.
func (d *demo) eventsScreen(ctx context.Context) error {
	d.title("The events, from journald: powerhouse events")
	// journald receives the entries asynchronously: wait until the
	// last one the screens above caused is there.
	want := func(evs []events.Event) []string {
		var missing []string
		reloaded := map[int]bool{}
		started, killed := 0, false
		for _, e := range evs {
			switch {
			case e.Group != group:
			case e.Type == events.WorkerReload:
				reloaded[e.Instance] = true
			case e.Type == events.WorkerStart:
				started++
			case e.Type == events.WorkerStop && e.Instance == victim && e.Fields["signal"] == "SIGKILL":
				killed = true
			}
		}
		if started < 2*d.web.Amount+1 {
			missing = append(missing, fmt.Sprintf("%d worker.start of %s (want %d: the first start, the reload, the kill)", started, group, 2*d.web.Amount+1))
		}
		if len(reloaded) != d.web.Amount {
			missing = append(missing, fmt.Sprintf("worker.reload of %d of %d instances", len(reloaded), d.web.Amount))
		}
		if !killed {
			missing = append(missing, fmt.Sprintf("worker.stop of %s@%d with signal SIGKILL", group, victim))
		}
		return missing
	}
	var evs []events.Event
	var missing []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		js, err := d.powerhouse(ctx, "events", "--json")
		if err != nil {
			return fmt.Errorf("powerhouse events --json: %w: %s", err, js)
		}
		evs, err = parseEvents(js)
		if err != nil {
			return err
		}
		if missing = want(evs); len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // poll: journald has no "flushed" to wait for
	}
	out, err := d.powerhouse(ctx, "events")
	d.block("powerhouse events", out)
	if err != nil {
		return fmt.Errorf("powerhouse events: %w", err)
	}
	d.printf("")
	count := map[events.Type]int{}
	for _, e := range evs {
		count[e.Type]++
	}
	var summary []string
	for _, t := range events.Types {
		if count[t] > 0 {
			summary = append(summary, fmt.Sprintf("%d %s", count[t], t))
		}
	}
	d.check(len(missing) == 0, "the journal holds every event shown above (%s)%s", strings.Join(summary, ", "), listIf(" — missing: ", missing))
	d.printf("  (the same entries answer: journalctl POWERHOUSE_EVENT=worker.stop POWERHOUSE_GROUP=%s)", group)
	return nil
}

// teardown stops the house and the box, and checks that nothing is left.
func (d *demo) teardown() {
	d.heading("Tear-down")
	if d.box == nil {
		return
	}
	// Its own context: the demo's may have been cancelled by a signal.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := d.step("powerhouse stop", time.Second, func() error {
		out, err := d.powerhouse(ctx, "stop")
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		d.fail(fmt.Errorf("powerhouse stop: %w", err))
	}
	if d.m != nil {
		// The target's stop job ends before its parts have stopped:
		// wait for them, so that the claim below is about the house and
		// not about the power-off.
		var up []string
		deadline := time.Now().Add(20 * time.Second)
		for {
			up = up[:0]
			sts, err := d.m.States(ctx, "powerhouse*")
			for _, st := range sts {
				if st.ActiveState != "inactive" && st.ActiveState != "failed" {
					up = append(up, st.Name+" "+string(st.ActiveState))
				}
			}
			if err != nil {
				up = append(up, err.Error())
			}
			if len(up) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // poll: the states are systemd's
		}
		d.check(len(up) == 0, "the house stopped: no powerhouse unit is active%s", listIf(" — still: ", up))
		d.m.Close()
	}
	err = d.step("powering the box off", time.Second, d.box.Close)
	d.check(err == nil, "the box is gone: no process left in its PID namespace, its cgroups removed%s", errIf(err))
	err = portsFree()
	d.check(err == nil, "the demo's ports (%s) are free again%s", strings.Join(demoPorts, ", "), errIf(err))
}

// finish prints the verdict and returns the exit code.
func (d *demo) finish(began time.Time) int {
	took := seconds(time.Since(began))
	if len(d.failed) == 0 {
		fmt.Fprintf(d.out, "\nPowerHouse demo: every check passed, in %v. Nothing is left running.\n", took)
		return exitOK
	}
	if len(d.failed) == 1 && strings.HasPrefix(d.failed[0], "interrupted") {
		fmt.Fprintf(d.out, "\nPowerHouse demo %s after %v; torn down, nothing is left running.\n", d.failed[0], took)
		return exitFailed
	}
	fmt.Fprintf(d.out, "\nPowerHouse demo FAILED (%v): %d problem(s):\n", took, len(d.failed))
	for _, f := range d.failed {
		fmt.Fprintf(d.out, "  - %s\n", f)
	}
	return exitFailed
}

// powerhouse runs bin/powerhouse inside the box.
func (d *demo) powerhouse(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := d.box.Run(ctx, d.o.Powerhouse, args...)
	return string(out), err
}

func (d *demo) mainPID(ctx context.Context, unit string) (uint32, error) {
	return d.m.MainPID(ctx, unit)
}

// pids returns the main PIDs of the web group's instances 1..n: each
// one's serving side (after a handover reload, side b may serve).
func (d *demo) pids(ctx context.Context, n int) (map[int]uint32, error) {
	ss, err := d.slots(ctx, n)
	if err != nil {
		return nil, err
	}
	m := map[int]uint32{}
	for i, s := range ss {
		m[i] = s.serving.pid
	}
	return m, nil
}

// hasBus tells whether a D-Bus daemon is installed for the box's system
// bus (sdbox.Require checks the same for tests).
func hasBus() bool {
	for _, p := range []string{"/usr/bin/dbus-daemon", "/usr/bin/dbus-broker"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// portsFree checks that the demo house's addresses can be listened on.
func portsFree() error {
	for _, a := range demoPorts {
		l, err := net.Listen("tcp", a)
		if err != nil {
			_, port, _ := net.SplitHostPort(a)
			return fmt.Errorf("port %s is in use (%v)", port, errors.Unwrap(err))
		}
		l.Close()
	}
	return nil
}

func parseEvents(js string) ([]events.Event, error) {
	var evs []events.Event
	sc := bufio.NewScanner(strings.NewReader(js))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var e events.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("powerhouse events --json: %w: %s", err, sc.Text())
		}
		evs = append(evs, e)
	}
	return evs, sc.Err()
}
