package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// exitCode is the exit status of a command h.run ran, 0 when it succeeded.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("command did not run: %v", err)
	return 0
}

// TestIntegrationOperatorEdges: the command line as a new user and a
// careless operator meet it, in a real systemd: status before anything
// is installed says how to install; flags after arguments work; a user
// who is not root is told in one line that a verb needs root, and the
// running house is left as it was; --user without a user manager says
// what is missing; install and uninstall twice are calm.
func TestIntegrationOperatorEdges(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	src := h.box.Path("/run/src/demo.toml")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte(demoConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	ph := filepath.Join(boxBin, "powerhouse")

	out, err := h.powerhouse("status")
	if exitCode(t, err) != 1 || !strings.Contains(out, "no house is installed (powerhouse install CONFIG installs one") {
		t.Errorf("status before install: %v\n%s", err, out)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/demo.toml"); err != nil {
		t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
	}
	if out, err := h.powerhouse("install", "/run/src/demo.toml", "--now"); err != nil || !strings.Contains(out, "install: no change") {
		t.Errorf("second install: %v\n%s", err, out)
	}
	installed, err := os.ReadFile(filepath.Join(h.cfgDir, "powerhouse.toml"))
	if err != nil {
		t.Fatal(err)
	}

	// Flags after the positional arguments (issue 12's example).
	out, err = h.powerhouse("status", "web", "--json")
	var gs []struct {
		Group     string `json:"group"`
		Instances []struct {
			State string `json:"state"`
		} `json:"instances"`
	}
	if err != nil || json.Unmarshal([]byte(out), &gs) != nil || len(gs) != 1 || gs[0].Group != "web" {
		t.Errorf("status web --json: %v\n%s", err, out)
	}

	// Not root: one line each, nothing changed.
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ph}
	for _, args := range [][]string{
		{"set", "web", "greeting=hacked"},
		{"scale", "web", "1"},
		{"reload", "web"},
		{"stop"},
		{"start"},
		{"install", "/run/src/demo.toml"},
		{"uninstall"},
	} {
		out, err := h.run(nobody[0], append(nobody[1:], args...)...)
		if exitCode(t, err) != 1 || !strings.Contains(out, "powerhouse "+args[0]+": needs root: ") || strings.Count(out, "\n") != 1 {
			t.Errorf("%q as nobody: %v\n%s", args, err, out)
		}
	}
	// status needs no root: the configuration is root's alone, so the
	// groups come from the running house's supervisors.
	out, err = h.run(nobody[0], append(nobody[1:], "status", "--json")...)
	var seen []struct {
		Group string `json:"group"`
	}
	if err != nil || json.Unmarshal([]byte(out), &seen) != nil || len(seen) != 3 {
		t.Errorf("status --json as nobody: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(h.cfgDir, "powerhouse.toml")); string(got) != string(installed) {
		t.Error("the installed configuration changed after the refused verbs")
	}
	if got := h.show("powerhouse.target", "ActiveState"); got != "active" {
		t.Errorf("powerhouse.target %s after the refused verbs", got)
	}
	for i := 1; i <= 4; i++ {
		if got := h.show(units.Group{Name: "web"}.Instance(i), "ActiveState"); got != "active" {
			t.Errorf("powerhouse-web@%d %s after the refused verbs", i, got)
		}
	}

	// --user where the user has no service manager.
	out, err = h.powerhouse("start", "--user")
	if exitCode(t, err) != 1 || !strings.Contains(out, "--user: no service manager of user root is running") || strings.Count(out, "\n") != 1 {
		t.Errorf("start --user without a user manager: %v\n%s", err, out)
	}

	// scale of a group that does not run saves the amount and says so.
	if out, err := h.powerhouse("stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	out, err = h.powerhouse("scale", "web", "2")
	if err != nil || !strings.Contains(out, "scale web: 2 instances saved in /etc/powerhouse/powerhouse.toml; the group is not running") {
		t.Errorf("scale of a stopped group: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(h.cfgDir, "powerhouse.toml")); !strings.Contains(string(got), "amount = 2") {
		t.Errorf("scale of a stopped group did not save the amount:\n%s", got)
	}
	out, err = h.powerhouse("reload", "web")
	if exitCode(t, err) != 1 || !strings.Contains(out, "powerhouse reload: group web is not running (powerhouse@web.service is inactive): nothing to reload") {
		t.Errorf("reload of a stopped group: %v\n%s", err, out)
	}
	out, err = h.powerhouse("reload")
	if err != nil || !strings.Contains(out, "reload web: not running (powerhouse@web.service is inactive), skipped") {
		t.Errorf("reload of a stopped house: %v\n%s", err, out)
	}
	if got := h.show("powerhouse-web@1.service", "ActiveState"); got != "inactive" {
		t.Errorf("reload of a stopped group left powerhouse-web@1 %s", got)
	}
	out, err = h.powerhouse("scale", "web", "3", "--timeout", "0")
	if exitCode(t, err) != 2 || !strings.Contains(out, "--timeout must be more than 0") {
		t.Errorf("scale --timeout 0: %v\n%s", err, out)
	}

	if out, err := h.powerhouse("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if out, err := h.powerhouse("uninstall"); err != nil || !strings.Contains(out, "uninstall: nothing installed") {
		t.Errorf("second uninstall: %v\n%s", err, out)
	}
}

// TestIntegrationConcurrentEdits: set and scale run at the same time on
// one group keep every change: each edits the configuration under a lock
// on its directory. Before, of ten parallel sets one key was kept, and
// each command said it had saved its own.
func TestIntegrationConcurrentEdits(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	src := h.box.Path("/run/src/demo.toml")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte(demoConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/demo.toml"); err != nil {
		t.Fatalf("install --now: %v\n%s", err, out)
	}
	const n = 10
	var wg sync.WaitGroup
	errs := make(chan string, n+1)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if out, err := h.powerhouse("set", "mail", fmt.Sprintf("k%d=%d", i, i)); err != nil {
				errs <- fmt.Sprintf("set k%d: %v\n%s", i, err, out)
			}
		}(i)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if out, err := h.powerhouse("scale", "mail", "2"); err != nil {
			errs <- fmt.Sprintf("scale: %v\n%s", err, out)
		}
	}()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	b, err := os.ReadFile(filepath.Join(h.cfgDir, "powerhouse.toml"))
	if err != nil {
		t.Fatal(err)
	}
	var lost []string
	for i := 0; i < n; i++ {
		if !strings.Contains(string(b), fmt.Sprintf("k%d = %d\n", i, i)) {
			lost = append(lost, fmt.Sprintf("k%d", i))
		}
	}
	if len(lost) > 0 || !strings.Contains(string(b), "amount = 2") {
		t.Errorf("lost %v (amount = 2 kept: %v):\n%s", lost, strings.Contains(string(b), "amount = 2"), b)
	}
	// The group's config.json, written under the same lock, ends as the
	// file does.
	j, err := os.ReadFile(h.box.Path("/run/powerhouse/mail/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if !strings.Contains(string(j), fmt.Sprintf("\"k%d\": %d", i, i)) {
			t.Errorf("config.json lacks k%d:\n%s", i, j)
		}
	}
}
