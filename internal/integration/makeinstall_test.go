package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestMakeInstall: make install honours PREFIX and DESTDIR and installs the
// binary, the generator link and the journal catalog.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dest := t.TempDir()
	cmd := exec.Command("make", "install", "DESTDIR="+dest, "PREFIX=/usr")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	if info, err := os.Stat(filepath.Join(dest, "usr/bin/powerhouse")); err != nil || info.Mode()&0o111 == 0 {
		t.Errorf("binary: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(dest, "usr/lib/systemd/system-generators/powerhouse-generator")); err != nil || l != "/usr/bin/powerhouse" {
		t.Errorf("generator link: %q %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(dest, "usr/lib/systemd/catalog/powerhouse.catalog")); err != nil {
		t.Errorf("catalog: %v", err)
	}
}
