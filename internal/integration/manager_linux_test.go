package integration

import (
	"context"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// TestIntegrationManagerReconnect: systemd re-executes (daemon-reexec
// closes every connection to its private socket) while a start job is
// under way. The job's end is reported on the connection that is gone:
// units.Manager follows the unit on a new one and returns when the start
// ends, rather than waiting for a signal that never comes; calls after
// it reconnect, and Watch tells its receiver to re-read everything ("").
func TestIntegrationManagerReconnect(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	const unit = "slowstart.service"
	if err := h.box.WriteFile("/etc/systemd/system/"+unit, []byte("[Service]\nExecStartPre=/bin/sleep 3\nExecStart=/bin/sleep 600\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.systemctl("daemon-reload")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := units.NewManager(ctx, h.box.Manager)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	changes, err := m.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- m.Start(ctx, unit) }()
	waitFor(t, 10*time.Second, unit+" activating", func() bool { return h.show(unit, "ActiveState") == "activating" })
	h.systemctl("daemon-reexec")
	start := time.Now()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("start across a daemon-reexec: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("start across a daemon-reexec never returned")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the start returned %v after the re-exec, want when the unit is up (~3 s)", d)
	}
	t.Logf("the start returned %v after the re-exec", time.Since(start).Round(time.Millisecond))
	if st, err := m.State(ctx, unit); err != nil || st.ActiveState != units.Active {
		t.Errorf("state after the re-exec: %+v %v", st, err)
	}
	for {
		select {
		case name, ok := <-changes:
			if !ok {
				t.Fatal("the watch closed")
			}
			if name == "" {
				t.Logf("re-read asked %v after the re-exec", time.Since(start).Round(time.Millisecond))
				return
			}
		case <-ctx.Done():
			t.Fatal("the watch never said to re-read everything after the re-exec")
		}
	}
}
