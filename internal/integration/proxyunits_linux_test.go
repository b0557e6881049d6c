package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// proxyHouseConfig is a sticky group with one direct and one PROXY
// listener, trusting only 127.0.0.1 to send PROXY headers, and a stop
// timeout of "0", which systemd reads as infinity.
func proxyHouseConfig() string {
	return fmt.Sprintf(`title = "PowerHouse PROXY units"

[[worker]]
name   = "web"
exec   = %q
amount = 2
sticky = true
listen = [
  "127.0.0.1:9999",
  { address = %q, proxy_protocol = true, proxy_from = ["127.0.0.1"], name = "proxied" },
]
[worker.service]
timeout_stop = "0"
`, filepath.Join(boxBin, "hello"), proxyAddr)
}

// TestIntegrationProxyUnits runs a house whose group has a direct and a
// PROXY listener in a real systemd, its configuration at a path with a
// space, and checks that:
//
//   - the PROXY listener has a unit of its own, powerhouse-proxy@web.socket,
//     carrying IPAddressAllow=/IPAddressDeny=, while the direct one's unit
//     has no address filter;
//   - the supervisor gets the sockets of both units (LISTEN_FDNAMES), when
//     the target starts it and when it is restarted alone, and dispatches
//     connections from both;
//   - the kernel filter works: a peer outside proxy_from cannot connect to
//     the PROXY listener, and can to the direct one;
//   - timeout_stop = "0" gives TimeoutStopSec=infinity and Go workers that
//     start (they refused POWERHOUSE_STOP_TIMEOUT=0s);
//   - Documentation= keeps the link to the configuration (percent-encoded),
//     and `powerhouse verify` (systemd-analyze verify) finds nothing.
func TestIntegrationProxyUnits(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	const cfgPath = "/etc/powerhouse/my house.toml"
	hostCfg := filepath.Join(h.cfgDir, filepath.Base(cfgPath))
	if err := os.WriteFile(hostCfg, []byte(proxyHouseConfig()), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(hostCfg)
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = c
	o := generator.Options{Binary: filepath.Join(boxBin, "powerhouse"), ConfigPath: cfgPath}
	us, err := generator.Generate(c, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range us {
		if err := os.WriteFile(h.box.Path("/etc/systemd/system/"+u.Name), u.Render(o), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", units.Target)

	proxyUnit, publicUnit := units.Group{Name: "web"}.ProxySocket(), units.Group{Name: "web"}.PublicSocket()
	if got, want := generator.GroupSockets(c.Worker("web")), []string{publicUnit, proxyUnit}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("GroupSockets = %v, want %v", got, want)
	}

	t.Run("the PROXY unit filters by address, the direct one does not", func(t *testing.T) {
		for _, tc := range []struct{ unit, prop, want string }{
			{proxyUnit, "ActiveState", "active"},
			{proxyUnit, "IPAddressAllow", "127.0.0.1/32"},
			{proxyUnit, "IPAddressDeny", "0.0.0.0/0 ::/0"},
			{proxyUnit, "Triggers", units.Group{Name: "web"}.SupervisorUnit()},
			{publicUnit, "ActiveState", "active"},
			{publicUnit, "IPAddressDeny", ""},
			{publicUnit, "IPAddressAllow", ""},
		} {
			// systemd lists these sets in no fixed order.
			if got := sortedWords(h.show(tc.unit, tc.prop)); got != sortedWords(tc.want) {
				t.Errorf("%s %s=%q, want %q", tc.unit, tc.prop, got, tc.want)
			}
		}
		if got := h.show(units.Target, "Wants"); !strings.Contains(got, proxyUnit) {
			t.Errorf("%s Wants=%s, without %s", units.Target, got, proxyUnit)
		}
	})

	// The supervisor gets both units' sockets, by name.
	supervisorFDs := func(t *testing.T) {
		t.Helper()
		unit := units.Group{Name: "web"}.SupervisorUnit()
		waitFor(t, 20*time.Second, unit+" active", func() bool { return h.show(unit, "ActiveState") == "active" })
		pid := h.show(unit, "MainPID")
		env, err := h.run("cat", "/proc/"+pid+"/environ")
		if err != nil {
			t.Fatalf("environment of %s (PID %s): %v %s", unit, pid, err, env)
		}
		vars := map[string]string{}
		for _, kv := range strings.Split(env, "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				vars[k] = v
			}
		}
		// In no fixed order: the supervisor matches sockets by address.
		names := strings.Split(vars["LISTEN_FDNAMES"], ":")
		sort.Strings(names)
		if vars["LISTEN_FDS"] != "2" || strings.Join(names, ":") != "proxy:public" {
			t.Errorf("supervisor got LISTEN_FDS=%q LISTEN_FDNAMES=%q, want 2, public and proxy", vars["LISTEN_FDS"], vars["LISTEN_FDNAMES"])
		}
	}
	// Both listeners dispatch: a direct client, and a PROXY client whose
	// header names the client the worker sees.
	dispatches := func(t *testing.T) {
		t.Helper()
		r, err := get(client("127.0.0.2"), webURL)
		if err != nil {
			t.Fatalf("direct listener: %v\n%s", err, h.journal())
		}
		if !strings.HasPrefix(r.Instance, "web@") || !strings.HasPrefix(r.Remote, "127.0.0.2:") {
			t.Errorf("direct listener: instance %q remote %q", r.Instance, r.Remote)
		}
		src := netip.MustParseAddrPort("203.0.113.7:41000")
		got := proxyGet(t, []byte(fmt.Sprintf("PROXY TCP4 %s 127.0.0.1 %d 9997\r\n", src.Addr(), src.Port())))
		if !strings.Contains(got, "remote="+src.String()) {
			t.Errorf("PROXY listener: worker answered %q, want remote=%s", got, src)
		}
	}

	t.Run("the supervisor gets both units' sockets and dispatches both", func(t *testing.T) {
		supervisorFDs(t)
		dispatches(t)
	})

	t.Run("and again after a restart of the supervisor alone", func(t *testing.T) {
		old := h.show(units.Group{Name: "web"}.SupervisorUnit(), "MainPID")
		h.systemctl("restart", units.Group{Name: "web"}.SupervisorUnit())
		if pid := h.show(units.Group{Name: "web"}.SupervisorUnit(), "MainPID"); pid == old {
			t.Fatalf("supervisor PID %s unchanged after restart", pid)
		}
		supervisorFDs(t)
		dispatches(t)
	})

	t.Run("a peer outside proxy_from cannot reach the PROXY listener", func(t *testing.T) {
		// 127.0.0.5 is not in proxy_from: systemd's BPF filter drops its
		// SYN, so the connection never completes. The same peer reaches
		// the direct listener.
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
		if c, err := d.Dial("tcp", proxyAddr); err == nil {
			c.Close()
			t.Errorf("127.0.0.5 connected to %s, want it filtered by IPAddressDeny=any", proxyAddr)
		}
		c, err := d.Dial("tcp", "127.0.0.1:9999")
		if err != nil {
			t.Fatalf("127.0.0.5 cannot reach the direct listener: %v", err)
		}
		c.Close()
	})

	t.Run("timeout_stop 0 is infinity, and Go workers start", func(t *testing.T) {
		for n := 1; n <= 2; n++ {
			unit := units.Group{Name: "web"}.Instance(n)
			if got := h.show(unit, "ActiveState"); got != "active" {
				t.Errorf("%s: %s (NRestarts=%s)", unit, got, h.show(unit, "NRestarts"))
			}
			if got := h.show(unit, "NRestarts"); got != "0" {
				t.Errorf("%s restarted %s times", unit, got)
			}
			if got := h.show(unit, "TimeoutStopUSec"); got != "infinity" {
				t.Errorf("%s TimeoutStopUSec=%s, want infinity", unit, got)
			}
			if got := h.show(unit, "Environment"); !strings.Contains(got, "POWERHOUSE_STOP_TIMEOUT=2562047h") {
				t.Errorf("%s Environment=%s", unit, got)
			}
		}
	})

	t.Run("Documentation keeps the link to a configuration path with a space", func(t *testing.T) {
		want := "file:///etc/powerhouse/my%20house.toml"
		for _, u := range []string{units.Target, units.Group{Name: "web"}.SupervisorUnit()} {
			if got := strings.Trim(h.show(u, "Documentation"), `"`); got != want {
				t.Errorf("%s Documentation=%s, want %s", u, got, want)
			}
		}
		out, err := h.powerhouse("verify", "--binary", filepath.Join(boxBin, "powerhouse"), cfgPath)
		if err != nil || !strings.Contains(out, "OK") || strings.Contains(out, "Invalid URL") {
			t.Errorf("powerhouse verify: %v\n%s", err, out)
		}
	})
}

func sortedWords(s string) string {
	w := strings.Fields(s)
	sort.Strings(w)
	return strings.Join(w, " ")
}

// TestIntegrationProxyListenerInstall: install --now on a running house
// applies a PROXY listener added to a group (its address moves out of the
// group's direct socket unit into the new PROXY unit, which starts, and the
// supervisor gets both) and removed again (the PROXY unit is stopped and
// its file removed, the address freed).
func TestIntegrationProxyListenerInstall(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	src := h.box.Path("/run/src/house.toml")
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	direct := fmt.Sprintf("[[worker]]\nname = \"web\"\nexec = %q\namount = 2\nsticky = true\nlisten = [\"127.0.0.1:9999\", \"127.0.0.1:9997\"]\n", filepath.Join(boxBin, "hello"))
	proxied := strings.Replace(direct, `"127.0.0.1:9997"]`, `{ address = "127.0.0.1:9997", proxy_protocol = true, proxy_from = ["127.0.0.1"] }]`, 1)
	install := func(cfg string) {
		t.Helper()
		if err := os.WriteFile(src, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := h.powerhouse("install", "--now", "/run/src/house.toml"); err != nil {
			t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
		}
	}
	proxyUnit := units.Group{Name: "web"}.ProxySocket()

	install(direct)
	if got := h.show(proxyUnit, "LoadState"); got != "not-found" {
		t.Errorf("%s LoadState=%s before any PROXY listener", proxyUnit, got)
	}

	install(proxied)
	if got := h.show(proxyUnit, "ActiveState"); got != "active" {
		t.Fatalf("%s %s after install --now added a PROXY listener\n%s", proxyUnit, got, h.journal())
	}
	src4 := netip.MustParseAddrPort("198.51.100.4:4000")
	if got := proxyGet(t, []byte(fmt.Sprintf("PROXY TCP4 %s 127.0.0.1 %d 9997\r\n", src4.Addr(), src4.Port()))); !strings.Contains(got, "remote="+src4.String()) {
		t.Errorf("PROXY listener after install: worker answered %q", got)
	}
	if r, err := get(client("127.0.0.2"), webURL); err != nil || !strings.HasPrefix(r.Remote, "127.0.0.2:") {
		t.Errorf("direct listener after install: %v %+v", err, r)
	}

	install(direct)
	if got := h.show(proxyUnit, "ActiveState"); got != "inactive" {
		t.Errorf("%s %s after its listener was removed", proxyUnit, got)
	}
	if _, err := os.Stat(h.box.Path("/etc/systemd/system/" + proxyUnit)); !os.IsNotExist(err) {
		t.Errorf("%s still installed: %v", proxyUnit, err)
	}
	// 9997 is a direct listener again: a plain HTTP client is served there.
	if r, err := get(client("127.0.0.3"), "http://"+proxyAddr+"/"); err != nil || !strings.HasPrefix(r.Remote, "127.0.0.3:") {
		t.Errorf("127.0.0.1:9997 as a direct listener again: %v %+v", err, r)
	}
}
