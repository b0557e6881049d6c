package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobodyBinary copies this test binary into a directory the user nobody
// can enter (go test's own is root's alone) and returns the directory;
// the binary is "powerhouse" there.
func nobodyBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run commands as the user nobody")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "powerhouse-cli-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // MkdirTemp makes it 0700
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "powerhouse"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestNonRoot: a verb that changes the system's services, run by a user
// who is not root, says in one line that it needs root (sudo, or
// --user), and touches nothing; reading the root-only configuration says
// to use sudo. Before, each failed its own way: "connect to systemd",
// "write ...: permission denied", "Unit polkit.service is masked".
func TestNonRoot(t *testing.T) {
	dir := nobodyBinary(t)
	cfg := filepath.Join(dir, "p.toml") // readable by nobody, writable by root alone
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret.toml") // as install writes it
	if err := os.WriteFile(secret, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(dir, "pkg") // a package tree nobody may write
	if err := os.Mkdir(pkg, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pkg, 0o777); err != nil { // not subject to the umask
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"install", "--binary", "/usr/bin/powerhouse", cfg}, 1, "powerhouse install: needs root"},
		{[]string{"uninstall"}, 1, "powerhouse uninstall: needs root"},
		{[]string{"set", "--config", cfg, "w", "k=1"}, 1, "powerhouse set: needs root"},
		{[]string{"scale", "--config", cfg, "w", "2"}, 1, "powerhouse scale: needs root"},
		{[]string{"reload", "--config", cfg}, 1, "powerhouse reload: needs root"},
		{[]string{"start"}, 1, "powerhouse start: needs root"},
		{[]string{"stop"}, 1, "powerhouse stop: needs root"},
		{[]string{"status", "--config", secret}, 1, "permission denied (run it as root, with sudo)"},
		{[]string{"install", "--root", pkg, "--binary", "/usr/bin/powerhouse", cfg}, 0, ""},
	} {
		cmd := powerhouse(t, tc.args...)
		cmd.Path = filepath.Join(dir, "powerhouse")
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := cmd.ProcessState.ExitCode()
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) || tc.code != 0 && strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%q as nobody: exit %d (%v), stderr %q; want %d and one line %q", tc.args, code, err, stderr.String(), tc.code, tc.want)
		}
	}
	if b, _ := os.ReadFile(cfg); string(b) != tinyConfig {
		t.Errorf("the configuration changed:\n%s", b)
	}
}
