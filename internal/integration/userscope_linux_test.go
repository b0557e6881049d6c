package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
)

// userHouseConfig is the user's house: one sticky group of three hello
// instances on the demo's web port.
func userHouseConfig() string {
	return fmt.Sprintf(`title = "PowerHouse user house"

[[worker]]
name   = "web"
exec   = %q
amount = 3
sticky = true
reload_signal = "SIGHUP"
listen = ["127.0.0.1:9999"]
`, filepath.Join(boxBin, "hello"))
}

// userStatus is the part of `powerhouse status --json` the test reads.
type userStatus struct {
	Group      string `json:"group"`
	Amount     int    `json:"amount"`
	Supervisor struct {
		Unit  string `json:"unit"`
		State string `json:"state"`
	} `json:"supervisor"`
	Instances []struct {
		Instance int    `json:"instance"`
		Unit     string `json:"unit"`
		State    string `json:"state"`
		PID      uint32 `json:"pid"`
	} `json:"instances"`
}

// TestIntegrationUserScope: a regular user's house in that user's own
// service manager, end to end, with the same verbs as the system's
// (issue 12, section 2): `powerhouse install --user --now` of the
// configuration in ~/.config/powerhouse, stickiness from 10 source
// addresses, `systemctl --user reload powerhouse@web` with no failed
// request under load, `powerhouse status --user --json`, and `powerhouse
// uninstall --user`, after which the user's units are gone.
//
// The user and its manager exist in the test systemd alone
// (sdbox.Box.UserManager: useradd in the box's private /etc, then
// user@UID.service started directly, as logind is masked there).
func TestIntegrationUserScope(t *testing.T) {
	h := bootHouse(t, sdbox.Options{UserManagers: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	u, err := h.box.UserManager(ctx, "phuser")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("user phuser: uid %d, home %s, runtime dir %s, user bus %v", u.UID(), u.Home(), u.RuntimeDir(), u.HasBus())

	// ph runs the CLI as the user; journal is what the box's journal says
	// about the user's house, for failure messages.
	ph := func(args ...string) (string, error) {
		out, err := u.Run(ctx, filepath.Join(boxBin, "powerhouse"), args...)
		return string(out), err
	}
	journal := func() string {
		out, err := h.run("journalctl", "--no-pager", "-n", "80", "-o", "short-monotonic", "_UID="+fmt.Sprint(u.UID()))
		if err != nil {
			return fmt.Sprintf("%v\n%s", err, out)
		}
		return out
	}
	userctl := func(args ...string) string {
		t.Helper()
		out, err := u.Systemctl(ctx, args...)
		if err != nil {
			t.Fatalf("systemctl --user %s: %v\n%s\njournal:\n%s", strings.Join(args, " "), err, out, journal())
		}
		return strings.TrimSpace(string(out))
	}
	show := func(unit, prop string) string {
		out, _ := u.Systemctl(ctx, "show", "-p", prop, "--value", unit)
		return strings.TrimSpace(string(out))
	}

	cfg := u.Home() + "/.config/powerhouse/powerhouse.toml"
	if err := u.WriteFile(ctx, cfg, []byte(userHouseConfig()), 0o600); err != nil {
		t.Fatal(err)
	}
	// No CONFIG: with --user, the installed configuration is
	// ~/.config/powerhouse/powerhouse.toml, as --config's help says.
	if out, err := ph("install", "--user", "--now"); err != nil {
		t.Fatalf("powerhouse install --user --now: %v\n%s\njournal:\n%s", err, out, journal())
	}
	for _, unit := range []string{"powerhouse.target", "powerhouse@web.service", "powerhouse-web@1.service",
		"powerhouse-web@2.service", "powerhouse-web@3.service"} {
		if got := show(unit, "ActiveState"); got != "active" {
			t.Fatalf("%s is %q after install --user --now\njournal:\n%s", unit, got, journal())
		}
	}

	t.Run("sticky from 10 sources", func(t *testing.T) {
		first := stickyMap(t, 10)
		for round := 0; round < 3; round++ {
			for a, inst := range stickyMap(t, 10) {
				if inst != first[a] {
					t.Errorf("%s reached %s, then %s", a, first[a], inst)
				}
			}
		}
		for a, inst := range first {
			if !strings.HasPrefix(inst, "web@") {
				t.Errorf("%s reached %q, not a web instance", a, inst)
			}
		}
		t.Logf("instances per source: %v", first)
	})

	t.Run("systemctl --user reload under load", func(t *testing.T) {
		// The side serving each instance, and its PID: a handover
		// reload moves each instance to its other side.
		web := units.Group{Name: "web", Scope: units.User}
		serving := func(i int) (unit, pid string) {
			for _, side := range []units.Side{units.SideA, units.SideB} {
				u := web.InstanceSide(i, side)
				if show(u, "ActiveState") == "active" {
					return u, show(u, "MainPID")
				}
			}
			return web.Instance(i), "0"
		}
		before := map[int]string{}
		for i := 1; i <= 3; i++ {
			_, before[i] = serving(i)
		}
		var addrs []string
		for i := 0; i < 10; i++ {
			addrs = append(addrs, clientAddr(i))
		}
		fresh := startLoad(webURL, addrs, false)
		kept := startLoad(webURL, addrs, true)
		fresh.waitServed(t, 100)
		kept.waitServed(t, 100)
		start := time.Now()
		out, err := u.Systemctl(ctx, "reload", "powerhouse@web.service")
		took := time.Since(start)
		if err == nil {
			fresh.waitServed(t, 100)
			kept.waitServed(t, 100)
		}
		fresh.finish()
		kept.finish()
		if err != nil {
			t.Fatalf("systemctl --user reload powerhouse@web: %v\n%s\njournal:\n%s", err, out, journal())
		}
		if n := fresh.failed.Load() + kept.failed.Load(); n != 0 {
			t.Errorf("%d requests failed during the reload: %v %v", n, fresh.failures, kept.failures)
		}
		for i, pid := range before {
			if unit, now := serving(i); now == pid || now == "0" {
				t.Errorf("instance %d (%s): PID %s before, %s after the reload", i, unit, pid, now)
			}
		}
		t.Logf("reload of 3 instances took %v; served %d new-connection and %d keep-alive requests, %d failed",
			took.Round(time.Millisecond), fresh.ok.Load(), kept.ok.Load(), fresh.failed.Load()+kept.failed.Load())
	})

	t.Run("status --user --json", func(t *testing.T) {
		out, err := ph("status", "--user", "--json")
		if err != nil {
			t.Fatalf("powerhouse status --user --json: %v\n%s", err, out)
		}
		var st []userStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		if len(st) != 1 || st[0].Group != "web" || st[0].Supervisor.State != "active" || len(st[0].Instances) != 3 {
			t.Fatalf("status --user --json: want group web, its supervisor active, 3 instances:\n%s", out)
		}
		for _, in := range st[0].Instances {
			if in.State != "active" || in.PID == 0 {
				t.Errorf("instance %d: %s, PID %d", in.Instance, in.State, in.PID)
			}
		}
	})

	// Uninstall: the house stops and the user's units are gone.
	if out, err := ph("uninstall", "--user"); err != nil {
		t.Fatalf("powerhouse uninstall --user: %v\n%s\njournal:\n%s", err, out, journal())
	}
	if left, _ := filepath.Glob(h.box.Path(u.Home() + "/.config/systemd/user/powerhouse*")); len(left) != 0 {
		t.Errorf("unit files left after uninstall --user: %v", left)
	}
	userctl("daemon-reload")
	for _, unit := range []string{"powerhouse.target", "powerhouse@web.service", "powerhouse-web@1.service"} {
		if got := show(unit, "LoadState") + "/" + show(unit, "ActiveState"); got != "not-found/inactive" {
			t.Errorf("%s is %s after uninstall --user, want not-found/inactive", unit, got)
		}
	}
	if out := userctl("list-units", "--all", "--plain", "--no-legend", "powerhouse*"); out != "" {
		t.Errorf("the user's manager still has units after uninstall --user:\n%s", out)
	}
	if _, err := get(client(clientAddr(0)), webURL); err == nil {
		t.Error("web still answers after uninstall --user")
	}
}
