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

// A regular user's service manager in a box, and a unit of that user's.
func ExampleBox_UserManager() {
	var t *testing.T // the test's
	ctx := t.Context()
	box, err := sdbox.Boot(ctx, t, sdbox.Options{UserManagers: true})
	if err != nil {
		t.Fatal(err)
	}
	u, err := box.UserManager(ctx, "phuser") // exists in the box alone
	if err != nil {
		t.Fatal(err)
	}
	unit := "[Service]\nType=oneshot\nExecStart=/bin/echo hello\n"
	if err := u.WriteFile(ctx, u.Home()+"/.config/systemd/user/hello.service", []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"daemon-reload"}, {"start", "hello.service"}} {
		if out, err := u.Systemctl(ctx, args...); err != nil { // systemctl --user, as phuser
			t.Fatal(err, string(out))
		}
	}
	out, _ := u.Journal(ctx, "hello.service")
	fmt.Printf("%s", out)
}
