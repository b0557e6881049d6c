package integration

import (
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/testenv"
)

// TestIntegrationSetDelivery: `powerhouse set` delivers a new config the
// way each group can take it. A group without reload_signal (a Python
// worker that does not handle SIGHUP, which would end it) is restarted
// one instance at a time: new processes, none killed by a signal, the new
// config in place, readable by the workers' group alone. A group with
// reload_signal = "SIGHUP" keeps its processes. The journal gets the keys
// changed, never a value that is not public.
func TestIntegrationSetDelivery(t *testing.T) {
	py := filepath.Join(boxBin, pyWorker)
	python := testenv.Program(t, "python3")
	const pyURL = "http://127.0.0.1:9994/"
	cfg := demoConfig(t) + fmt.Sprintf(`
[[worker]]
name   = "py"
exec   = [%q, %q]
amount = 2
sticky = true
listen = ["127.0.0.1:9994"]
public_config = ["level"]
[worker.service]
group = "root"

[[worker]]
name   = "lib"
exec   = %q
amount = 2
sticky = true
listen = ["127.0.0.1:9993"]
`, python, py, filepath.Join(boxBin, "hello"))
	h := newHouse(t, cfg)
	h.systemctl("start", "powerhouse.target")
	running := func(group string, n int) func() bool {
		return func() bool {
			for _, p := range pidsOf(h, group, n) {
				if p == "0" || p == "" {
					return false
				}
			}
			return true
		}
	}
	if !waitUntil(20*time.Second, running("py", 2)) {
		j := h.journal()
		t.Fatalf("the 2 py workers did not start; journal:\n%s", j)
	}
	waitFor(t, 20*time.Second, "4 web workers", running("web", 4))

	t.Run("rolling restart without reload_signal", func(t *testing.T) {
		before := pidsOf(h, "py", 2)
		// The secret on standard input: a command line is recorded with
		// every journal entry the command writes.
		out, err := h.run("/bin/sh", "-c", `printf '"s3cret"\n' | "$0" set --config "$1" py password=- level=3`, filepath.Join(boxBin, "powerhouse"), boxConfig)
		if err != nil {
			t.Fatalf("set: %v\n%s\n%s", err, out, h.journal())
		}
		if !strings.Contains(out, "handed 2 instances over to new processes one at a time") {
			t.Errorf("set does not say it restarted the instances:\n%s", out)
		}
		after := pidsOf(h, "py", 2)
		for i := 1; i <= 2; i++ {
			unit, _ := servingSide(h, units.Group{Name: "py"}, i)
			if after[i] == before[i] || after[i] == "0" {
				t.Errorf("%s: PID %s before, %s after: want a new process", unit, before[i], after[i])
			}
			// A worker killed by SIGHUP would have been brought back by
			// Restart=always: NRestarts counts exactly those.
			if n := h.show(unit, "NRestarts"); n != "0" {
				t.Errorf("%s: NRestarts=%s: a worker died and systemd restarted it", unit, n)
			}
			if st := h.show(unit, "ActiveState"); st != "active" {
				t.Errorf("%s: %s after set", unit, st)
			}
		}
		if j, _ := h.run("journalctl", "--no-pager", "-o", "cat", "POWERHOUSE_EVENT=worker.stop", "POWERHOUSE_GROUP=py", "POWERHOUSE_SIGNAL=SIGHUP"); strings.TrimSpace(j) != "" {
			t.Errorf("py workers killed by SIGHUP:\n%s", j)
		}
		for i := 0; i < 4; i++ {
			if body, err := getBody(client(clientAddr(i)), pyURL); err != nil || !strings.HasPrefix(body, "instance=py@") {
				t.Errorf("py after set: %q %v", body, err)
			}
		}
		p := h.box.Path("/run/powerhouse/py/config.json")
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), `"password": "s3cret"`) {
			t.Errorf("config.json: %v\n%s", err, b)
		}
		// 0640 with the workers' group (root here: the supervisor's
		// hardening lets it give a file no other group yet): a member of
		// it reads the file, another user does not.
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("config.json: %v, mode %v; want 0640", err, fi.Mode())
		}
		const inBox = "/run/powerhouse/py/config.json"
		if out, err := h.run("setpriv", "--reuid=nobody", "--regid=root", "--clear-groups", "cat", inBox); err != nil || !strings.Contains(out, "s3cret") {
			t.Errorf("a member of the workers' group cannot read config.json: %v\n%s", err, out)
		}
		if out, err := h.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", inBox); err == nil || strings.Contains(out, "s3cret") {
			t.Errorf("a user outside the workers' group reads config.json: %v\n%s", err, out)
		}
		j, _ := h.run("journalctl", "--no-pager", "-o", "json", "POWERHOUSE_EVENT=master.reconfigure", "POWERHOUSE_GROUP=py")
		if !strings.Contains(j, `"POWERHOUSE_KEYS":"level,password"`) || !strings.Contains(j, `"POWERHOUSE_VALUES":"{\"level\":3}"`) {
			t.Errorf("master.reconfigure lacks the keys or the public value:\n%s", j)
		}
		if all, _ := h.run("journalctl", "--no-pager", "-o", "json"); strings.Contains(all, "s3cret") {
			t.Errorf("a secret value reached the journal:\n%s", grepLines(all, "s3cret"))
		}
	})

	// hello uses the activation library, which tells its supervisor over
	// the report socket that it re-reads its configuration on SIGHUP: a
	// group without reload_signal is signalled, not restarted.
	t.Run("SIGHUP declared over the report channel", func(t *testing.T) {
		if !waitUntil(20*time.Second, running("lib", 2)) {
			t.Fatalf("lib instances not running: %v", pidsOf(h, "lib", 2))
		}
		before := pidsOf(h, "lib", 2)
		out, err := h.powerhouse("set", "--config", boxConfig, "lib", `greeting="declared"`)
		if err != nil {
			t.Fatalf("set: %v\n%s", err, out)
		}
		if !strings.Contains(out, "sent SIGHUP to 2 running workers (they declared it over the report channel)") {
			t.Errorf("set does not say it signalled the workers that declared it:\n%s\n%s", out, h.journal())
		}
		waitFor(t, 5*time.Second, "lib workers to re-read their config", func() bool {
			body, err := getBody(client(clientAddr(0)), "http://127.0.0.1:9993/config")
			return err == nil && strings.Contains(body, `"greeting":"declared"`)
		})
		if after := pidsOf(h, "lib", 2); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("lib workers restarted: %v -> %v", before, after)
		}
	})

	t.Run("SIGHUP with reload_signal", func(t *testing.T) {
		before := pidsOf(h, "web", 4)
		out, err := h.powerhouse("set", "--config", boxConfig, "web", `greeting="hup"`)
		if err != nil {
			t.Fatalf("set: %v\n%s", err, out)
		}
		if !strings.Contains(out, "sent SIGHUP to 4 running workers") {
			t.Errorf("set does not say it sent SIGHUP:\n%s", out)
		}
		waitFor(t, 5*time.Second, "web workers to re-read their config", func() bool {
			body, err := getBody(client(clientAddr(0)), webURL+"config")
			return err == nil && strings.Contains(body, `"greeting":"hup"`)
		})
		if after := pidsOf(h, "web", 4); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("web workers restarted: %v -> %v", before, after)
		}
	})
}

// waitUntil polls cond until it holds or d passes, and says which.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
