package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
)

// TestHostPID boots two real boxes and maps PIDs of the second's namespace
// to the host's: its init (PID 1 there, as in the first box, which is
// listed first in /proc: only the namespace check tells them apart) and a
// unit's MainPID; a PID the box does not have is an error.
func TestHostPID(t *testing.T) {
	sdbox.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := sdbox.Boot(ctx, t, sdbox.Options{Name: "sdrow-test-a"}); err != nil {
		t.Fatal(err)
	}
	box, err := sdbox.Boot(ctx, t, sdbox.Options{Name: "sdrow-test"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := hostPID(box.PID(), 1); err != nil || got != box.PID() {
		t.Errorf("hostPID(box, 1) = %d, %v; want the box's init, host PID %d", got, err, box.PID())
	}
	if out, err := box.Run(ctx, "systemd-run", "--unit=sdrow-test.service", "/bin/sleep", "1000"); err != nil {
		t.Fatalf("systemd-run: %v\n%s", err, out)
	}
	pid, err := mainPID(ctx, box, "sdrow-test.service")
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.HasPrefix(string(cmd), "/bin/sleep\x001000") {
		t.Errorf("host PID %d runs %q (%v), want the unit's /bin/sleep 1000", pid, cmd, err)
	}
	if _, err := hostPID(box.PID(), 1<<22+1); err == nil { // above pid_max's ceiling: no such process
		t.Error("hostPID of a PID the box does not have: no error")
	}
}
