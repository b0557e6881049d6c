package cli

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

const tinyConfig = "[[worker]]\nname = \"w\"\nexec = \"/bin/true\"\n[worker.config]\npassword = \"s3cret\"\n"

// TestInstallRootModesAndAdoption: the installed configuration (it may
// hold secrets) is root's alone; a mode the operator gave it survives a
// reinstall; a configuration written in place before install is left by
// uninstall, which says so.
func TestInstallRootModesAndAdoption(t *testing.T) {
	for _, tc := range []struct {
		name      string
		inPlace   os.FileMode // 0: the configuration is installed from elsewhere
		wantMode  os.FileMode
		wantKept  bool
		reinstall string // content installed a second time, from elsewhere
	}{
		{name: "fresh", wantMode: 0o600},
		{name: "fresh, reinstalled changed", wantMode: 0o600, reinstall: tinyConfig + "amount = 2\n"},
		{name: "written in place 0640", inPlace: 0o640, wantMode: 0o640, wantKept: true},
		{name: "written in place 0640, reinstalled changed", inPlace: 0o640, wantMode: 0o640, wantKept: true, reinstall: strings.Replace(tinyConfig, "s3cret", "other", 1)},
		{name: "written in place world-readable", inPlace: 0o644, wantMode: 0o640, wantKept: true, reinstall: strings.Replace(tinyConfig, "s3cret", "other", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			installed := filepath.Join(root, config.DefaultPath)
			src := filepath.Join(t.TempDir(), "p.toml")
			if tc.inPlace != 0 {
				src = installed
				os.MkdirAll(filepath.Dir(installed), 0o755)
			}
			if err := os.WriteFile(src, []byte(tinyConfig), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.inPlace != 0 {
				os.Chmod(src, tc.inPlace)
			}
			if code, _, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", src); code != 0 {
				t.Fatalf("install: %d %s", code, stderr)
			}
			if tc.reinstall != "" {
				other := filepath.Join(t.TempDir(), "q.toml")
				os.WriteFile(other, []byte(tc.reinstall), 0o644)
				if code, _, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", other); code != 0 {
					t.Fatalf("reinstall: %d %s", code, stderr)
				}
			}
			fi, err := os.Stat(installed)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.wantMode {
				t.Errorf("installed configuration mode %o, want %o", fi.Mode().Perm(), tc.wantMode)
			}
			code, stdout, stderr := run(t, "uninstall", "--root", root)
			if code != 0 {
				t.Fatalf("uninstall: %d %s", code, stderr)
			}
			_, err = os.Stat(installed)
			if kept := err == nil; kept != tc.wantKept {
				t.Errorf("configuration kept = %v after uninstall, want %v\n%s", kept, tc.wantKept, stdout)
			}
			if said := strings.Contains(stdout, "uninstall: left "+installed+": it was there before install"); said != tc.wantKept {
				t.Errorf("uninstall output (says it left the configuration: %v, want %v):\n%s", said, tc.wantKept, stdout)
			}
			if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/powerhouse.target")); err == nil {
				t.Error("uninstall left the units")
			}
		})
	}
}

// TestPrepareEnvIsSecret: the prepare hook's output (credentials, ports)
// is written 0600: systemd reads it as root, nobody else needs to.
func TestPrepareEnvIsSecret(t *testing.T) {
	out := filepath.Join(t.TempDir(), "prepare.env")
	if code, _, stderr := run(t, "prepare", "--output", out, "--", "/bin/sh", "-c", "echo TOKEN=s3cret"); code != 0 {
		t.Fatalf("prepare: %d %s", code, stderr)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("prepare.env mode %o, want 600", fi.Mode().Perm())
	}
}

// TestUserWithoutManager: --user without a user service manager to talk
// to says what is missing and how to get one, in one line, for every
// verb that has --user, and install writes nothing. Before, the D-Bus
// library tried to start a bus of its own: `exec: "dbus-launch":
// executable file not found in $PATH`. reload and scale need no manager
// (they call the group's supervisor): without one, no group runs, which
// they say (reload of every group skips it, scale saves the amount), with
// what is missing.
func TestUserWithoutManager(t *testing.T) {
	home := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	for _, tc := range []struct{ name, runtimeDir, want string }{
		{"no XDG_RUNTIME_DIR", "", "--user: no service manager of user "},
		{"no bus in XDG_RUNTIME_DIR", t.TempDir(), "--user: no service manager of user "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_RUNTIME_DIR", tc.runtimeDir)
			for _, v := range []struct {
				args []string
				code int
			}{
				{[]string{"install", "--user", "--binary", "/usr/bin/powerhouse", cfg}, ExitFailure},
				{[]string{"status", "--user", "--config", cfg}, ExitFailure},
				{[]string{"reload", "--user", "--config", cfg}, ExitOK},
				{[]string{"reload", "--user", "--config", cfg, "w"}, ExitFailure},
				{[]string{"start", "--user"}, ExitFailure},
				{[]string{"stop", "--user"}, ExitFailure},
				{[]string{"scale", "--user", "--config", cfg, "w", "1"}, ExitOK},
			} {
				code, _, stderr := runWithin(t, 10*time.Second, v.args...)
				if code != v.code || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "loginctl enable-linger") || strings.Count(stderr, "\n") != 1 {
					t.Errorf("%q: exit %d, stderr %q; want %d and one line %q", v.args, code, stderr, v.code, tc.want)
				}
			}
			if _, err := os.Stat(filepath.Join(home, ".config")); !os.IsNotExist(err) {
				t.Errorf("install --user wrote under %s without a service manager", home)
			}
		})
	}
}

// TestUserConfigDefault: with --user and no --config, the verbs act on
// the configuration install --user wrote (~/.config/powerhouse), not on
// the system's /etc/powerhouse/powerhouse.toml.
func TestUserConfigDefault(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	cfg := filepath.Join(home, ".config", "powerhouse", "powerhouse.toml")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "install", "--user", "--root", filepath.Join(t.TempDir(), "root"), "--binary", "/usr/bin/powerhouse"); code != 0 {
		t.Errorf("install --user without CONFIG: exit %d, stderr %q; want the user's installed configuration", code, stderr)
	}
	for _, args := range [][]string{
		{"status", "--user", "nosuch"},
		{"reload", "--user", "nosuch"},
		{"set", "--user", "nosuch", "k=1"},
		{"scale", "--user", "nosuch", "2"},
	} {
		code, _, stderr := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, `no group "nosuch"`) || !strings.Contains(stderr, cfg) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and no group \"nosuch\" in %s", args, code, stderr, cfg)
		}
	}
}

// TestEmptyRoot: --root "" (an unset variable: --root "$DESTDIR") is a
// usage error, not the live system, for install and uninstall.
func TestEmptyRoot(t *testing.T) {
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	cfg := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", t.TempDir())
	// --user keeps the old behaviour away from the host's /etc: it fails
	// to connect to a user manager rather than installing anything.
	for _, args := range [][]string{
		{"install", "--user", "--root", "", "--binary", "/usr/bin/powerhouse", cfg},
		{"install", "--user", "--root=", "--binary", "/usr/bin/powerhouse", cfg},
		{"uninstall", "--user", "--root", ""},
	} {
		code, _, stderr := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, `--root "": an empty DIR`) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and an empty DIR", args, code, stderr)
		}
	}
}

// TestNothingInstalled: the verbs that act on an installed house, run
// where none is installed, say so and how to install one, rather than
// only "no such file or directory".
func TestNothingInstalled(t *testing.T) {
	t.Setenv("HOME", t.TempDir()) // --user: the installed configuration would be in it
	for _, args := range [][]string{
		{"status", "--user"}, {"reload", "--user"}, {"set", "--user", "w", "k=1"}, {"scale", "--user", "w", "2"},
	} {
		code, _, stderr := run(t, args...)
		if code != ExitFailure || !strings.Contains(stderr, "no house is installed (powerhouse install CONFIG installs one") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// TestInstallManyGroups: the largest house a configuration may hold
// (config.MaxGroups groups, each with every unit a group can have)
// installs, reinstalls without change and uninstalls; one more group is
// refused before anything is written. Before, 10,000 groups installed
// once, and then the manifest (over units.MaxManifestEntries) refused
// every reinstall and uninstall.
func TestInstallManyGroups(t *testing.T) {
	house := func(n int) string {
		var b strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "[[worker]]\nname = \"g%d\"\nexec = \"/bin/true\"\nsticky = true\nlisten = [%d, { address = %d, proxy_protocol = true, proxy_from = [\"10.0.0.1\"] }]\n", i, 10000+2*i, 10001+2*i)
		}
		return b.String()
	}
	dir := t.TempDir()
	big := filepath.Join(dir, "big.toml")
	var plain strings.Builder // 10,000 groups in less than the size bound
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&plain, "[[worker]]\nname=\"g%d\"\nexec=\"/x\"\n", i)
	}
	if err := os.WriteFile(big, []byte(plain.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	code, _, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", big)
	if code != ExitUsage || !strings.Contains(stderr, big+":") || !strings.Contains(stderr, "10000 groups, more than 1000") {
		t.Errorf("10,000 groups: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatal("install wrote under --root for a refused configuration")
	}
	most := filepath.Join(dir, "most.toml")
	if err := os.WriteFile(most, []byte(house(config.MaxGroups)), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"install: wrote", "install: no change"} {
		code, stdout, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", most)
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("install %d of %d groups: exit %d, %s", i+1, config.MaxGroups, code, stderr)
		}
	}
	if code, stdout, stderr := run(t, "uninstall", "--root", root); code != 0 || strings.Count(stdout, "uninstall: removed") < 4*config.MaxGroups {
		t.Errorf("uninstall: exit %d, %d files removed, %s", code, strings.Count(stdout, "uninstall: removed"), stderr)
	}
}

// TestInstallTakesTheLock: install works under the lock set and scale
// take on the configuration's directory, so that neither edits the file
// while install replaces it: held by another, install waits in flock(2),
// and goes on once it is released.
func TestInstallTakesTheLock(t *testing.T) {
	root := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", cfg); code != 0 {
		t.Fatalf("first install: %d %s", code, stderr)
	}
	unlock, err := lockDir(filepath.Join(root, filepath.Dir(config.DefaultPath)))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := os.WriteFile(cfg, []byte(tinyConfig+"amount = 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := powerhouse(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", cfg)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitSyscall(t, cmd.Process.Pid, fmt.Sprintf("%d ", syscall.SYS_FLOCK))
	if b, _ := os.ReadFile(filepath.Join(root, config.DefaultPath)); strings.Contains(string(b), "amount = 2") {
		t.Error("install wrote the configuration while another held the lock")
	}
	unlock()
	if err := waitExit(t, cmd, 10*time.Second); err != nil {
		t.Fatalf("install after the lock was released: %v\n%s", err, out.String())
	}
	if b, _ := os.ReadFile(filepath.Join(root, config.DefaultPath)); !strings.Contains(string(b), "amount = 2") {
		t.Errorf("install did not write the new configuration:\n%s", b)
	}
}

// TestUserManagerPrivateSocket: a user manager reachable only on its
// private socket (no dbus-user-session, no user bus) is found, as
// units.Connect dials it; before, --user refused it for want of
// $XDG_RUNTIME_DIR/bus.
func TestUserManagerPrivateSocket(t *testing.T) {
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	dir := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", dir)
	if err := userBus(); err == nil {
		t.Fatal("userBus found a manager in an empty runtime directory")
	}
	if err := os.Mkdir(filepath.Join(dir, "systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "systemd", "private"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := userBus(); err != nil {
		t.Errorf("userBus with the manager's private socket: %v", err)
	}
}

// TestEveryWriterHasBothSides: install --root, the boot-time systemd
// generator and generate -o all write side B of each reloadable group's
// worker template (powerhouse-GROUP.b@.service) and none for a group with
// reloadable = false; install lists it in its manifest, a second install
// changes nothing, and uninstall removes it with the rest.
func TestEveryWriterHasBothSides(t *testing.T) {
	const house = "[[worker]]\nname = \"web\"\nexec = \"/bin/true\"\nsticky = true\nlisten = [80]\n" +
		"[[worker]]\nname = \"kweb\"\nexec = \"/bin/true\"\nsticky = true\ndispatch = \"kernel\"\nlisten = [\"127.0.0.1:81\"]\n" +
		"[[worker]]\nname = \"api\"\nexec = \"/bin/true\"\nlisten = [82]\n" +
		"[[worker]]\nname = \"mail\"\ntype = \"child\"\nexec = \"/bin/true\"\nreloadable = false\n"
	src := filepath.Join(t.TempDir(), "house.toml")
	if err := os.WriteFile(src, []byte(house), 0o600); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	unitDir := filepath.Join(root, "etc/systemd/system")
	genDir := t.TempDir()
	outDir := t.TempDir()
	if code, _, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", src); code != 0 {
		t.Fatalf("install: %d %s", code, stderr)
	}
	t.Setenv("POWERHOUSE_GENERATOR_CONFIG", src)
	if code, _, stderr := run(t, "systemd-generator", genDir); code != 0 {
		t.Fatalf("systemd-generator: %d %s", code, stderr)
	}
	if code, _, stderr := run(t, "generate", "-o", outDir, src); code != 0 {
		t.Fatalf("generate -o: %d %s", code, stderr)
	}
	manifest, err := os.ReadFile(filepath.Join(root, "etc/powerhouse/.installed.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		group string
		sideB bool
	}{{"web", true}, {"kweb", true}, {"api", true}, {"mail", false}} {
		g := units.Group{Name: tc.group}
		for _, s := range []units.Side{units.SideA, units.SideB} {
			want := s == units.SideA || tc.sideB
			name := g.WorkerTemplateSide(s)
			for _, dir := range []string{unitDir, genDir, outDir} {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if (err == nil) != want {
					t.Errorf("%s in %s: present %v, want %v", name, dir, err == nil, want)
					continue
				}
				if want && !strings.Contains(string(b), "POWERHOUSE_SIDE="+s.String()+" ") {
					t.Errorf("%s in %s lacks POWERHOUSE_SIDE=%s:\n%s", name, dir, s, b)
				}
			}
			if listed := strings.Contains(string(manifest), `"/etc/systemd/system/`+name+`"`); listed != want {
				t.Errorf("%s in the install manifest: %v, want %v", name, listed, want)
			}
		}
	}
	if code, stdout, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", src); code != 0 || !strings.Contains(stdout, "install: no change") {
		t.Errorf("second install: %d %s %s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, "uninstall", "--root", root); code != 0 {
		t.Fatalf("uninstall: %d %s", code, stderr)
	}
	if entries, err := os.ReadDir(unitDir); err != nil || len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("unit directory after uninstall: %v %v", names, err)
	}
}
