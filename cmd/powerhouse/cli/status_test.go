package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/supervisor"
)

// TestPrintStatusDraining: an instance a reload handed over shows the
// unit serving it and, while it drains, the old process beside it.
func TestPrintStatusDraining(t *testing.T) {
	var out bytes.Buffer
	e := &env{stdout: &out}
	printStatus(e, []GroupStatus{{Group: "web", Type: "cluster", Sticky: true, Amount: 2,
		Supervisor: UnitStatus{Unit: "powerhouse@web.service", State: "active", SubState: "running", PID: 5},
		Instances: []InstanceStatus{
			{Instance: 1, UnitStatus: UnitStatus{Unit: "powerhouse-web@1.service", State: "active", SubState: "running", PID: 811}},
			{Instance: 2, UnitStatus: UnitStatus{Unit: "powerhouse-web.b@2.service", State: "active", SubState: "running", PID: 812},
				Draining: &supervisor.DrainingStatus{Unit: "powerhouse-web@2.service", PID: 640, Since: time.Now().Add(-3 * time.Second)}},
		}}})
	lines := strings.Split(out.String(), "\n")
	var one, two string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "web@1"):
			one = l
		case strings.HasPrefix(strings.TrimSpace(l), "web@2"):
			two = l
		}
	}
	if !strings.HasSuffix(one, "powerhouse-web@1.service") || strings.Contains(one, "draining") {
		t.Errorf("instance 1: %q", one)
	}
	if !strings.Contains(two, " 812 ") || !strings.HasSuffix(two, "powerhouse-web.b@2.service · draining pid 640 (powerhouse-web@2.service, 3s)") {
		t.Errorf("instance 2: %q\n%s", two, out.String())
	}
	if !strings.Contains(lines[1], "UNIT") {
		t.Errorf("header %q", lines[1])
	}
}
