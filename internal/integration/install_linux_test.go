package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// tree lists the files under dir (host side) with their modification times.
func tree(t *testing.T, dir string) map[string]time.Time {
	t.Helper()
	m := map[string]time.Time{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		if info, err := os.Lstat(p); err == nil {
			m[strings.TrimPrefix(p, dir)] = info.ModTime()
		}
		return nil
	})
	return m
}

func keys(m map[string]time.Time) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

// TestIntegrationInstall: install --now brings the demo house up; a second
// install changes nothing; a changed amount touches only that group;
// uninstall leaves the unit directory as it was.
func TestIntegrationInstall(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	unitDir := h.box.Path("/etc/systemd/system")
	before := tree(t, unitDir)
	src := h.box.Path("/run/src/demo.toml")
	os.MkdirAll(filepath.Dir(src), 0o755)
	cfg := strings.ReplaceAll(demoConfig(t), filepath.Join(boxBin, "hello"), "../hello-bin/hello")
	if err := os.WriteFile(src, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// A relative worker path, resolved against the source file, as in the
	// repository's testdata/demo.toml.
	os.MkdirAll(h.box.Path("/run/hello-bin"), 0o755)
	data, _ := os.ReadFile(filepath.Join(bin, "hello"))
	os.WriteFile(h.box.Path("/run/hello-bin/hello"), data, 0o755)

	out, err := h.powerhouse("install", "--now", "/run/src/demo.toml")
	if err != nil {
		t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
	}
	if got := h.show("powerhouse.target", "ActiveState"); got != "active" {
		t.Fatalf("powerhouse.target %s after install --now", got)
	}
	if r, err := get(client("127.0.0.2"), webURL); err != nil || !strings.HasPrefix(r.Instance, "web@") {
		t.Fatalf("web after install: %v %+v", err, r)
	}
	if got := h.show("powerhouse.target", "UnitFileState"); got != "enabled" {
		t.Errorf("powerhouse.target UnitFileState=%s, want enabled", got)
	}
	installed := tree(t, unitDir)

	out, err = h.powerhouse("install", "--now", "/run/src/demo.toml")
	if err != nil || !strings.Contains(out, "no change") {
		t.Errorf("second install: %v\n%s", err, out)
	}
	again := tree(t, unitDir)
	for p, mt := range installed {
		if !again[p].Equal(mt) {
			t.Errorf("second install touched %s", p)
		}
	}

	webPIDs := pidsOf(h, "web", 4)
	os.WriteFile(src, []byte(strings.Replace(cfg, "amount = 4", "amount = 3", 1)), 0o644)
	out, err = h.powerhouse("install", "--now", "/run/src/demo.toml")
	if err != nil {
		t.Fatalf("install with a changed amount: %v\n%s", err, out)
	}
	changed := tree(t, unitDir)
	for p, mt := range installed {
		if !changed[p].Equal(mt) {
			t.Errorf("changing web's amount touched unit file %s", p)
		}
	}
	waitFor(t, 20*time.Second, "web scaled to 3", func() bool {
		return h.show("powerhouse-web@4.service", "ActiveState") == "inactive"
	})
	for i := 1; i <= 3; i++ {
		if got := h.show(units.Group{Name: "web"}.Instance(i), "MainPID"); got != webPIDs[i] {
			t.Errorf("web@%d restarted (%s -> %s): only the supervisor should", i, webPIDs[i], got)
		}
	}

	out, err = h.powerhouse("uninstall")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	after := tree(t, unitDir)
	if fmt.Sprint(keys(after)) != fmt.Sprint(keys(before)) {
		t.Errorf("unit directory after uninstall:\n%v\nbefore install:\n%v", keys(after), keys(before))
	}
	if entries, _ := os.ReadDir(h.cfgDir); len(entries) != 0 {
		t.Errorf("/etc/powerhouse keeps %v after uninstall", entries)
	}
	if got := h.show("powerhouse-web@1.service", "ActiveState"); got != "inactive" {
		t.Errorf("a worker is %s after uninstall", got)
	}
}

// TestIntegrationGenerator: with the generator installed, editing the
// configuration and daemon-reload is the whole install; a broken
// configuration makes no unit appear and the box keeps running.
func TestIntegrationGenerator(t *testing.T) {
	gens := t.TempDir()
	// The link resolves inside the box.
	if err := os.Symlink(filepath.Join(boxBin, "powerhouse"), filepath.Join(gens, "powerhouse-generator")); err != nil {
		t.Fatal(err)
	}
	h := bootHouse(t, sdbox.Options{Generators: gens})
	if err := os.WriteFile(filepath.Join(h.cfgDir, "powerhouse.toml"), []byte(demoConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	for _, u := range []string{"powerhouse.target", "powerhouse@web.service", "powerhouse-web@1.service", "powerhouse-web@1.socket", "powerhouse@web.socket"} {
		if got := h.show(u, "LoadState"); got != "loaded" {
			t.Errorf("%s: LoadState=%s after daemon-reload with the generator", u, got)
		}
	}
	if got := h.show("powerhouse.target", "FragmentPath"); !strings.HasPrefix(got, "/run/systemd/generator") {
		t.Errorf("powerhouse.target comes from %q, want the generator directory", got)
	}
	h.systemctl("start", "powerhouse.target")
	if _, err := get(client("127.0.0.3"), webURL); err != nil {
		t.Errorf("house from generated units: %v", err)
	}
	h.systemctl("stop", "powerhouse.target")

	os.WriteFile(filepath.Join(h.cfgDir, "powerhouse.toml"), []byte("title = 3\n[[worker]]\nname = \"x\"\n"), 0o644)
	h.systemctl("daemon-reload")
	if got := h.show("powerhouse.target", "LoadState"); got == "loaded" {
		t.Errorf("powerhouse.target still loaded with a broken configuration")
	}
	if entries, _ := os.ReadDir(h.box.Path("/run/systemd/generator")); len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if strings.Contains(strings.Join(names, " "), "powerhouse") {
			t.Errorf("generator wrote %v for a broken configuration", names)
		}
	}
	state, _ := h.run("systemctl", "is-system-running")
	if s := strings.TrimSpace(state); s != "running" && s != "degraded" {
		t.Errorf("box is %q after a broken configuration", s)
	}
	// Generators log to the kernel log, or, where there is none (as in
	// this box), to the manager's console: the problem must be there.
	defer func() {
		if t.Failed() {
			t.Logf("console:\n%s", h.box.Console())
		}
	}()
	waitFor(t, 5*time.Second, "the generator's complaint", func() bool {
		c := h.box.Console()
		j, _ := h.run("journalctl", "--no-pager", "-b", "-o", "cat")
		return (strings.Contains(c, "powerhouse-generator") && strings.Contains(c, "title")) ||
			(strings.Contains(j, "powerhouse-generator") && strings.Contains(j, "title"))
	})
}

// TestIntegrationPrepare: [prepare]'s KEY=VALUE output reaches every worker;
// a failing [prepare] keeps them down, visibly.
func TestIntegrationPrepare(t *testing.T) {
	worker := `
[[worker]]
name = "w"
type = "child"
amount = 2
exec = ["/bin/sh", "-c", "echo \"$PORT\" > ` + boxOut + `/port-$POWERHOUSE_INSTANCE; exec sleep 600"]
[worker.service]
private_tmp = false
`
	t.Run("ok", func(t *testing.T) {
		h := newHouse(t, "[prepare]\nexec = [\"/bin/sh\", \"-c\", \"echo PORT=8123; echo '# comment'; echo NAME='a b'\"]\n"+worker)
		h.systemctl("start", "powerhouse.target")
		for i := 1; i <= 2; i++ {
			p := h.box.Path(fmt.Sprintf("%s/port-%d", boxOut, i))
			waitFor(t, 10*time.Second, p, func() bool { b, _ := os.ReadFile(p); return strings.TrimSpace(string(b)) == "8123" })
		}
	})
	t.Run("failing", func(t *testing.T) {
		h := newHouse(t, "[prepare]\nexec = \"/bin/false\"\n"+worker)
		h.box.Systemctl(t.Context(), "start", "powerhouse.target")
		if got := h.show("powerhouse-prepare.service", "ActiveState"); got != "failed" {
			t.Errorf("prepare is %s, want failed", got)
		}
		for i := 1; i <= 2; i++ {
			if got := h.show(units.Group{Name: "w"}.Instance(i), "ActiveState"); got == "active" {
				t.Errorf("worker %d started though prepare failed", i)
			}
		}
		out, _ := h.run("systemctl", "status", "--no-pager", "powerhouse-prepare.service")
		if !strings.Contains(out, "failed") {
			t.Errorf("systemctl status does not show the failure:\n%s", out)
		}
	})
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestIntegrationSecurity: systemd-analyze security scores the supervisor
// (at most 2.0) and a worker (at most 3.0, running as the static user
// powerhouse), and both still serve.
func TestIntegrationSecurity(t *testing.T) {
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")
	for _, tc := range []struct {
		unit string
		max  float64
	}{
		{"powerhouse@web.service", 2.0},
		{"powerhouse-web@1.service", 3.0},
	} {
		out, _ := h.run("systemd-analyze", "security", "--no-pager", tc.unit)
		m := exposureRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no exposure level in:\n%s", out)
		}
		score, _ := strconv.ParseFloat(m[1], 64)
		if score > tc.max {
			t.Errorf("%s exposure %.1f, want <= %.1f:\n%s", tc.unit, score, tc.max, out)
		}
		t.Logf("%s exposure %.1f", tc.unit, score)
	}
	// The dispatcher runs SCHED_BATCH, every thread of it (the unit sets
	// it before exec; threads inherit it): see docs/ARCHITECTURE.md.
	if pid := h.show("powerhouse@web.service", "MainPID"); pid != "0" {
		out, err := h.run("sh", "-c", "grep -h '^policy' /proc/"+pid+"/task/*/sched")
		if err != nil || out == "" {
			t.Errorf("supervisor's scheduling policy: %v %s", err, out)
		}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) != 3 || f[2] != "3" { // SCHED_BATCH
				t.Errorf("supervisor thread with %q, want policy 3 (SCHED_BATCH)", l)
			}
		}
	}
	if got := h.show("powerhouse-web@1.service", "User"); got != "powerhouse" {
		t.Errorf("worker User=%q, want powerhouse", got)
	}
	if pid := h.show("powerhouse-web@1.service", "MainPID"); pid != "0" {
		st, err := h.run("stat", "-c", "%u", "/proc/"+pid)
		id, _ := h.run("id", "-u", "powerhouse")
		if err != nil || strings.TrimSpace(st) != strings.TrimSpace(id) || strings.TrimSpace(st) == "0" {
			t.Errorf("worker process runs as uid %q (%v), want powerhouse's %q", st, err, id)
		}
	}
	// The workers' user enters the group's runtime directory (config.json
	// is there), and may not write the hand-off socket.
	asWorker := []string{"setpriv", "--reuid=powerhouse", "--regid=powerhouse", "--init-groups", "--"}
	if out, err := h.run(asWorker[0], append(asWorker[1:], "test", "-x", "/run/powerhouse/web")...); err != nil {
		t.Errorf("user powerhouse cannot enter /run/powerhouse/web: %v %s", err, out)
	}
	if out, err := h.run(asWorker[0], append(asWorker[1:], "test", "-w", "/run/powerhouse/web/1.sock")...); err == nil {
		t.Errorf("user powerhouse may write the hand-off socket /run/powerhouse/web/1.sock %s", out)
	}
	if got := h.show("powerhouse-web@1.socket", "PassCredentials"); got != "yes" {
		t.Errorf("hand-off socket PassCredentials=%s, want yes", got)
	}
	if _, err := get(client("127.0.0.2"), webURL); err != nil {
		t.Errorf("the hardened supervisor and workers do not serve: %v", err)
	}
}

// TestInstallUserRoot: install --user --root writes the user's directories
// under the root, and talks to no systemd.
func TestInstallUserRoot(t *testing.T) {
	root := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "house.toml")
	os.WriteFile(cfg, []byte(demoConfig(t)), 0o644)
	home := "/home/alice"
	cmd := []string{filepath.Join(bin, "powerhouse"), "install", "--user", "--root", root, cfg}
	out, err := runEnv(append(os.Environ(), "HOME="+home), cmd...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, p := range []string{
		home + "/.config/powerhouse/powerhouse.toml",
		home + "/.config/systemd/user/powerhouse.target",
		home + "/.config/systemd/user/powerhouse@.service",
		home + "/.config/systemd/user/powerhouse-web@.service",
		home + "/.config/systemd/user/default.target.wants/powerhouse.target",
	} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("missing %s", p)
		}
	}
	b, _ := os.ReadFile(filepath.Join(root, home, ".config/systemd/user/powerhouse@.service"))
	if !strings.Contains(string(b), "supervise --config "+home+"/.config/powerhouse/powerhouse.toml --user %i") {
		t.Errorf("user supervisor unit:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(root, "etc")); err == nil {
		t.Error("--user wrote under /etc")
	}
	out, err = runEnv(append(os.Environ(), "HOME="+home), filepath.Join(bin, "powerhouse"), "uninstall", "--user", "--root", root)
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	left := tree(t, root)
	for p := range left {
		if info, err := os.Lstat(filepath.Join(root, p)); err == nil && !info.IsDir() {
			t.Errorf("uninstall left %s", p)
		}
	}
}

// TestIntegrationInstallSysusers: install writes the sysusers.d file and
// creates the workers' user with systemd-sysusers, under --root too when
// the root has a user database, and only says so when it has none. It runs
// in a box: systemd-sysusers never runs on the host.
func TestIntegrationInstallSysusers(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	cfg := h.box.Path("/run/src/house.toml")
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	if err := os.WriteFile(cfg, []byte(demoConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	// An image: a user database without the user.
	os.MkdirAll(h.box.Path("/run/image/etc"), 0o755)
	if err := os.WriteFile(h.box.Path("/run/image/etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(h.box.Path("/run/image/etc/group"), []byte("root:x:0:\n"), 0o644)
	out, err := h.powerhouse("install", "--root", "/run/image", "/run/src/house.toml")
	if err != nil {
		t.Fatalf("install --root: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(h.box.Path("/run/image" + units.SysusersPath)); err != nil || !bytes.Equal(b, units.Sysusers) {
		t.Errorf("%s under the root: %q, %v", units.SysusersPath, b, err)
	}
	for _, f := range []string{"passwd", "group"} {
		if b, _ := os.ReadFile(h.box.Path("/run/image/etc/" + f)); !strings.Contains(string(b), "\npowerhouse:") {
			t.Errorf("the image's /etc/%s lacks powerhouse:\n%s", f, b)
		}
	}
	// A package tree: no user database, none made up.
	out, err = h.powerhouse("install", "--root", "/run/package", "/run/src/house.toml")
	if err != nil || !strings.Contains(out, "systemd-sysusers creates user powerhouse at its first boot") {
		t.Errorf("install into a tree without /etc/passwd: %v\n%s", err, out)
	}
	if _, err := os.Stat(h.box.Path("/run/package/etc/passwd")); err == nil {
		t.Error("install made up an /etc/passwd in a package tree")
	}
}
