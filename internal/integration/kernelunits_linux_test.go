package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// kernelPort is the kernel-mode house's port: not one of the demo's, so
// the test takes no port lock (sdbox.Exclusive).
const kernelPort = 19391

// kernelGroup is the kernel-mode group's name.
const kernelGroup = "kweb"

// kernelHouseConfig is a kernel-mode group of four examples/hello.
var kernelHouseConfig = fmt.Sprintf(`title = "kernel units"

[[worker]]
name     = %q
exec     = %q
amount   = 4
sticky   = true
dispatch = "kernel"
listen   = ["127.0.0.1:%d"]
`, kernelGroup, filepath.Join(boxBin, "hello"), kernelPort)

// supervisorStandIn replaces the group's supervisor process, and only
// that, with one that holds what systemd passed it (sleep inherits the
// descriptors and the environment): the real supervisor does nothing
// kernel-specific yet and would accept on its copies of the instances'
// sockets to hand connections off. Everything else of the unit (the
// generated template and kernel-mode drop-in) is as installed.
const supervisorStandIn = `[Service]
Type=exec
WatchdogSec=0
ExecStart=
ExecStart=/bin/sleep infinity
ExecReload=
`

// TestIntegrationKernelUnits installs a kernel-mode group of four hello
// instances with the real CLI in a real systemd 252 and checks the units
// the supervisor will build on:
//
//   - install ships the sysctl.d file (in the box's /etc) and the
//     supervisor's drop-in;
//   - each instance has a listening socket of its own on the address: ss
//     shows four sockets in the SO_REUSEPORT group, each held by systemd,
//     its instance and the supervisor;
//   - connections are served, spread by plain SO_REUSEPORT;
//   - the supervisor got every instance's socket, named instance-N in
//     LISTEN_FDNAMES, each the very socket (inode) instance N got;
//   - an instance killed with SIGKILL is restarted on the same socket;
//   - an instance stopped with systemctl is not activated again by a
//     connection that lands on its socket while the supervisor runs;
//     stopping its socket then closes systemd's copy, and the supervisor's
//     copy keeps it in the group until the supervisor closes it.
func TestIntegrationKernelUnits(t *testing.T) {
	h, g := installKernelHouse(t, supervisorStandIn)
	if b, err := os.ReadFile(h.box.Path(units.SysctlFile)); err != nil || !strings.Contains(string(b), "net.ipv4.tcp_migrate_req = 1") {
		t.Errorf("%s in the box: %v %q", units.SysctlFile, err, b)
	}
	sup := h.show(g.SupervisorUnit(), "MainPID")
	// systemd logs settings it cannot use while loading units
	// (FileDescriptorName= with a character it refuses, say).
	if j := h.journal(); strings.Contains(j, "Unknown key") || strings.Contains(j, "bad-setting") ||
		strings.Contains(j, "Failed to parse") || strings.Contains(j, "Ignoring") || strings.Contains(j, "Invalid") {
		t.Errorf("systemd complained while loading the kernel-mode units:\n%s", j)
	}

	// Four listening sockets on the address, one per instance, each held
	// by the supervisor too.
	listeners := h.listeners()
	if len(listeners) != 4 {
		t.Fatalf("%d listening sockets on port %d, want 4 (one per instance):\n%v", len(listeners), kernelPort, listeners)
	}
	for ino, users := range listeners {
		if !strings.Contains(users, "pid="+sup+",") || !strings.Contains(users, `"hello"`) || !strings.Contains(users, `"systemd"`) {
			t.Errorf("socket ino %s is held by %s; want systemd, an instance and the supervisor (pid %s)", ino, users, sup)
		}
	}

	// Served, by more than one instance (plain SO_REUSEPORT: the kernel
	// hashes each connection's addresses and ports).
	seen := map[string]bool{}
	url := fmt.Sprintf("http://127.0.0.1:%d/", kernelPort)
	for i := 0; i < 40; i++ {
		r, err := get(client(fmt.Sprintf("127.0.0.%d", 2+i%20)), url)
		if err != nil {
			t.Fatalf("request %d: %v\n%s", i, err, h.journal())
		}
		seen[r.Instance] = true
	}
	if len(seen) < 2 {
		t.Errorf("40 connections all went to %v", seen)
	}

	// The supervisor's descriptors: LISTEN_FDNAMES names each after its
	// instance, and each is the socket that instance got as its fd 3.
	names := h.envOf(sup, "LISTEN_FDNAMES")
	fds := strings.Split(names, ":")
	if h.envOf(sup, "LISTEN_FDS") != "4" || len(fds) != 4 {
		t.Fatalf("supervisor LISTEN_FDS=%s LISTEN_FDNAMES=%s, want 4 instance sockets", h.envOf(sup, "LISTEN_FDS"), names)
	}
	got := map[int]bool{}
	for i, name := range fds {
		n, ok := units.InstanceOfFDName(name)
		if !ok {
			t.Fatalf("supervisor fd %d is named %q, not instance-N", 3+i, name)
		}
		got[n] = true
		worker := h.show(g.Instance(n), "MainPID")
		if s, w := h.fdInode(sup, 3+i), h.listenerOf(worker); s == "" || s != w {
			t.Errorf("supervisor fd %d (%s) is socket %q, instance %d listens on %q: want the same socket", 3+i, name, s, n, w)
		}
		if h.envOf(worker, "LISTEN_FDNAMES") != name {
			t.Errorf("instance %d: LISTEN_FDNAMES=%q, want %q", n, h.envOf(worker, "LISTEN_FDNAMES"), name)
		}
	}
	if len(got) != 4 {
		t.Errorf("supervisor got the sockets of instances %v, want 1-4", got)
	}

	// SIGKILL: restarted on the socket it had (its queue kept).
	before := h.listenerOf(h.show(g.Instance(2), "MainPID"))
	h.systemctl("kill", "--signal=SIGKILL", "--kill-whom=main", g.Instance(2))
	waitFor(t, 20*time.Second, "instance 2 restarted", func() bool {
		return h.show(g.Instance(2), "NRestarts") == "1" && h.show(g.Instance(2), "ActiveState") == "active"
	})
	if after := h.listenerOf(h.show(g.Instance(2), "MainPID")); after != before || after == "" {
		t.Errorf("instance 2 restarted on socket %s, had %s: its socket was re-created", after, before)
	}

	// Stopped: connections that land on its socket do not start it again
	// while the supervisor runs (the socket triggers the supervisor too).
	h.systemctl("stop", g.Instance(4))
	sock4 := ""
	for ino, users := range h.listeners() {
		if !strings.Contains(users, `"hello"`) {
			sock4 = ino
		}
	}
	for i := 0; i < 40; i++ {
		if c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", 2+i))}}).Dial("tcp", fmt.Sprintf("127.0.0.1:%d", kernelPort)); err == nil {
			c.Close()
		}
	}
	if st := h.show(g.Instance(4), "ActiveState"); st != "inactive" {
		t.Errorf("instance 4 is %s after connections to its socket, want inactive", st)
	}
	// Its socket stopped (what the supervisor does after the instance):
	// systemd's copy is closed; the supervisor's keeps it in the group.
	h.systemctl("stop", g.InstanceSocket(4))
	ls := h.listeners()
	if users, ok := ls[sock4]; sock4 == "" || !ok || strings.Contains(users, `"systemd"`) || !strings.Contains(users, "pid="+sup+",") {
		t.Errorf("socket %q of stopped instance 4 after stopping its unit: held by %q, want the supervisor alone:\n%v", sock4, users, ls)
	}
	// Once the supervisor is gone, so is the socket.
	h.systemctl("stop", g.SupervisorUnit())
	if ls := h.listeners(); len(ls) != 3 {
		t.Errorf("%d listening sockets with instance 4 and the supervisor stopped, want 3:\n%v", len(ls), ls)
	}
}

// installKernelHouse boots a box, installs kernelHouseConfig with the
// real CLI, replaces the supervisor's ExecStart= with standIn (a drop-in
// that sorts after the generated one), starts the house and instances 1
// to 4, as the supervisor would.
func installKernelHouse(t *testing.T, standIn string) (*house, units.Group) {
	t.Helper()
	h := bootKernelHouse(t)
	src := h.box.Path("/run/src/kernel.toml")
	os.MkdirAll(filepath.Dir(src), 0o755)
	if err := os.WriteFile(src, []byte(kernelHouseConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := h.powerhouse("install", "/run/src/kernel.toml")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	g := units.Group{Name: kernelGroup}
	dropIns := h.box.Path("/etc/systemd/system/" + g.SupervisorUnit() + ".d")
	if err := os.WriteFile(filepath.Join(dropIns, "90-test-standin.conf"), []byte(standIn), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", units.Target)
	for n := 1; n <= 4; n++ {
		h.systemctl("start", g.Instance(n))
	}
	return h, g
}

// TestIntegrationKernelSupervisorUnit: the generated supervisor unit
// with its kernel-mode drop-in lets the supervisor steer, and nothing it
// lacks stops it. The test binary runs as the supervisor (only ExecStart=
// replaced; bpfProbe) and, with the instance sockets systemd passed it,
// creates a REUSEPORT_SOCKARRAY, fills it by descriptor name, loads and
// attaches an sk_reuseport program that picks instance 1's socket: every
// connection, from any source, is then served by instance 1.
func TestIntegrationKernelSupervisorUnit(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err == nil {
		err = os.WriteFile(filepath.Join(bin, "bpf-probe"), data, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	h, g := installKernelHouse(t, "[Service]\nType=exec\nWatchdogSec=0\nExecReload=\nExecStart=\nExecStart="+filepath.Join(boxBin, "bpf-probe")+"\nEnvironment="+bpfProbeEnv+"="+kernelGroup+"\n")
	var res []byte
	waitFor(t, 20*time.Second, "the probe's result", func() bool {
		res, err = os.ReadFile(h.box.Path(bpfProbeResult(g.Name)))
		return err == nil
	})
	if string(res) != "ok" {
		t.Fatalf("the supervisor unit could not steer: %s", res)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", kernelPort)
	for i := 0; i < 20; i++ {
		r, err := get(client(fmt.Sprintf("127.0.0.%d", 2+i)), url)
		if err != nil {
			t.Fatalf("request %d: %v\n%s", i, err, h.journal())
		}
		if r.Instance != "kweb@1" {
			t.Errorf("request %d from 127.0.0.%d served by %s, want kweb@1 (the program picks slot 0)", i, 2+i, r.Instance)
		}
	}
}

// bootKernelHouse is bootHouse without the demo's port lock.
func bootKernelHouse(t *testing.T) *house {
	t.Helper()
	sdbox.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	b, err := sdbox.Boot(ctx, t, sdbox.Options{
		Name:     "powerhouse-test",
		Sysusers: units.Sysusers,
		Binds: []sdbox.Bind{
			{Source: dir, Target: "/etc/powerhouse", Writable: true},
			{Source: bin, Target: boxBin},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &house{t: t, box: b, cfgDir: dir}
}

var ssLine = regexp.MustCompile(`users:\((.*)\).* ino:(\d+)`)

// listeners returns the listening sockets on kernelPort by inode, with
// the processes that hold each (ss -p).
func (h *house) listeners() map[string]string {
	h.t.Helper()
	out, err := h.run("ss", "-Hltnpe", "sport = :"+strconv.Itoa(kernelPort))
	if err != nil {
		h.t.Fatalf("ss: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if s := ssLine.FindStringSubmatch(l); s != nil {
			m[s[2]] = s[1]
		}
	}
	return m
}

// envOf returns a variable of process pid's environment.
func (h *house) envOf(pid, name string) string {
	h.t.Helper()
	out, err := h.run("cat", "/proc/"+pid+"/environ")
	if err != nil {
		h.t.Fatalf("environ of %s: %v", pid, err)
	}
	for _, kv := range strings.Split(out, "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// listenerOf returns the inode of the one listening socket on kernelPort
// that process pid holds, or "". (The activation library moves the
// descriptors it inherits: fd 3 is no longer the socket.)
func (h *house) listenerOf(pid string) string {
	h.t.Helper()
	found := ""
	for ino, users := range h.listeners() {
		if strings.Contains(users, "pid="+pid+",") {
			if found != "" {
				h.t.Errorf("process %s holds two listening sockets, %s and %s", pid, found, ino)
			}
			found = ino
		}
	}
	return found
}

// fdInode returns the socket inode of descriptor fd of process pid, or "".
func (h *house) fdInode(pid string, fd int) string {
	out, _ := h.run("readlink", fmt.Sprintf("/proc/%s/fd/%d", pid, fd))
	ino, _ := strings.CutPrefix(strings.TrimSpace(out), "socket:[")
	return strings.TrimSuffix(ino, "]")
}

// TestIntegrationKernelModeSwitch: install --now of a configuration that
// switches a running sticky group from hand-off to kernel mode replaces
// its instances' hand-off sockets with listening ones (a restart of the
// services alone would keep the datagram sockets running).
func TestIntegrationKernelModeSwitch(t *testing.T) {
	handoff := strings.Replace(kernelHouseConfig, "dispatch = \"kernel\"\n", "", 1)
	h := bootKernelHouse(t)
	src := h.box.Path("/run/src/kernel.toml")
	os.MkdirAll(filepath.Dir(src), 0o755)
	if err := os.WriteFile(src, []byte(handoff), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "/run/src/kernel.toml"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	g := units.Group{Name: kernelGroup}
	dropIns := h.box.Path("/etc/systemd/system/" + g.SupervisorUnit() + ".d")
	os.MkdirAll(dropIns, 0o755)
	if err := os.WriteFile(filepath.Join(dropIns, "90-test-standin.conf"), []byte(supervisorStandIn), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", units.Target)
	for n := 1; n <= 4; n++ {
		h.systemctl("start", g.Instance(n))
	}
	if got := h.show(g.InstanceSocket(1), "Listen"); !strings.Contains(got, "(Datagram)") {
		t.Fatalf("hand-off mode: %s listens on %q, want its hand-off socket", g.InstanceSocket(1), got)
	}

	if err := os.WriteFile(src, []byte(kernelHouseConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/kernel.toml"); err != nil {
		t.Fatalf("install --now in kernel mode: %v\n%s", err, out)
	}
	for n := 1; n <= 4; n++ {
		if got := h.show(g.InstanceSocket(n), "Listen"); got != fmt.Sprintf("127.0.0.1:%d (Stream)", kernelPort) {
			t.Errorf("kernel mode: %s listens on %q", g.InstanceSocket(n), got)
		}
	}
	if ls := h.listeners(); len(ls) != 4 {
		t.Errorf("%d listening sockets on port %d after the switch, want 4:\n%v", len(ls), kernelPort, ls)
	}
}
