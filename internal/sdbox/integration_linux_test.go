package sdbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Integration tests: each boots real systemd boxes. They need root
// (Require skips without it, or fails when $CI is set).

func bootBox(t *testing.T, opts Options) *Box {
	t.Helper()
	Require(t)
	b, err := Boot(t.Context(), t, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("box %s: pid %d, booted in %v", b.Name(), b.PID(), b.bootTime.Round(time.Millisecond))
	return b
}

func run(t *testing.T, b *Box, name string, args ...string) string {
	t.Helper()
	out, err := b.Run(t.Context(), name, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return string(out)
}

func randomWord(t *testing.T) string {
	t.Helper()
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(r[:])
}

// eventually polls cond every 10ms until it holds or d has passed.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sysctl(t *testing.T, name string) string {
	t.Helper()
	v, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

func TestIntegrationBoot(t *testing.T) {
	Require(t)
	// systemd raises these at boot when it can; the box must not.
	knobs := []string{"net.unix.max_dgram_qlen", "fs.file-max", "fs.nr_open"}
	before := map[string]string{}
	for _, k := range knobs {
		before[k] = sysctl(t, k)
	}
	_, devLogErr := os.Lstat("/dev/log")

	b := bootBox(t, Options{Name: "boot-test"})

	if got := strings.TrimSpace(run(t, b, "systemctl", "is-system-running")); got != "running" {
		t.Errorf("is-system-running = %q, want running\n%s", got, run(t, b, "systemctl", "--failed", "--no-legend"))
	}
	if got := strings.TrimSpace(run(t, b, "hostname")); got != "boot-test" {
		t.Errorf("hostname = %q", got)
	}
	if got := strings.TrimSpace(run(t, b, "cat", "/run/systemd/container")); got != "boot-test" {
		t.Errorf("systemd's container = %q", got)
	}
	// Its own PID namespace, PID 1 in it.
	ours, err := pidNamespace(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if b.ns == ours {
		t.Error("the box shares our PID namespace")
	}
	if got := strings.TrimSpace(run(t, b, "sh", "-c", "cat /proc/1/comm")); got != "systemd" {
		t.Errorf("PID 1 in the box is %q", got)
	}
	// Its systemd sees its own cgroup as the root.
	if got := run(t, b, "cat", "/proc/1/cgroup"); !strings.Contains(got, "::/init.scope") && !strings.Contains(got, "name=systemd:/init.scope") {
		t.Errorf("PID 1's cgroups:\n%s", got)
	}
	// Masked, so that it cannot empty a /tmp.
	if out, err := b.Systemctl(t.Context(), "start", "systemd-tmpfiles-clean.service"); err == nil || !strings.Contains(string(out), "masked") {
		t.Errorf("starting tmpfiles-clean: %v %s", err, out)
	}
	for _, k := range knobs {
		if got := sysctl(t, k); got != before[k] {
			t.Errorf("host %s changed from %s to %s", k, before[k], got)
		}
	}
	if _, err := os.Lstat("/dev/log"); errors.Is(devLogErr, fs.ErrNotExist) && err == nil {
		t.Error("the box created the host's /dev/log")
	}
	if !strings.Contains(b.Console(), "Reached target sdbox.target") {
		t.Errorf("console lacks the boot target:\n%s", b.Console())
	}
}

func TestIntegrationPrivateFileSystems(t *testing.T) {
	hostDir := t.TempDir() // the host's /tmp, unless $TMPDIR says otherwise
	hostMarker := filepath.Join(hostDir, "host-marker")
	if err := os.WriteFile(hostMarker, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := bootBox(t, Options{})
	word := randomWord(t)

	if out, err := b.Run(t.Context(), "test", "-e", hostMarker); err == nil {
		t.Errorf("the host's %s is visible in the box (%s)", hostMarker, out)
	}
	for _, p := range []string{"/tmp/", "/var/tmp/", "/etc/", "/var/lib/", "/run/"} {
		inBox := p + "sdbox-marker-" + word
		run(t, b, "sh", "-c", "echo box > "+shellQuote(inBox))
		if got, err := b.ReadFile(inBox); err != nil || string(got) != "box\n" {
			t.Errorf("%s in the box: %q, %v", inBox, got, err)
		}
		if _, err := os.Lstat(inBox); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s written in the box appeared on the host (%v)", inBox, err)
		}
	}
	unit := "/etc/systemd/system/sdbox-probe-" + word + ".service"
	if err := b.WriteFile(unit, []byte("[Service]\nExecStart=/bin/true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(unit); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s appeared on the host (%v)", unit, err)
	}
	machineID := strings.TrimSpace(run(t, b, "cat", "/etc/machine-id"))
	host, _ := os.ReadFile("/etc/machine-id")
	if machineID == strings.TrimSpace(string(host)) {
		t.Error("the box has the host's machine ID")
	}
	if _, err := os.Lstat("/var/log/journal/" + machineID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the box's journal is in the host's /var/log/journal (%v)", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(hostMarker); err != nil || string(got) != "host\n" {
		t.Errorf("host marker after the box: %q, %v", got, err)
	}
}

// TestIntegrationSysusers: Options.Sysusers creates a user in the box, a
// unit runs as it, and the host's user database never learns of it.
func TestIntegrationSysusers(t *testing.T) {
	name := "sdbox-" + randomWord(t)[:8]
	hostPasswd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	hostGroup, _ := os.ReadFile("/etc/group")
	b := bootBox(t, Options{Sysusers: []byte("u " + name + " - \"sdbox probe\" - -\n")})
	if out, err := b.Run(t.Context(), "getent", "passwd", name); err != nil || !strings.HasPrefix(string(out), name+":") {
		t.Fatalf("getent passwd %s in the box: %q, %v", name, out, err)
	}
	// The user writes where it may: a runtime directory made its own.
	unit := "[Service]\nType=oneshot\nUser=" + name + "\nRuntimeDirectory=sdbox-whoami\nRuntimeDirectoryPreserve=yes\n" +
		"ExecStart=/bin/sh -c 'id -un > /run/sdbox-whoami/name'\n"
	if err := b.WriteFile("/run/systemd/system/sdbox-whoami.service", []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, b, "systemctl", "daemon-reload")
	run(t, b, "systemctl", "start", "sdbox-whoami.service")
	if got, err := b.ReadFile("/run/sdbox-whoami/name"); err != nil || strings.TrimSpace(string(got)) != name {
		t.Errorf("the unit ran as %q (%v), want %s", got, err, name)
	}
	check := func(when string) {
		for _, f := range []string{"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"} {
			if data, err := os.ReadFile(f); err == nil && strings.Contains(string(data), name+":") {
				t.Errorf("%s: the host's %s holds the box's user %s", when, f, name)
			}
		}
		if out, err := exec.Command("getent", "passwd", name).CombinedOutput(); err == nil {
			t.Errorf("%s: getent passwd %s on the host: %s", when, name, out)
		}
	}
	check("box running")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	check("box closed")
	if now, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(now, hostPasswd) {
		t.Error("the host's /etc/passwd changed while the box ran")
	}
	if now, _ := os.ReadFile("/etc/group"); !bytes.Equal(now, hostGroup) {
		t.Error("the host's /etc/group changed while the box ran")
	}
}

func TestIntegrationWriteFile(t *testing.T) {
	b := bootBox(t, Options{})
	word := randomWord(t)

	p := "/run/sdbox-test/" + word + "/deep/file.sh"
	if err := b.WriteFile(p, []byte("#!/bin/sh\necho hi\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(run(t, b, "stat", "-c", "%a", p)); got != "750" {
		t.Errorf("mode %s, want 750", got)
	}
	if got := run(t, b, p); got != "hi\n" {
		t.Errorf("running it: %q", got)
	}

	// The box's root file system is the host's outside its private mounts:
	// WriteFile refuses to write there, also through an absolute symbolic
	// link (which, through /proc/PID/root, would resolve on the host).
	run(t, b, "ln", "-s", "/usr/local", "/run/escape-"+word)
	for _, p := range []string{"/usr/local/sdbox-must-not-exist-" + word, "/run/escape-" + word + "/sdbox-must-not-exist-" + word} {
		if err := b.WriteFile(p, []byte("x"), 0o644); err == nil {
			t.Errorf("WriteFile(%s) succeeded", p)
		}
	}
	if _, err := os.Lstat("/usr/local/sdbox-must-not-exist-" + word); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file appeared on the host (%v)", err)
	}
	if _, err := b.ReadFile("/run/escape-" + word + "/../../etc/hostname"); err != nil {
		t.Errorf("reading through a box symlink: %v", err)
	}
}

func TestIntegrationSocketUnit(t *testing.T) {
	b := bootBox(t, Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	units := map[string]string{
		"sdbox-echo.socket":   fmt.Sprintf("[Socket]\nListenStream=127.0.0.1:%d\nAccept=yes\n", port),
		"sdbox-echo@.service": "[Service]\nExecStart=/bin/cat\nStandardInput=socket\n",
		"sdbox-sleep.service": "[Service]\nExecStart=/bin/sleep infinity\n",
	}
	for name, text := range units {
		if err := b.WriteFile("/run/systemd/system/"+name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(t, b, "systemctl", "daemon-reload")
	run(t, b, "systemctl", "start", "sdbox-echo.socket", "sdbox-sleep.service")
	if got := strings.TrimSpace(run(t, b, "systemctl", "is-active", "sdbox-sleep.service")); got != "active" {
		t.Errorf("sdbox-sleep.service is %s", got)
	}

	// From the host: the box shares the network namespace.
	began := time.Now()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ping\n" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	t.Logf("socket-activated echo answered in %v", time.Since(began).Round(time.Millisecond))
}

func TestIntegrationJournal(t *testing.T) {
	b := bootBox(t, Options{})
	word := randomWord(t)
	run(t, b, "logger", "-t", "sdbox-logger", "via-syslog-"+word)
	run(t, b, "sh", "-c", "echo via-stdout-"+word+" | systemd-cat -t sdbox-cat")
	for _, want := range []struct{ tag, msg string }{{"sdbox-logger", "via-syslog-" + word}, {"sdbox-cat", "via-stdout-" + word}} {
		eventually(t, 5*time.Second, "journalctl finds "+want.msg, func() bool {
			out, _ := b.Run(t.Context(), "journalctl", "--no-pager", "-o", "cat", "-t", want.tag)
			return strings.Contains(string(out), want.msg)
		})
	}
	// Followed live, as `powerhouse events` would.
	p, err := b.Start(t.Context(), "journalctl", "--no-pager", "-f", "-n", "0", "-o", "cat", "-t", "sdbox-follow")
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(p.Output)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond) // journalctl -f may start after the first message: resend
	defer tick.Stop()
	for found := false; !found; {
		select {
		case l := <-lines:
			found = l == "followed-"+word
		case <-tick.C:
			run(t, b, "logger", "-t", "sdbox-follow", "followed-"+word)
		case <-deadline:
			t.Fatal("journalctl -f did not show the message")
		}
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err == nil {
		t.Error("a killed journalctl -f exited cleanly")
	}
}

func TestIntegrationDBus(t *testing.T) {
	b := bootBox(t, Options{})
	ctx := t.Context()
	conn, err := b.Manager(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	units, err := conn.ListUnitsContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(units, func(u sddbus.UnitStatus) bool { return u.Name == bootTarget })
	if i < 0 || units[i].ActiveState != "active" {
		t.Fatalf("%s not active among %d units", bootTarget, len(units))
	}
	p, err := conn.GetUnitPropertyContext(ctx, "systemd-journald.service", "ActiveState")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Value.Value(); got != "active" {
		t.Errorf("journald ActiveState = %v", got)
	}

	// A job started over D-Bus reports its result: signals reach us too.
	if err := b.WriteFile("/run/systemd/system/sdbox-dbus.service", []byte("[Service]\nExecStart=/bin/sleep infinity\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := conn.ReloadContext(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	if _, err := conn.StartUnitContext(ctx, "sdbox-dbus.service", "replace", done); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r != "done" {
			t.Fatalf("start job: %s", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no JobRemoved for the start job")
	}
	if got := strings.TrimSpace(run(t, b, "systemctl", "is-active", "sdbox-dbus.service")); got != "active" {
		t.Errorf("sdbox-dbus.service is %s", got)
	}

	// The system bus, where the box's systemd registers once dbus runs.
	bus, err := b.SystemBus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	eventually(t, 5*time.Second, "org.freedesktop.systemd1 on the box's system bus", func() bool {
		var names []string
		err := bus.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.ListNames", 0).Store(&names)
		return err == nil && slices.Contains(names, "org.freedesktop.systemd1")
	})
	var state godbus.Variant
	err = bus.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
		CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, "org.freedesktop.systemd1.Manager", "SystemState").Store(&state)
	if err != nil || state.Value() != "running" {
		t.Errorf("SystemState over the system bus: %v, %v", state, err)
	}
}

func TestIntegrationTwoBoxes(t *testing.T) {
	Require(t)
	var boxes [2]*Box
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range boxes {
		wg.Go(func() {
			boxes[i], errs[i] = Boot(t.Context(), t, Options{Name: fmt.Sprintf("twin-%d", i)})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	a, b := boxes[0], boxes[1]
	if a.ns == b.ns || a.PID() == b.PID() {
		t.Fatal("the boxes share a PID namespace")
	}
	for i, x := range boxes {
		if got := strings.TrimSpace(run(t, x, "hostname")); got != fmt.Sprintf("twin-%d", i) {
			t.Errorf("box %d: hostname %q", i, got)
		}
	}
	if err := a.WriteFile("/run/systemd/system/sdbox-only-a.service", []byte("[Service]\nExecStart=/bin/sleep infinity\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, a, "systemctl", "daemon-reload")
	run(t, a, "systemctl", "start", "sdbox-only-a.service")
	if out, err := b.Systemctl(t.Context(), "cat", "sdbox-only-a.service"); err == nil {
		t.Errorf("box b sees box a's unit:\n%s", out)
	}
	// Their cgroups are apart, and each systemd built its tree in its own.
	for i, x := range boxes {
		for _, d := range x.cgroups.Dirs {
			if !strings.HasPrefix(filepath.Base(d), boxCgroupPrefix) {
				t.Errorf("box %d cgroup %s", i, d)
			}
		}
	}
	if slices.ContainsFunc(a.cgroups.Dirs, func(d string) bool { return slices.Contains(b.cgroups.Dirs, d) }) {
		t.Error("the boxes share a cgroup")
	}
	if _, err := os.Stat(filepath.Join(a.cgroups.Dirs[slices.IndexFunc(a.cgroups.Hierarchies, func(h hierarchy) bool { return h.Key == "name=systemd" || h.V2 })], "system.slice", "sdbox-only-a.service")); err != nil {
		t.Errorf("box a's unit cgroup is not under box a's cgroup: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(run(t, b, "systemctl", "is-system-running")); got != "running" {
		t.Errorf("box b after box a closed: %s", got)
	}
}

func TestIntegrationTeardown(t *testing.T) {
	b := bootBox(t, Options{Name: "teardown"})
	if err := b.WriteFile("/run/systemd/system/sdbox-tree.service",
		[]byte("[Service]\nExecStart=/bin/sh -c 'sleep infinity & sleep infinity'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, b, "systemctl", "daemon-reload")
	run(t, b, "systemctl", "start", "sdbox-tree.service")

	// An entered command running when the box goes down, and one in Run.
	p, err := b.Start(t.Context(), "sleep", "infinity")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the entered command runs", func() bool { return p.PID() != 0 })
	runDone := make(chan error, 1)
	go func() {
		_, err := b.Run(context.Background(), "sh", "-c", "sleep infinity")
		runDone <- err
	}()
	eventually(t, 5*time.Second, "Run is under way", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.procs) == 2
	})
	inBox, err := processesIn(b.ns)
	if err != nil || len(inBox) < 5 { // systemd, journald, dbus, 2 sleeps of the unit, the entered ones
		t.Fatalf("processes in the box before Close: %v, %v", inBox, err)
	}
	dirs := slices.Clone(b.cgroups.Dirs)

	began := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close took %v, of which power-off %v", time.Since(began).Round(time.Millisecond), b.poweroffTime.Round(time.Millisecond))
	if b.poweroffTime == 0 {
		t.Error("the box did not power off cleanly")
	}
	if err := p.Wait(); err == nil {
		t.Error("the entered command exited cleanly")
	}
	select {
	case err := <-runDone:
		if err == nil {
			t.Error("Run of an endless command returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if left, err := processesIn(b.ns); err != nil || len(left) > 0 {
		t.Errorf("left in the box's PID namespace: %v, %v", left, err)
	}
	for _, pid := range inBox {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			if ns, err := pidNamespace(pid); err == nil && ns == b.ns {
				t.Errorf("process %d of the box survived", pid)
			}
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cgroup %s remains (%v)", d, err)
		}
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := b.Run(t.Context(), "true"); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close: %v, want ErrClosed", err)
	}
	if err := b.WriteFile("/run/x", nil, 0o644); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteFile after Close: %v, want ErrClosed", err)
	}
}

const childEnv = "SDBOX_TEST_CHILD"

// TestHelperChildBox is not a test by itself: TestIntegrationKilledOwner
// runs the test binary with it, to boot a box and be killed.
func TestHelperChildBox(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		return // only a helper process of TestIntegrationKilledOwner
	}
	b, err := Boot(context.Background(), nil, Options{Name: "orphan"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BOX %d %s\n", b.PID(), strings.Join(b.cgroups.Dirs, ","))
	time.Sleep(time.Minute) // until killed
	t.Fatal("not killed")
}

func TestIntegrationKilledOwner(t *testing.T) {
	Require(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperChildBox$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "BOX ") {
				line <- sc.Text()
			}
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	var l string
	select {
	case l = <-line:
	case <-time.After(60 * time.Second):
	}
	f := strings.Fields(l)
	if len(f) != 3 {
		t.Fatalf("child said %q\n%s", l, stderr.Bytes())
	}
	pid, _ := strconv.Atoi(f[1])
	dirs := strings.Split(f[2], ",")
	st, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := pidNamespace(pid)
	if err != nil {
		t.Fatal(err)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("child's box PID %d is %q", pid, comm)
	}

	began := time.Now()
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no cleanup runs in the child
		t.Fatal(err)
	}
	_ = cmd.Wait()
	// Dead is enough: reaping the orphan is up to the host's PID 1.
	eventually(t, 10*time.Second, "the orphaned box dies", func() bool {
		now, err := readStat(pid)
		return err != nil || now.StartTime != st.StartTime || now.State == 'Z' || now.State == 'X'
	})
	t.Logf("the box died %v after its owner", time.Since(began).Round(time.Millisecond))
	if left, err := processesIn(ns); err != nil || len(left) > 0 {
		t.Errorf("left in the box's PID namespace: %v, %v", left, err)
	}
	// Its cgroups are left for the next Boot to collect; do it now.
	eventually(t, 10*time.Second, "the dead box's cgroups are collected", func() bool {
		_, _ = collectStaleCgroups()
		return !slices.ContainsFunc(dirs, func(d string) bool { _, err := os.Stat(d); return err == nil })
	})
}

func TestIntegrationGenerators(t *testing.T) {
	gen := t.TempDir()
	script := "#!/bin/sh\nprintf '[Unit]\\nDescription=generated\\n[Service]\\nExecStart=/bin/sleep infinity\\n' > \"$1/sdbox-gen.service\"\n"
	if err := os.WriteFile(filepath.Join(gen, "sdbox-test-generator"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b := bootBox(t, Options{Name: "gen", Generators: gen})
	if got := run(t, b, "systemctl", "show", "-p", "LoadState,FragmentPath", "sdbox-gen.service"); !strings.Contains(got, "LoadState=loaded") ||
		!strings.Contains(got, "FragmentPath=/run/systemd/generator/sdbox-gen.service") {
		t.Errorf("generated unit:\n%s", got)
	}
	run(t, b, "systemctl", "start", "sdbox-gen.service")

	// Without Generators, nothing is generated: the host's generators
	// (fstab, getty, sysv, ...) do not run in a box.
	plain := bootBox(t, Options{Name: "nogen"})
	if got := run(t, plain, "find", "/run/systemd", "-path", "*/generator*", "-type", "f"); got != "" {
		t.Errorf("generated without generators:\n%s", got)
	}
}

func TestIntegrationBinds(t *testing.T) {
	ro, rw := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "data"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := bootBox(t, Options{Binds: []Bind{
		{Source: ro, Target: "/run/sdbox-ro"},
		{Source: rw, Target: "/var/lib/sdbox-rw", Writable: true},
		{Source: filepath.Join(ro, "data"), Target: "/etc/sdbox-data"},
	}})
	if got := run(t, b, "cat", "/run/sdbox-ro/data", "/etc/sdbox-data"); got != "hello\nhello\n" {
		t.Errorf("bound files read %q", got)
	}
	if out, err := b.Run(t.Context(), "sh", "-c", "echo x > /run/sdbox-ro/new"); err == nil {
		t.Errorf("wrote into a read-only bind (%s)", out)
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("read-only bind written: %v", err)
	}
	run(t, b, "sh", "-c", "echo from-box > /var/lib/sdbox-rw/new")
	if got, err := os.ReadFile(filepath.Join(rw, "new")); err != nil || string(got) != "from-box\n" {
		t.Errorf("writable bind: %q, %v", got, err)
	}
}
