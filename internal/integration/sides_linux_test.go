package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/sockettest"
	"github.com/powerhouse/powerhouse/units"
)

// The sides house's ports: not the demo's (no sdbox.Exclusive needed).
// The hand-off group's public socket is never started: the test hands
// connections to its instance itself.
const (
	sidesHandoffPort = 19386
	sidesKernelPort  = 19387
)

// sidesConfig is a hand-off sticky group and a kernel-mode one, both
// reloadable (the default), and a child with reloadable = false.
var sidesConfig = fmt.Sprintf(`title = "sides"

[[worker]]
name   = "web"
exec   = %[1]q
amount = 2
sticky = true
listen = ["127.0.0.1:%[2]d"]

[[worker]]
name     = "kside"
exec     = %[1]q
amount   = 2
sticky   = true
dispatch = "kernel"
listen   = ["127.0.0.1:%[3]d"]

[[worker]]
name       = "once"
type       = "child"
exec       = "/bin/sleep infinity"
amount     = 1
reloadable = false
`, filepath.Join(boxBin, "hello"), sidesHandoffPort, sidesKernelPort)

// TestIntegrationSideUnits installs sidesConfig with the real CLI in a
// real systemd 252 and, with no supervisor involved, drives the two sides
// of instance 1 of each sticky group the way a handover reload will:
//
//   - side A runs; side B starts beside it and both hold the very same
//     socket, the slot's (the hand-off datagram socket, or in kernel mode
//     the instance's own listening socket), passed by systemd with the
//     slot's descriptor name, each told its side in POWERHOUSE_SIDE;
//   - with side A stopped, traffic on the slot's socket is served by side
//     B, and systemd, which sees it (the socket unit goes from listening
//     to running), does not start side A again: it counts side B, which
//     has Sockets= on it, as triggered;
//   - the control: with neither side running, traffic on the socket starts
//     side A, the socket's Service=;
//   - stopping the slot's socket stops both sides (Requires=);
//   - a group with reloadable = false has no side B;
//   - uninstall stops both sides of an instance and removes both
//     templates.
//
// BPF is not needed: no supervisor runs, so kernel mode here is plain
// SO_REUSEPORT among the instances' sockets.
func TestIntegrationSideUnits(t *testing.T) {
	h := bootKernelHouse(t)
	src := h.box.Path("/run/src/sides.toml")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte(sidesConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "/run/src/sides.toml"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if got := h.show(units.Group{Name: "once"}.InstanceSide(1, units.SideB), "LoadState"); got != "not-found" {
		t.Errorf("side B of a group with reloadable = false: LoadState=%s, want not-found", got)
	}

	for _, tc := range []struct {
		name   string
		group  units.Group
		fdName string
		// serve gets one request served through the slot's socket and
		// returns the pid that answered.
		serve func(t *testing.T, h *house, g units.Group) (string, error)
	}{
		{"hand-off", units.Group{Name: "web"}, generator.HandoffFDName, handOff},
		{"kernel", units.Group{Name: "kside"}, units.InstanceFDName(1), dialKernel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.group
			a, b, sock := g.InstanceSide(1, units.SideA), g.InstanceSide(1, units.SideB), g.InstanceSocket(1)
			h.systemctl("start", a)
			h.systemctl("start", b) // Type=notify: returns once it is ready
			pids := map[units.Side]string{}
			var shared map[string]bool
			for _, s := range []units.Side{units.SideA, units.SideB} {
				unit := g.InstanceSide(1, s)
				pid := h.show(unit, "MainPID")
				if st := h.show(unit, "ActiveState"); st != "active" || pid == "0" {
					t.Fatalf("%s is %s (pid %s) with both sides started\n%s", unit, st, pid, h.journal())
				}
				pids[s] = pid
				if fds, names := h.envOf(pid, "LISTEN_FDS"), h.envOf(pid, "LISTEN_FDNAMES"); fds != "1" || names != tc.fdName {
					t.Errorf("%s: LISTEN_FDS=%s LISTEN_FDNAMES=%s, want 1 and %s", unit, fds, names, tc.fdName)
				}
				if got := h.envOf(pid, generator.SideEnv); got != s.String() {
					t.Errorf("%s: %s=%q, want %q", unit, generator.SideEnv, got, s)
				}
				mine := h.socketInodes(pid)
				if shared == nil {
					shared = mine
					continue
				}
				for ino := range shared {
					if !mine[ino] {
						delete(shared, ino)
					}
				}
			}
			// Each process has its own journal stream: what both hold is
			// what systemd passed them both, and systemd holds it too.
			if len(shared) != 1 {
				t.Fatalf("sides A (pid %s) and B (pid %s) share sockets %v, want exactly the slot's", pids[units.SideA], pids[units.SideB], shared)
			}
			for ino := range shared {
				if !h.socketInodes("1")[ino] {
					t.Errorf("the socket both sides hold (%s) is not one systemd holds", ino)
				}
			}

			// Side A stopped: side B serves the slot, and traffic that
			// systemd sees on the socket does not start side A again.
			h.systemctl("stop", a)
			// systemd watches the socket again once side A is gone (a
			// triggered service died), so it sees the traffic below.
			if st, sub := h.show(sock, "ActiveState"), h.show(sock, "SubState"); st != "active" || sub != "listening" {
				t.Fatalf("%s is %s/%s with side A stopped, want active/listening", sock, st, sub)
			}
			// systemd and side B wait on the socket alike: whoever reads
			// first takes the request, so it may take a few for systemd
			// to see one.
			rounds := 0
			waitFor(t, 10*time.Second, sock+" to see traffic (SubState running)", func() bool {
				rounds++
				pid, err := tc.serve(t, h, g)
				if err != nil {
					t.Fatalf("request through %s with side A stopped: %v\n%s", sock, err, h.journal())
				}
				if pid != pids[units.SideB] {
					t.Fatalf("served by pid %s, want side B's %s", pid, pids[units.SideB])
				}
				return h.show(sock, "SubState") == "running"
			})
			t.Logf("systemd saw traffic on %s after %d requests", sock, rounds)
			if st, job := h.show(a, "ActiveState"), h.show(a, "Job"); st != "inactive" || job != "" {
				t.Errorf("side A is %s (job %q) after traffic on its socket while side B runs: systemd started it again", st, job)
			}
			if st := h.show(b, "ActiveState"); st != "active" {
				t.Errorf("side B is %s, want active", st)
			}

			// The control: with neither side running, traffic on the
			// socket starts side A (the socket's Service=), which serves
			// it. Side B running is what kept it from doing so above.
			h.systemctl("stop", b)
			pid, err := tc.serve(t, h, g)
			if err != nil {
				t.Fatalf("request through %s with no side running: %v\n%s", sock, err, h.journal())
			}
			if now := h.show(a, "MainPID"); pid != now || pid == pids[units.SideA] || h.show(a, "ActiveState") != "active" {
				t.Errorf("with no side running, served by pid %s; side A is %s with pid %s (was %s): want side A started by the traffic", pid, h.show(a, "ActiveState"), now, pids[units.SideA])
			}

			// The socket stopped: both sides go with it (Requires=).
			h.systemctl("start", b)
			h.systemctl("stop", sock)
			for _, unit := range []string{a, b} {
				if st := h.show(unit, "ActiveState"); st != "inactive" {
					t.Errorf("%s is %s after %s stopped, want inactive", unit, st, sock)
				}
			}
		})
	}

	// uninstall stops every side of every instance, and removes both
	// templates.
	web := units.Group{Name: "web"}
	for _, s := range []units.Side{units.SideA, units.SideB} {
		h.systemctl("start", web.InstanceSide(2, s))
	}
	if out, err := h.powerhouse("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	for _, s := range []units.Side{units.SideA, units.SideB} {
		if st := h.show(web.InstanceSide(2, s), "ActiveState"); st != "inactive" {
			t.Errorf("%s is %s after uninstall", web.InstanceSide(2, s), st)
		}
		if _, err := os.Stat(h.box.Path("/etc/systemd/system/" + web.WorkerTemplateSide(s))); !os.IsNotExist(err) {
			t.Errorf("%s after uninstall: %v, want it gone", web.WorkerTemplateSide(s), err)
		}
	}
}

// socketInodes returns the inodes of the sockets process pid holds.
func (h *house) socketInodes(pid string) map[string]bool {
	h.t.Helper()
	out, err := h.run("find", "/proc/"+pid+"/fd", "-lname", "socket:*", "-printf", "%l\n")
	if err != nil {
		h.t.Fatalf("sockets of pid %s: %v\n%s", pid, err, out)
	}
	m := map[string]bool{}
	for _, l := range strings.Fields(out) {
		m[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
	}
	return m
}

var helloPID = regexp.MustCompile(`pid=(\d+) `)

// askHello sends one request on c, a connection to examples/hello, and
// returns the pid that answered.
func askHello(c net.Conn) (string, error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second)) // the control step starts side A first
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: sides\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		return "", err
	}
	m := helloPID.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("no pid in the answer %q", b)
	}
	return string(m[1]), nil
}

// handOff hands a loopback connection to instance 1 of g over its
// hand-off socket, as the supervisor does (the test runs as root, the
// supervisor's uid), and asks hello on it.
func handOff(t *testing.T, h *house, g units.Group) (string, error) {
	client, server := sockettest.TCPPair(t)
	uc, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: h.box.Path(g.HandoffPath(1)), Net: "unixgram"})
	if err != nil {
		return "", err
	}
	defer uc.Close()
	err = handoff.Send(sockettest.RawFD(t, uc), "", &handoff.Header{Name: fmt.Sprintf("127.0.0.1:%d", sidesHandoffPort)}, sockettest.RawFD(t, server))
	server.Close()
	if err != nil {
		return "", err
	}
	return askHello(client)
}

// dialKernel connects to the kernel-mode group's address, where instance
// 1's socket is the only listener, and asks hello on it.
func dialKernel(t *testing.T, h *house, g units.Group) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", sidesKernelPort))
	if err != nil {
		return "", err
	}
	return askHello(c)
}

// TestIntegrationInstallAppliesWorkerChange: install --now of a changed
// worker template on a running house has the group's supervisor reload
// it (applyGroup asks the supervisor, which knows which side of each
// instance serves, rather than restarting side A): every instance runs a
// new process started from the new unit, one side per instance, and the
// group serves. It guards that path: the reload it asks for is, on this
// branch, still the supervisor's rolling restart of side A.
func TestIntegrationInstallAppliesWorkerChange(t *testing.T) {
	h := bootKernelHouse(t)
	src := h.box.Path("/run/src/sides.toml")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("[[worker]]\nname = \"web\"\nexec = %q\namount = 2\nsticky = true\nlisten = [\"127.0.0.1:%d\"]\n", filepath.Join(boxBin, "hello"), sidesHandoffPort)
	install := func(cfg string) string {
		t.Helper()
		if err := os.WriteFile(src, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := h.powerhouse("install", "--now", "/run/src/sides.toml")
		if err != nil {
			t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
		}
		return out
	}
	install(cfg)
	g := units.Group{Name: "web"}
	before := map[int]string{}
	for n := 1; n <= 2; n++ {
		before[n] = h.show(g.InstanceSide(n, units.SideA), "MainPID")
	}
	t.Logf("%s", install(cfg+"[worker.service]\nenvironment = { CHANGED = \"yes\" }\n"))
	for n := 1; n <= 2; n++ {
		a, b := g.InstanceSide(n, units.SideA), g.InstanceSide(n, units.SideB)
		serving := a
		if h.show(b, "ActiveState") == "active" {
			serving = b
			if st := h.show(a, "ActiveState"); st != "inactive" {
				t.Errorf("instance %d runs on both sides (%s is %s)", n, a, st)
			}
		}
		pid := h.show(serving, "MainPID")
		if pid == before[n] || pid == "0" || h.envOf(pid, "CHANGED") != "yes" {
			t.Errorf("instance %d after the change: %s pid %s (was %s), CHANGED=%q: want a new process from the new unit", n, serving, pid, before[n], h.envOf(pid, "CHANGED"))
		}
	}
	if r, err := get(client("127.0.0.2"), fmt.Sprintf("http://127.0.0.1:%d/", sidesHandoffPort)); err != nil || !strings.HasPrefix(r.Instance, "web@") {
		t.Errorf("web after the change: %v %+v", err, r)
	}
}
