package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/powerhouse/powerhouse/internal/testenv"
	"github.com/powerhouse/powerhouse/units"
)

// TestMakeInstall: make install honours PREFIX and DESTDIR and installs the
// binary, the generator link, the journal catalog and the sysusers.d file
// (the same bytes install writes). With DESTDIR it runs no
// systemd-sysusers: the host's user database is left alone.
func TestMakeInstall(t *testing.T) {
	makeTool := testenv.Program(t, "make")
	dest := t.TempDir()
	// BIN: make build's binaries go to a directory of the test's, not to
	// the source tree's bin/.
	cmd := exec.Command(makeTool, "install", "DESTDIR="+dest, "PREFIX=/usr", "BIN="+testenv.Dir(t))
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
	if b, err := os.ReadFile(filepath.Join(dest, "usr/lib/sysusers.d/powerhouse.conf")); err != nil || !bytes.Equal(b, units.Sysusers) {
		t.Errorf("sysusers.d file: %q, %v; want %q", b, err, units.Sysusers)
	}
	if _, err := os.Stat(filepath.Join(dest, "etc")); err == nil {
		t.Errorf("make install with DESTDIR wrote %s/etc (systemd-sysusers ran?)", dest)
	}
}
