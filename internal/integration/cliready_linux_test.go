package integration

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
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

// TestIntegrationSupervisorDoesNotAnswer: a group whose supervisor unit
// runs but does not answer on its control socket (here: the socket is
// gone) is a failure of reload, scale and set, which name the unit, its
// state and the socket, and not a group at rest; the CLI does not carry
// the operation out behind its supervisor's back (before, reload
// restarted the instances itself).
func TestIntegrationSupervisorDoesNotAnswer(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	cfg := "[[worker]]\nname = \"web\"\namount = 2\nlisten = [\"127.0.0.1:9999\"]\nexec = \"" + filepath.Join(boxBin, "hello") + "\"\n"
	if err := os.MkdirAll(h.box.Path("/run/src"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.box.Path("/run/src/p.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/p.toml"); err != nil {
		t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
	}
	g := units.Group{Name: "web"}
	if err := os.Remove(h.box.Path(g.ControlPath())); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	pid := h.show(g.Instance(1), "MainPID")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"reload", "web"}, "powerhouse reload: group web: its supervisor does not answer (powerhouse@web.service is active, but nothing answers on /run/powerhouse/web/control.sock)"},
		{[]string{"reload"}, "powerhouse reload: group web: its supervisor does not answer"},
		{[]string{"scale", "web", "3"}, "powerhouse scale: group web: 3 instances saved in /etc/powerhouse/powerhouse.toml; its supervisor does not answer (powerhouse@web.service is active"},
		{[]string{"set", "web", "k=1"}, "powerhouse set: group web: k saved in /etc/powerhouse/powerhouse.toml; its supervisor does not answer (powerhouse@web.service is active"},
	} {
		out, err := h.powerhouse(tc.args...)
		if exitCode(t, err) != 1 || !strings.Contains(out, tc.want) || strings.Count(out, "\n") != 1 {
			t.Errorf("%q: %v\n%s\nwant exit status 1 and one line %q", tc.args, err, out, tc.want)
		}
	}
	if got := h.show(g.Instance(1), "MainPID"); got != pid {
		t.Errorf("%s was restarted (PID %s -> %s) though its supervisor did not answer", g.Instance(1), pid, got)
	}
}

// TestIntegrationStatusFindsHouse: status without --config, where no
// configuration is installed at the default path (a house generated for
// another path, as a package or the systemd generator with
// POWERHOUSE_GENERATOR_CONFIG makes it), reads the configuration its
// supervisors run with (their ExecStart= --config) instead of failing.
func TestIntegrationStatusFindsHouse(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	cfg := "[[worker]]\nname = \"web\"\namount = 2\nexec = \"" + filepath.Join(boxBin, "hello") + "\"\n\n[[worker]]\nname = \"api\"\nexec = \"" + filepath.Join(boxBin, "hello") + "\"\n"
	if err := os.MkdirAll(h.box.Path("/run/src"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.box.Path("/run/src/house.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("generate", "-o", "/etc/systemd/system", "/run/src/house.toml"); err != nil {
		t.Fatalf("generate: %v\n%s", err, out)
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", "powerhouse.target")
	out, err := h.powerhouse("status", "--json")
	var gs []struct {
		Group     string `json:"group"`
		Type      string `json:"type"`
		Amount    int    `json:"amount"`
		Instances []struct {
			State string `json:"state"`
		} `json:"instances"`
	}
	if err != nil || json.Unmarshal([]byte(out), &gs) != nil {
		t.Fatalf("status --json without an installed configuration: %v\n%s", err, out)
	}
	if len(gs) != 2 || gs[0].Group != "web" || gs[1].Group != "api" || gs[0].Type != "cluster" || gs[0].Amount != 2 || len(gs[0].Instances) != 2 {
		t.Errorf("status --json: %+v, want web (2 instances) and api in the order of /run/src/house.toml\n%s", gs, out)
	}
}
