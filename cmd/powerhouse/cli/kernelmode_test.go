package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

const kernelConfig = "[[worker]]\nname = \"web\"\nexec = \"/bin/true\"\nsticky = true\nlisten = [\"127.0.0.1:9999\"]\ndispatch = \"kernel\"\n"

// TestInstallKernelModeSysctl: a house with a kernel-mode group ships
// net.ipv4.tcp_migrate_req=1 as a sysctl.d file under the install root,
// with the supervisor's drop-in; a second install changes nothing; a
// configuration without kernel mode removes both, and so does uninstall.
// Everything happens under --root: no sysctl of this machine is touched.
func TestInstallKernelModeSysctl(t *testing.T) {
	root := t.TempDir()
	sysctl := filepath.Join(root, units.SysctlFile)
	dropIn := filepath.Join(root, "/etc/systemd/system", units.Group{Name: "web"}.KernelDropIn())
	install := func(cfg string) string {
		t.Helper()
		src := filepath.Join(t.TempDir(), "p.toml")
		os.WriteFile(src, []byte(cfg), 0o644)
		code, stdout, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", src)
		if code != 0 {
			t.Fatalf("install: %d %s", code, stderr)
		}
		return stdout
	}
	install(kernelConfig)
	b, err := os.ReadFile(sysctl)
	if err != nil || !strings.Contains(string(b), "\nnet.ipv4.tcp_migrate_req = 1\n") {
		t.Fatalf("%s: %v\n%s", sysctl, err, b)
	}
	if fi, err := os.Stat(sysctl); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("%s mode: %v %v", sysctl, fi, err)
	}
	if d, err := os.ReadFile(dropIn); err != nil || !strings.Contains(string(d), "Sockets=powerhouse-web@1.socket") {
		t.Errorf("drop-in %s: %v\n%s", dropIn, err, d)
	}
	if out := install(kernelConfig); !strings.Contains(out, "no change") {
		t.Errorf("second install:\n%s", out)
	}
	out := install(strings.Replace(kernelConfig, "dispatch = \"kernel\"\n", "", 1))
	for _, p := range []string{sysctl, dropIn} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("install without kernel mode left %s:\n%s", p, out)
		}
	}
	install(kernelConfig)
	if code, _, stderr := run(t, "uninstall", "--root", root); code != 0 {
		t.Fatalf("uninstall: %d %s", code, stderr)
	}
	for _, p := range []string{sysctl, dropIn} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("uninstall left %s", p)
		}
	}
}

// TestKernelModeUserRefused: --user refuses a kernel-mode group, naming
// the file, line and key (generate and install alike), exit status 2.
func TestKernelModeUserRefused(t *testing.T) {
	src := filepath.Join(t.TempDir(), "p.toml")
	os.WriteFile(src, []byte(kernelConfig), 0o644)
	want := src + ":6: worker.dispatch: \"kernel\" needs a system manager"
	if code, _, stderr := run(t, "install", "--user", "--root", t.TempDir(), "--binary", "/usr/bin/powerhouse", src); code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("install --user: exit %d, stderr:\n%s\nwant %q", code, stderr, want)
	}
}

// TestStatusDispatchMode: status shows a sticky group's dispatch mode,
// from the configuration, in JSON and in text, whatever the supervisor
// answered.
func TestStatusDispatchMode(t *testing.T) {
	root := t.TempDir()
	cfg := writeConfig(t, kernelConfig)
	web := supervisor.GroupStatus{
		Group: "web", Type: "cluster", Sticky: true, Amount: 1,
		Supervisor: supervisor.UnitStatus{Unit: "powerhouse@web.service", State: "active", SubState: "running", PID: 42},
		Config:     map[string]any{},
	}
	startFake(t, root, "web", map[string]fakeAnswer{supervisor.MethodStatus: {result: web}})
	code, stdout, stderr := runIn(t, root, "status", "web", "--json", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, `"dispatch_mode": "kernel"`) {
		t.Errorf("status --json: exit %d %s\n%s", code, stderr, stdout)
	}
	code, stdout, stderr = runIn(t, root, "status", "web", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "group web (cluster, sticky, dispatch kernel), 1 instance;") {
		t.Errorf("status: exit %d %s\n%s", code, stderr, stdout)
	}
}

// TestKernelModeGenerateVerify: generate -o and verify handle the
// kernel-mode supervisor drop-in, which lives in a directory of its own.
func TestKernelModeGenerateVerify(t *testing.T) {
	src := filepath.Join(t.TempDir(), "p.toml")
	os.WriteFile(src, []byte(kernelConfig), 0o644)
	out := t.TempDir()
	if code, _, stderr := run(t, "generate", "-o", out, "--binary", "/usr/bin/powerhouse", src); code != 0 {
		t.Fatalf("generate -o: %d %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, units.Group{Name: "web"}.KernelDropIn())); err != nil {
		t.Errorf("generate -o: %v", err)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not found: apt-get install systemd")
	}
	if code, _, stderr := run(t, "verify", "--binary", "/bin/true", src); code != 0 {
		t.Errorf("verify: exit %d\n%s", code, stderr)
	}
}
