package sdbox_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/powerhouse/powerhouse/internal/sdbox"
)

// A test boots a box, installs a unit, starts it, and asks the box's
// manager about it over D-Bus.
func ExampleBoot() {
	var t *testing.T // the test's
	sdbox.Require(t)
	ctx := t.Context()
	box, err := sdbox.Boot(ctx, t, sdbox.Options{Name: "example"})
	if err != nil {
		t.Fatal(err)
	}
	unit := "[Service]\nExecStart=/bin/sleep infinity\n"
	if err := box.WriteFile("/run/systemd/system/example.service", []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := box.Systemctl(ctx, "daemon-reload"); err != nil {
		t.Fatal(err, string(out))
	}
	if out, err := box.Systemctl(ctx, "start", "example.service"); err != nil {
		t.Fatal(err, string(out))
	}
	conn, err := box.Manager(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p, err := conn.GetUnitPropertyContext(ctx, "example.service", "ActiveState")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(p.Value.Value())
}

// A long-running command inside the box, read as it goes.
func ExampleBox_Start() {
	var t *testing.T // the test's
	var box *sdbox.Box
	p, err := box.Start(context.Background(), "journalctl", "-f", "-o", "cat")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	buf := make([]byte, 4096)
	n, _ := p.Output.Read(buf)
	fmt.Printf("%s", buf[:n])
}
