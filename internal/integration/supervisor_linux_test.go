package integration

import (
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/units"
)

// slowConfig is a group of three instances that each take about 1.5 s to
// become ready: a rolling reload takes longer than the 2 s the tests
// below give the supervisor's TimeoutStartSec=.
func slowConfig() string {
	return fmt.Sprintf(`
[[worker]]
name = "slow"
amount = 3
listen = ["127.0.0.1:9996"]
exec = ["/bin/sh", "-c", "sleep 1.5; exec %s"]
`, filepath.Join(boxBin, "hello"))
}

// slowGroup is the group of slowConfig.
var slowGroup = units.Group{Name: "slow"}

// restartedAll waits until every instance of slowGroup runs a process
// other than before's, and the journal has n worker.reload events.
func restartedAll(t *testing.T, h *house, before map[int]string, n int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d worker.reload events", n), func() bool {
		out, _ := h.run("journalctl", "--no-pager", "-o", "cat", "POWERHOUSE_EVENT=worker.reload", "POWERHOUSE_GROUP=slow")
		return strings.Count(out, "reloaded") == n
	})
	after := pidsOf(h, "slow", 3)
	for i, p := range before {
		if after[i] == p || after[i] == "0" {
			t.Errorf("instance %d: PID %s before, %s after the reload", i, p, after[i])
		}
	}
}

// TestIntegrationReloadExtendsTimeout: `systemctl reload` runs
// ExecReload= under the supervisor's TimeoutStartSec= (lowered here to
// 2 s by a drop-in); a rolling reload of three instances that each take
// 1.5 s to be ready takes longer, and succeeds because the supervisor
// sends EXTEND_TIMEOUT_USEC= before each instance, which systemd 252
// honours in the reloading state. Without it systemd kills ExecReload=
// after 2 s and the reload fails half-way.
//
// ExecReload= is the generated one: `powerhouse reload slow`, a client
// of the supervisor's Reload method.
func TestIntegrationReloadExtendsTimeout(t *testing.T) {
	h := newHouse(t, slowConfig())
	dropin := "[Service]\nTimeoutStartSec=2s\n"
	if err := h.box.WriteFile("/etc/systemd/system/"+slowGroup.SupervisorUnit()+".d/timeout.conf", []byte(dropin), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	if got := h.show(slowGroup.SupervisorUnit(), "TimeoutStartUSec"); got != "2s" {
		t.Fatalf("TimeoutStartUSec = %q, want the drop-in's 2s", got)
	}
	h.systemctl("start", "powerhouse.target")
	waitFor(t, 10*time.Second, "3 running instances", func() bool {
		p := pidsOf(h, "slow", 3)
		return p[1] != "0" && p[2] != "0" && p[3] != "0"
	})
	before := pidsOf(h, "slow", 3)
	start := time.Now()
	out, err := h.box.Systemctl(t.Context(), "reload", slowGroup.SupervisorUnit())
	took := time.Since(start)
	if err != nil {
		j, _ := h.run("journalctl", "--no-pager", "-o", "short-monotonic", "-u", slowGroup.SupervisorUnit(), "-n", "40")
		t.Fatalf("systemctl reload after %v: %v\n%s\njournal:\n%s", took.Round(time.Millisecond), err, out, j)
	}
	if took < 4*time.Second {
		t.Errorf("the reload took %v: it did not wait for each instance to be ready", took)
	}
	restartedAll(t, h, before, 3)
	t.Logf("a reload of 3 instances of 1.5 s each took %v under TimeoutStartSec=2s", took.Round(time.Millisecond))
}

// TestIntegrationReloadOutlivesClient: a client killed while the reload
// hands the second instance over leaves the reload running: every instance
// is handed over, each worker.reload is in the journal, and the supervisor
// logs the result nobody reads.
func TestIntegrationReloadOutlivesClient(t *testing.T) {
	h := newHouse(t, slowConfig())
	h.systemctl("start", "powerhouse.target")
	waitFor(t, 10*time.Second, "3 running instances", func() bool {
		p := pidsOf(h, "slow", 3)
		return p[1] != "0" && p[2] != "0" && p[3] != "0"
	})
	before := pidsOf(h, "slow", 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := h.box.Start(ctx, filepath.Join(boxBin, "powerhouse"), "reload", slowGroup.Name)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(p.Output)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.Contains(sc.Text(), "starting "+slowGroup.InstanceSide(2, units.SideB)) {
			break
		}
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Wait()
	// Instance 1: its new side starts, then is ready; instance 2: starts.
	if len(lines) != 3 {
		t.Fatalf("the client printed %q before it was killed, want 3 progress lines", lines)
	}
	restartedAll(t, h, before, 3)
	waitFor(t, 10*time.Second, "the result in the supervisor's log", func() bool {
		out, _ := h.run("journalctl", "--no-pager", "-o", "cat", "-u", slowGroup.SupervisorUnit())
		return strings.Contains(out, "reload slow: 3 instances handed over")
	})
}

// TestIntegrationStartFailsWithReason: a group whose workers can never
// start (they exit at once, until systemd's start limit stops them) does
// not hold `systemctl start` for the whole start timeout: the supervisor
// fails its start once no instance is up or coming, and its log and
// STATUS= name each instance and why.
func TestIntegrationStartFailsWithReason(t *testing.T) {
	h := newHouse(t, `
[[worker]]
name = "bad"
amount = 2
listen = ["127.0.0.1:9996"]
exec = "/bin/false"
`)
	bad := units.Group{Name: "bad"}
	// The workers' socket first, as powerhouse.target starts it (the
	// target itself does not fail with a unit it wants).
	h.systemctl("start", bad.PublicSocket())
	start := time.Now()
	out, err := h.box.Systemctl(t.Context(), "start", bad.SupervisorUnit())
	took := time.Since(start)
	if err == nil {
		t.Fatalf("systemctl start of a group that cannot run succeeded:\n%s", out)
	}
	if took > 30*time.Second {
		t.Errorf("systemctl start failed after %v", took)
	}
	j, _ := h.run("journalctl", "--no-pager", "-o", "cat", "-u", bad.SupervisorUnit())
	for _, want := range []string{"no instance of group bad is up, and systemd is starting none", bad.Instance(1) + " failed (failed), result "} {
		if !strings.Contains(j, want) {
			t.Errorf("the supervisor's journal lacks %q:\n%s", want, j)
		}
	}
	t.Logf("systemctl start failed after %v", took.Round(time.Millisecond))
}

// TestIntegrationSupervisorWatchdog: the supervisor reads WatchdogSec=
// from its environment (WATCHDOG_USEC) and feeds the watchdog: under a
// 2 s one (a drop-in; the generator writes 30 s) it runs on, unrestarted,
// for several periods, and systemd records its pings.
func TestIntegrationSupervisorWatchdog(t *testing.T) {
	h := newHouse(t, slowConfig())
	if b, err := h.box.ReadFile("/etc/systemd/system/" + units.SupervisorTemplate); err != nil || !strings.Contains(string(b), "\nWatchdogSec=30s\n") {
		t.Errorf("the supervisor template has no WatchdogSec=30s (%v):\n%s", err, b)
	}
	if err := h.box.WriteFile("/etc/systemd/system/"+slowGroup.SupervisorUnit()+".d/watchdog.conf", []byte("[Service]\nWatchdogSec=2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", "powerhouse.target")
	if got := h.show(slowGroup.SupervisorUnit(), "WatchdogUSec"); got != "2s" {
		t.Errorf("WatchdogUSec = %q, want the drop-in's 2s", got)
	}
	pid := h.show(slowGroup.SupervisorUnit(), "MainPID")
	first := h.show(slowGroup.SupervisorUnit(), "WatchdogTimestampMonotonic")
	deadline := time.Now().Add(6 * time.Second) // three periods
	for time.Now().Before(deadline) {
		if p := h.show(slowGroup.SupervisorUnit(), "MainPID"); p != pid {
			j, _ := h.run("journalctl", "--no-pager", "-o", "cat", "-u", slowGroup.SupervisorUnit())
			t.Fatalf("the supervisor was restarted (pid %s, then %s):\n%s", pid, p, j)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if last := h.show(slowGroup.SupervisorUnit(), "WatchdogTimestampMonotonic"); last == first || last == "0" {
		t.Errorf("no watchdog ping recorded: WatchdogTimestampMonotonic %s, then %s", first, last)
	}
	if n := h.show(slowGroup.SupervisorUnit(), "NRestarts"); n != "0" {
		t.Errorf("NRestarts = %s", n)
	}
}
