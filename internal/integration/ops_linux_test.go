package integration

import (
	"encoding/json"
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func pidsOf(h *house, group string, n int) map[int]string {
	m := map[int]string{}
	for i := 1; i <= n; i++ {
		_, m[i] = servingSide(h, units.Group{Name: group}, i)
	}
	return m
}

// servingSide is the unit that serves instance n (the side that is
// active: a handover reload alternates between them) and its main PID;
// side A and "0" when neither is active.
func servingSide(h *house, g units.Group, n int) (unit, pid string) {
	for _, side := range []units.Side{units.SideA, units.SideB} {
		u := g.InstanceSide(n, side)
		if h.show(u, "ActiveState") == "active" {
			return u, h.show(u, "MainPID")
		}
	}
	return g.Instance(n), "0"
}

// TestIntegrationReloadUnderLoad: a rolling reload of a sticky group and of
// a shared-socket group while new and kept-alive requests keep flowing
// loses no request, and every instance ends with a new process.
func TestIntegrationReloadUnderLoad(t *testing.T) {
	cfg := strings.Replace(demoConfig(t), `listen = ["127.0.0.1:9998"]`, "listen = [\"127.0.0.1:9998\"]\namount = 4", 1)
	h := newHouse(t, cfg)
	h.systemctl("start", "powerhouse.target")
	for _, tc := range []struct{ group, url string }{{"web", webURL}, {"api", apiURL}} {
		t.Run(tc.group, func(t *testing.T) {
			before := pidsOf(h, tc.group, 4)
			var addrs []string
			for i := 0; i < 8; i++ {
				addrs = append(addrs, clientAddr(i))
			}
			fresh := startLoad(tc.url, addrs, false)
			kept := startLoad(tc.url, addrs, true)
			fresh.waitServed(t, 100)
			kept.waitServed(t, 100)
			start := time.Now()
			h.systemctl("reload", units.Group{Name: tc.group}.SupervisorUnit())
			took := time.Since(start)
			fresh.waitServed(t, 100)
			kept.waitServed(t, 100)
			fresh.finish()
			kept.finish()
			if n := fresh.failed.Load() + kept.failed.Load(); n != 0 {
				t.Errorf("%d requests failed during the reload: %v %v", n, fresh.failures, kept.failures)
				if os.Getenv("POWERHOUSE_TEST_DEBUG") != "" {
					j, _ := h.run("journalctl", "--no-pager", "-o", "short-precise", "-u", units.Group{Name: tc.group}.InstancePattern(), "-u", units.Group{Name: tc.group}.SupervisorUnit())
					t.Logf("journal:\n%s", j)
				}
			}
			after := pidsOf(h, tc.group, 4)
			for i, p := range before {
				if after[i] == p || after[i] == "0" {
					t.Errorf("instance %d: PID %s before, %s after the reload", i, p, after[i])
				}
			}
			t.Logf("reload of 4 instances took %v; served %d new-connection and %d keep-alive requests, 0 failed",
				took.Round(time.Millisecond), fresh.ok.Load(), kept.ok.Load())
		})
	}
	t.Run("not reloadable", func(t *testing.T) {
		out, err := h.powerhouse("reload", "--config", boxConfig, "mail")
		if err == nil || !strings.Contains(out, "not reloadable") {
			t.Errorf("reload of a reloadable = false group: %v %s", err, out)
		}
	})
}

// TestIntegrationReloadNeverReady: an instance that does not become ready
// fails the reload, which names it; the others keep their processes.
func TestIntegrationReloadNeverReady(t *testing.T) {
	hello := filepath.Join(boxBin, "hello")
	cfg := fmt.Sprintf(`
[[worker]]
name = "slow"
amount = 3
listen = ["127.0.0.1:9996"]
exec = ["/bin/sh", "-c", "if [ -e /run/never-ready ]; then exec sleep 600; fi; exec %s"]
[worker.service]
timeout_start = "2s"
`, hello)
	h := newHouse(t, cfg)
	h.systemctl("start", "powerhouse.target")
	// Seen once in CI: an instance without a main PID right after the
	// target started. Log it and wait, so the reload starts from 3 workers.
	if p := pidsOf(h, "slow", 3); p[1] == "0" || p[2] == "0" || p[3] == "0" {
		t.Logf("instances not all running right after start: %v", p)
	}
	waitFor(t, 10*time.Second, "3 running instances", func() bool {
		p := pidsOf(h, "slow", 3)
		return p[1] != "0" && p[2] != "0" && p[3] != "0"
	})
	before := pidsOf(h, "slow", 3)
	if err := os.WriteFile(h.box.Path("/run/never-ready"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := h.box.Systemctl(t.Context(), "reload", "powerhouse@slow.service")
	if err == nil {
		t.Fatalf("systemctl reload succeeded with a worker that never becomes ready:\n%s", out)
	}
	j := h.journal()
	// The handover starts instance 1's other side, which never becomes
	// ready: it is stopped, and side A keeps serving.
	slow := units.Group{Name: "slow"}
	if !strings.Contains(j, fmt.Sprintf("instance 1 (%s) did not become ready", slow.InstanceSide(1, units.SideB))) {
		t.Errorf("the failure does not name the instance; journal:\n%s", j)
	}
	after := pidsOf(h, "slow", 3)
	for _, i := range []int{1, 2, 3} {
		if after[i] != before[i] {
			t.Errorf("instance %d: PID %s became %s, want the old process kept", i, before[i], after[i])
		}
	}
}

// TestIntegrationSetScaleEvents: set reaches running workers without a
// restart and survives a supervisor restart; scale changes the running
// instances; every event lands in journald.
func TestIntegrationSetScaleEvents(t *testing.T) {
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")

	t.Run("set", func(t *testing.T) {
		before := pidsOf(h, "web", 4)
		out, err := h.powerhouse("set", "--config", boxConfig, "web", `greeting="hi"`, "mode=fast")
		if err != nil {
			t.Fatalf("set: %v\n%s", err, out)
		}
		checkConfig := func(when string) {
			out, err := h.powerhouse("status", "--config", boxConfig, "--json", "web")
			if err != nil {
				t.Fatalf("status: %v\n%s", err, out)
			}
			var st []map[string]any
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("status --json: %v\n%s", err, out)
			}
			c, _ := st[0]["config"].(map[string]any)
			if c["greeting"] != "hi" || c["mode"] != "fast" {
				t.Errorf("%s: status config = %v", when, c)
			}
		}
		checkConfig("after set")
		// The workers got it live: hello's /config shows what it read.
		waitFor(t, 5*time.Second, "workers to re-read their config", func() bool {
			for i := 0; i < 8; i++ {
				body, err := getBody(client(clientAddr(i)), webURL+"config")
				if err != nil || !strings.Contains(body, `"greeting":"hi"`) {
					return false
				}
			}
			return true
		})
		if after := pidsOf(h, "web", 4); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("set restarted workers: %v -> %v", before, after)
		}
		b, _ := os.ReadFile(filepath.Join(h.cfgDir, "powerhouse.toml"))
		if !strings.Contains(string(b), `greeting = "hi"`) {
			t.Errorf("configuration file not updated:\n%s", b)
		}
		h.systemctl("restart", "powerhouse@web.service")
		checkConfig("after a supervisor restart")
		if _, err := h.powerhouse("set", "--config", boxConfig, "web", "bad={"); err == nil {
			t.Error("a bad value was accepted")
		}
		if b2, _ := os.ReadFile(filepath.Join(h.cfgDir, "powerhouse.toml")); string(b2) != string(b) {
			t.Error("a refused set changed the configuration file")
		}
	})

	t.Run("scale", func(t *testing.T) {
		for _, n := range []int{6, 2} {
			if out, err := h.powerhouse("scale", "--config", boxConfig, "web", fmt.Sprint(n)); err != nil {
				t.Fatalf("scale %d: %v\n%s", n, err, out)
			}
			running := 0
			for i := 1; i <= 8; i++ {
				if h.show(units.Group{Name: "web"}.Instance(i), "ActiveState") == "active" {
					running++
					if i > n {
						t.Errorf("scale %d: instance %d still running", n, i)
					}
				}
			}
			if running != n {
				t.Errorf("scale %d: %d instances running", n, running)
			}
			seen := map[string]bool{}
			for i := 0; i < webClients; i++ {
				r, err := get(client(clientAddr(i)), webURL)
				if err != nil {
					t.Fatal(err)
				}
				seen[r.Instance] = true
			}
			if len(seen) != n {
				t.Errorf("scale %d: clients reached %v", n, seen)
			}
		}
	})

	t.Run("events", func(t *testing.T) {
		// The scale-down ends with the surplus instances' hand-off sockets
		// stopped by the supervisor: until then it is busy with them.
		waitFor(t, 10*time.Second, "the supervisor to finish the scale-down", func() bool {
			for i := 3; i <= 6; i++ {
				if h.show(units.Group{Name: "web"}.HandoffSocket(i), "ActiveState") != "inactive" {
					return false
				}
			}
			return true
		})
		h.systemctl("kill", "-s", "KILL", "powerhouse-web@1.service")
		defer func() {
			if t.Failed() {
				out, _ := h.run("journalctl", "--no-pager", "-o", "short-monotonic", "-u", "powerhouse@web.service", "-n", "40")
				t.Logf("the supervisor's journal:\n%s", out)
			}
		}()
		waitFor(t, 10*time.Second, "worker.stop with SIGKILL in the journal", func() bool {
			out, _ := h.run("journalctl", "--no-pager", "-o", "cat", "POWERHOUSE_EVENT=worker.stop", "POWERHOUSE_GROUP=web", "POWERHOUSE_SIGNAL=SIGKILL")
			return strings.Contains(out, "killed by SIGKILL")
		})
		h.systemctl("reload", "powerhouse@web.service")
		resp, err := client(clientAddr(0)).Post(webURL+"message", "text/plain", strings.NewReader("hello from a worker"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h.systemctl("stop", "powerhouse-web@2.service")
		h.systemctl("stop", "powerhouse@api.service")
		want := []string{"worker.start", "worker.stop", "worker.reload", "worker.shutdown", "worker.message", "master.shutdown", "master.reconfigure"}
		var missing []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, err := h.powerhouse("events", "--json")
			missing = nil
			for _, w := range want {
				if err != nil || !strings.Contains(out, `"event":"`+w+`"`) {
					missing = append(missing, w)
				}
			}
			if len(missing) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("powerhouse events --json lacks %v (err %v):\n%s", missing, err, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
