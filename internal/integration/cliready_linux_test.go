package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/internal/sdbox"
)

// TestIntegrationInstallNotReady: install --now fails when a group's
// supervisor cannot start, naming its unit, its state and the line of its
// journal that says why (issue 12: a user install whose supervisor could
// not create /run/powerhouse was reported as installed, exit status 0).
// The supervisor here is a script in place of powerhouse that fails as
// that one did; the rest is the real house in a real systemd.
func TestIntegrationInstallNotReady(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	src := h.box.Path("/run/src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	why := "powerhouse supervise: group web: mkdir /run/powerhouse: permission denied"
	script := "#!/bin/sh\ncase \"$1\" in supervise) echo '" + why + "' >&2; exit 1;; esac\nexec " + filepath.Join(boxBin, "powerhouse") + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(src, "powerhouse"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := "[[worker]]\nname = \"web\"\nexec = \"" + filepath.Join(boxBin, "hello") + "\"\n"
	if err := os.WriteFile(filepath.Join(src, "p.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := h.powerhouse("install", "--now", "--binary", "/run/src/powerhouse", "/run/src/p.toml")
	if exitCode(t, err) != 1 {
		t.Fatalf("install --now of a house whose supervisor cannot start: %v, want exit status 1\n%s", err, out)
	}
	for _, want := range []string{"powerhouse install: group web is not ready: powerhouse@web.service is ", "result exit-code", "journalctl -u powerhouse@web.service", "    " + why} {
		if !strings.Contains(out, want) {
			t.Errorf("install --now output lacks %q:\n%s", want, out)
		}
	}
}
