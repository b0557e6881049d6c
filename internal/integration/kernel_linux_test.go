package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/sticky"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// kernelConfig is a kernel-mode house: 4 examples/hello instances, each
// with a socket of its own on 127.0.0.1:9999, steered by the eBPF
// program.
func kernelConfig() string {
	return `title = "kernel steering"
[[worker]]
name   = "web"
exec   = "` + filepath.Join(boxBin, "hello") + `"
amount = 4
sticky = true
dispatch = "kernel"
reload_signal = "SIGHUP"
listen = ["127.0.0.1:9999"]
`
}

// newKernelHouse is newHouse, with the supervisor's journal in the log of
// a test that fails.
func newKernelHouse(t *testing.T, cfg string) *house {
	h := newHouse(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := h.run("journalctl", "--no-pager", "-o", "short-monotonic", "-u", "powerhouse@web.service", "-n", "80")
			t.Logf("the supervisor's journal:\n%s", out)
		}
	})
	return h
}

// kernelStatus is `powerhouse status --json web`.
func (h *house) kernelStatus(t *testing.T) supervisor.GroupStatus {
	t.Helper()
	out, err := h.powerhouse("status", "--json", "web")
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	var gs []supervisor.GroupStatus
	if err := json.Unmarshal([]byte(out), &gs); err != nil || len(gs) != 1 {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return gs[0]
}

// listenersOn counts the listening TCP sockets on port (the box shares
// the host's network namespace): each socket once, however many
// processes hold a descriptor of it.
func (h *house) listenersOn(t *testing.T, port int) int {
	t.Helper()
	out, err := h.run("ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
	if err != nil {
		t.Fatalf("ss: %v %s", err, out)
	}
	return strings.Count(out, "LISTEN")
}

// cpuTicks is the CPU time (user + system, in clock ticks) of a process
// of the box, from its /proc/PID/stat.
func (h *house) cpuTicks(t *testing.T, pid string) int64 {
	t.Helper()
	out, err := h.run("cat", "/proc/"+pid+"/stat")
	if err != nil {
		t.Fatalf("stat of %s: %v %s", pid, err, out)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(out[strings.LastIndexByte(out, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// TestIntegrationKernel runs a kernel-mode house in a real systemd: the
// eBPF program steers each client to its instance, the same one hand-off
// mode would pick, through instance crashes and stops and a supervisor
// crash, with the supervisor out of the data path.
func TestIntegrationKernel(t *testing.T) {
	h := newKernelHouse(t, kernelConfig())
	h.systemctl("start", "powerhouse.target")
	if got := h.show("powerhouse@web.service", "ActiveState"); got != "active" {
		t.Fatalf("supervisor: %s\n%s", got, h.journal())
	}
	waitFor(t, 20*time.Second, "4 instances in the table", func() bool {
		gs := h.kernelStatus(t)
		return gs.Kernel != nil && len(gs.Kernel.InTable) == 4
	})
	gs := h.kernelStatus(t)
	if gs.DispatchMode != "kernel" || gs.Kernel.Steering != "sticky" || gs.Kernel.Adopted || len(gs.Kernel.ProgramIDs) != 1 {
		t.Fatalf("status: mode %q, kernel %+v\n%s", gs.DispatchMode, gs.Kernel, h.journal())
	}
	progID := gs.Kernel.ProgramIDs[0]

	t.Run("every address always reaches the same instance, the one hand-off mode picks", func(t *testing.T) {
		set := sticky.NewSet(1, 2, 3, 4)
		for a, inst := range stickyRounds(t) {
			// Hand-off mode's dispatcher sends a client to Pick's
			// instance: the same mapping in both modes.
			n, _ := set.Pick(netip.MustParseAddr(a))
			if want := fmt.Sprintf("web@%d", n); inst != want {
				t.Errorf("%s reached %s; hand-off mode sends it to %s", a, inst, want)
			}
		}
	})

	t.Run("status shows the mode and each instance's share", func(t *testing.T) {
		gs := h.kernelStatus(t)
		total := 0
		for _, in := range gs.Instances {
			total += in.Buckets
			// 4,096 buckets over 4: 1,024 each, within a few percent
			// (binomial, sd 27).
			if in.Buckets < 900 || in.Buckets > 1150 || !in.InDispatch {
				t.Errorf("instance %d: %d buckets, in dispatch %v", in.Instance, in.Buckets, in.InDispatch)
			}
		}
		if total != gs.Kernel.Buckets || total != sticky.Buckets {
			t.Errorf("buckets add up to %d of %d", total, gs.Kernel.Buckets)
		}
		out, err := h.powerhouse("status", "web")
		if err != nil || !strings.Contains(out, "kernel steering: 4096 buckets over 4 instances") || !strings.Contains(out, "BUCKETS") {
			t.Errorf("status: %v\n%s", err, out)
		}
		if st := h.show("powerhouse@web.service", "StatusText"); !strings.Contains(st, "kernel steering over 4 instances") {
			t.Errorf("STATUS=%s", st)
		}
		t.Logf("%s", out)
	})

	t.Run("the supervisor spends no CPU per connection", func(t *testing.T) {
		pid := h.show("powerhouse@web.service", "MainPID")
		var addrs []string
		for i := 0; i < 8; i++ {
			addrs = append(addrs, clientAddr(i))
		}
		before := h.cpuTicks(t, pid)
		start := time.Now()
		s := startStream(addrs)
		s.waitServed(t, 3000)
		s.finish()
		d := time.Since(start)
		ticks := h.cpuTicks(t, pid) - before
		// /proc counts CPU time in clock ticks of 10 ms. A supervisor in
		// the data path (hand-off mode: 27 to 51 µs per connection)
		// would spend 8 to 15 ticks on 3,000 connections; this one only
		// wakes for its once-a-second STATUS=, a tick now and then.
		perConn := float64(ticks) * 10000 / float64(s.ok.Load())
		t.Logf("%d connections in %v; supervisor %d ticks: at most %.2f µs per connection", s.ok.Load(), d.Round(time.Millisecond), ticks, perConn)
		if ticks > 2 {
			t.Errorf("supervisor spent %d ticks (%.2f µs per connection): it should be out of the data path", ticks, perConn)
		}
	})

	t.Run("SIGKILL of an instance refuses no connection", func(t *testing.T) {
		// The socket is systemd's: connections queue in it while the
		// instance restarts. At most the request inside the killed
		// process fails, and only for web@2's clients; none is refused.
		before, s := killWeb2UnderStream(t, h, true)
		// web@2's clients were served by its successor, and by no other
		// instance.
		newPID := h.show("powerhouse-web@2.service", "MainPID")
		if !s.pids["web@2"][newPID] {
			t.Errorf("web@2's successor (pid %s) served nothing: %v", newPID, s.pids["web@2"])
		}
		for a, seen := range s.seen {
			if len(seen) != 1 || !seen[before[a]] {
				t.Errorf("%s (of %s) was served by %v", a, before[a], seen)
			}
		}
		t.Logf("served %d, failed %d (inside the killed process)", s.ok.Load(), s.failed.Load())
	})

	t.Run("stopping an instance moves only its clients", func(t *testing.T) {
		before, after := stopWeb2(t, h)
		set := sticky.NewSet(1, 3, 4)
		for a := range before {
			if n, _ := set.Pick(netip.MustParseAddr(a)); after[a] != fmt.Sprintf("web@%d", n) {
				t.Errorf("%s went to %s; hand-off mode sends it to web@%d", a, after[a], n)
			}
		}
		if st := h.show("powerhouse-web@2.socket", "ActiveState"); st != "inactive" {
			t.Errorf("web@2's socket is %s: a connection steered to it would start it again", st)
		}
		// The supervisor closed its copy of web@2's socket: the group
		// has three listeners left, none that nobody accepts on.
		waitFor(t, 5*time.Second, "3 listeners on 127.0.0.1:9999", func() bool { return h.listenersOn(t, 9999) == 3 })

		// Started again, web@2 has a new socket, which the supervisor
		// did not get at its start: it restarts to take it (it is not
		// in the data path), adopts its program, and web@2's clients
		// come back.
		sup := h.show("powerhouse@web.service", "MainPID")
		h.systemctl("start", "powerhouse-web@2.service")
		waitFor(t, 20*time.Second, "web@2's clients to come back", func() bool {
			m := stickyMap(t, webClients)
			for a, inst := range before {
				if m[a] != inst {
					return false
				}
			}
			return true
		})
		if got := h.show("powerhouse@web.service", "MainPID"); got == sup {
			t.Errorf("the supervisor did not restart to take the new socket")
		}
		gs := h.kernelStatus(t)
		if !gs.Kernel.Adopted || len(gs.Kernel.ProgramIDs) != 1 || gs.Kernel.ProgramIDs[0] != progID {
			t.Errorf("after the restart: kernel %+v, want program %d adopted", gs.Kernel, progID)
		}
	})

	t.Run("a restarted socket unit: the supervisor drops its stale copy and takes the new socket", func(t *testing.T) {
		before := stickyMap(t, webClients)
		sup := h.show("powerhouse@web.service", "MainPID")
		h.systemctl("restart", "powerhouse-web@3.socket")
		// systemd made a new socket (and restarted web@3 with it): the
		// supervisor's copy of the old one would stay in the group, in
		// web@3's slot, with nobody accepting on it.
		waitFor(t, 20*time.Second, "web@3's clients served again, by 4 listeners", func() bool {
			if h.listenersOn(t, 9999) != 4 || h.show("powerhouse@web.service", "MainPID") == sup {
				return false
			}
			m := stickyMap(t, webClients)
			for a, inst := range before {
				if m[a] != inst {
					return false
				}
			}
			return true
		})
	})

	t.Run("scale up and down: the supervisor takes the new sockets", func(t *testing.T) {
		before := stickyMap(t, webClients)
		if out, err := h.powerhouse("scale", "web", "5"); err != nil {
			t.Fatalf("scale 5: %v\n%s", err, out)
		}
		// web@5's socket is new: the supervisor restarts to take it,
		// and then the clients rendezvous hashing gives web@5 go there,
		// and only they move.
		set := sticky.NewSet(1, 2, 3, 4, 5)
		var after map[string]string
		waitFor(t, 20*time.Second, "web@5 in the table", func() bool {
			gs := h.kernelStatus(t)
			return gs.Kernel != nil && len(gs.Kernel.InTable) == 5
		})
		after = stickyMap(t, webClients)
		moved := 0
		for a, inst := range before {
			n, _ := set.Pick(netip.MustParseAddr(a))
			if want := fmt.Sprintf("web@%d", n); after[a] != want {
				t.Errorf("%s reached %s after the scale-up; hand-off mode sends it to %s", a, after[a], want)
			}
			if after[a] != inst {
				moved++
				if after[a] != "web@5" {
					t.Errorf("%s moved from %s to %s, not to the new instance", a, inst, after[a])
				}
			}
		}
		if moved == 0 {
			t.Errorf("no client went to web@5")
		}
		gs := h.kernelStatus(t)
		if len(gs.Kernel.ProgramIDs) != 1 || gs.Kernel.ProgramIDs[0] != progID {
			t.Errorf("program %v after the scale-up, want %d", gs.Kernel.ProgramIDs, progID)
		}
		if out, err := h.powerhouse("scale", "web", "4"); err != nil {
			t.Fatalf("scale 4: %v\n%s", err, out)
		}
		back := stickyMap(t, webClients)
		for a, inst := range before {
			if back[a] != inst {
				t.Errorf("%s reached %s after the scale-down, %s before the scale-up", a, back[a], inst)
			}
		}
		t.Logf("%d of %d clients moved to web@5 and back", moved, len(before))
	})

	t.Run("SIGKILL of the supervisor: traffic flows, the program is adopted", func(t *testing.T) {
		before := stickyMap(t, webClients)
		pids := map[int]string{}
		for n := 1; n <= 4; n++ {
			pids[n] = h.show(units.Group{Name: "web"}.Instance(n), "MainPID")
		}
		oldSup := h.show("powerhouse@web.service", "MainPID")
		var addrs []string
		for i := 0; i < 16; i++ {
			addrs = append(addrs, clientAddr(i))
		}
		s := startStream(addrs)
		s.waitServed(t, 200)
		h.systemctl("kill", "-s", "KILL", "powerhouse@web.service")
		// While no supervisor runs (RestartSec=), connections are
		// served all the same.
		atKill := s.ok.Load()
		waitFor(t, 20*time.Second, "a new supervisor", func() bool {
			p := h.show("powerhouse@web.service", "MainPID")
			return p != "0" && p != oldSup && h.show("powerhouse@web.service", "ActiveState") == "active"
		})
		servedMeanwhile := s.ok.Load() - atKill
		s.waitServed(t, 200)
		s.finish()
		if s.failed.Load() != 0 {
			t.Errorf("%d connections failed across the supervisor crash: %v", s.failed.Load(), s.failures)
		}
		if servedMeanwhile == 0 {
			t.Errorf("nothing served while the supervisor was down")
		}
		for a, seen := range s.seen {
			if len(seen) != 1 || !seen[before[a]] {
				t.Errorf("%s (of %s) was served by %v across the supervisor crash", a, before[a], seen)
			}
		}
		for n, p := range pids {
			if got := h.show(units.Group{Name: "web"}.Instance(n), "MainPID"); got != p {
				t.Errorf("web@%d: PID %s, was %s before the supervisor crash", n, got, p)
			}
		}
		gs := h.kernelStatus(t)
		if !gs.Kernel.Adopted || len(gs.Kernel.ProgramIDs) != 1 || gs.Kernel.ProgramIDs[0] != progID || len(gs.Kernel.InTable) != 4 {
			t.Errorf("after the crash: kernel %+v, want program %d adopted over 4 instances", gs.Kernel, progID)
		}
		t.Logf("served %d across the supervisor crash, %d while it was down", s.ok.Load(), servedMeanwhile)
	})

	t.Run("hand-off mode sends each source where kernel mode did", func(t *testing.T) {
		kernel := stickyMap(t, webClients)
		// The same group in hand-off mode, in the same box: the
		// supervisor accepts and hands each connection off by
		// sticky.Set.Pick, with no eBPF program anywhere.
		// powerhouse stop waits for every unit of the house: the
		// target's own stop job ends first.
		if out, err := h.powerhouse("stop"); err != nil {
			t.Fatalf("powerhouse stop: %v\n%s", err, out)
		}
		if err := os.Remove(h.box.Path("/etc/systemd/system/" + units.Group{Name: "web"}.KernelDropIn())); err != nil {
			t.Fatal(err)
		}
		cfg := strings.Replace(kernelConfig(), "dispatch = \"kernel\"\n", "", 1)
		if err := os.WriteFile(filepath.Join(h.cfgDir, "powerhouse.toml"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		h.install()
		h.systemctl("start", "powerhouse.target")
		if gs := h.kernelStatus(t); gs.DispatchMode != "handoff" || gs.Kernel != nil {
			t.Fatalf("after the switch: mode %q, kernel %+v", gs.DispatchMode, gs.Kernel)
		}
		handoff := stickyMap(t, webClients)
		for a, inst := range kernel {
			if handoff[a] != inst {
				t.Errorf("%s: %s in kernel mode, %s in hand-off mode", a, inst, handoff[a])
			}
		}
		if gs := h.kernelStatus(t); gs.Dispatch == nil || gs.Dispatch.HandedOff < webClients {
			t.Errorf("the supervisor handed off %+v connections, want the %d just made", gs.Dispatch, webClients)
		}
	})
}

// TestIntegrationKernelFallback: a supervisor that cannot load the program
// (its capabilities taken by a drop-in) leaves the group served by plain
// SO_REUSEPORT, and says it is degraded and why: in STATUS=, in status,
// and in one journal line.
func TestIntegrationKernelFallback(t *testing.T) {
	h := newKernelHouse(t, kernelConfig())
	dropIn := "/etc/systemd/system/powerhouse@web.service.d/zz-no-bpf.conf"
	if err := os.MkdirAll(h.box.Path(filepath.Dir(dropIn)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.box.WriteFile(dropIn, []byte("[Service]\nCapabilityBoundingSet=\nAmbientCapabilities=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", "powerhouse.target")
	if got := h.show("powerhouse@web.service", "ActiveState"); got != "active" {
		t.Fatalf("supervisor: %s\n%s", got, h.journal())
	}
	// Every client is served, by some instance.
	per := map[string]int{}
	for round := 0; round < 3; round++ {
		for a, inst := range stickyMap(t, webClients) {
			per[inst]++
			_ = a
		}
	}
	if len(per) < 2 {
		t.Errorf("clients reached %v: plain SO_REUSEPORT spreads them", per)
	}
	gs := h.kernelStatus(t)
	if gs.Kernel == nil || gs.Kernel.Steering != "degraded" || !strings.Contains(gs.Kernel.Degraded, "operation not permitted") {
		t.Errorf("status kernel %+v", gs.Kernel)
	}
	if st := h.show("powerhouse@web.service", "StatusText"); !strings.Contains(st, "degraded: kernel steering off") || !strings.Contains(st, "not sticky") {
		t.Errorf("STATUS=%s", st)
	}
	out, err := h.powerhouse("status", "web")
	if err != nil || !strings.Contains(out, "DEGRADED, plain SO_REUSEPORT") {
		t.Errorf("status: %v\n%s", err, out)
	}
	j, _ := h.run("journalctl", "--no-pager", "-o", "cat", "-u", "powerhouse@web.service")
	if c := strings.Count(j, "kernel steering unavailable"); c != 1 || strings.Contains(j, "not detached") {
		t.Errorf("%d journal lines say why, want 1, and nothing else goes wrong:\n%s", c, j)
	}
	t.Logf("clients per instance over 3 rounds: %v\n%s", per, out)
}
