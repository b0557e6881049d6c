package sdbox

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// TestIntegrationUserManager: a regular user made in a box gets a running
// service manager; systemctl --user starts a written unit and a transient
// one as that user, whose output reaches the box's journal; Go clients
// reach the manager over its private socket and over the user bus; and
// the user never appears in the host's user database.
func TestIntegrationUserManager(t *testing.T) {
	name := "sdbox-" + randomWord(t)[:8]
	hostDB := map[string][]byte{}
	for _, f := range []string{"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/subuid", "/etc/subgid"} {
		hostDB[f], _ = os.ReadFile(f)
	}
	checkHost := func(when string) {
		t.Helper()
		for f, before := range hostDB {
			now, _ := os.ReadFile(f)
			if bytes.Contains(now, []byte(name+":")) {
				t.Errorf("%s: the host's %s holds the box's user %s", when, f, name)
			} else if !bytes.Equal(now, before) {
				t.Errorf("%s: the host's %s changed while the box ran", when, f)
			}
		}
		if out, err := exec.Command("getent", "passwd", name).CombinedOutput(); err == nil {
			t.Errorf("%s: getent passwd %s on the host: %s", when, name, out)
		}
	}

	plain := bootBox(t, Options{Name: "sdbox-plain"})
	if _, err := plain.UserManager(t.Context(), name); err == nil || !strings.Contains(err.Error(), "Options.UserManagers") {
		t.Errorf("UserManager in a box without Options.UserManagers: %v", err)
	}

	b := bootBox(t, Options{UserManagers: true})
	ctx := t.Context()
	began := time.Now()
	u, err := b.UserManager(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("user %s (uid %d): manager up in %v, user bus %v", name, u.UID(), time.Since(began).Round(time.Millisecond), u.HasBus())
	if u.UID() < 1000 {
		t.Errorf("uid %d: want a regular user's", u.UID())
	}
	for _, d := range []string{u.Home(), u.RuntimeDir()} {
		var st unix.Stat_t
		if err := unix.Stat(b.Path(d), &st); err != nil || int(st.Uid) != u.UID() {
			t.Errorf("%s: owner %d (%v), want %d", d, st.Uid, err, u.UID())
		}
	}
	if got := strings.TrimSpace(run(t, b, "systemctl", "is-active", "user@"+strconv.Itoa(u.UID())+".service")); got != "active" {
		t.Errorf("user@%d.service is %s", u.UID(), got)
	}
	if again, err := b.UserManager(ctx, name); err != nil || again.UID() != u.UID() {
		t.Errorf("UserManager again: uid %v, %v", again, err)
	}
	checkHost("box running")

	if out, err := u.Run(ctx, "id", "-un"); err != nil || strings.TrimSpace(string(out)) != name {
		t.Errorf("id -un as the user: %q, %v", out, err)
	}
	if out, err := u.Run(ctx, "sh", "-c", `echo "$HOME $XDG_RUNTIME_DIR $PWD"`); err != nil ||
		strings.TrimSpace(string(out)) != u.Home()+" "+u.RuntimeDir()+" "+u.Home() {
		t.Errorf("the user's environment: %q, %v", out, err)
	}

	word := randomWord(t)
	unit := "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo written-" + word + " as $(id -un)'\n"
	if err := u.WriteFile(ctx, u.Home()+"/.config/systemd/user/sdbox-hello.service", []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := u.Systemctl(ctx, "daemon-reload"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := u.Systemctl(ctx, "start", "sdbox-hello.service"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := u.Run(ctx, "systemd-run", "--user", "--unit=sdbox-transient", "--wait", "--quiet",
		"/bin/sh", "-c", "echo transient-"+word); err != nil {
		t.Fatalf("systemd-run --user: %v\n%s", err, out)
	}
	for _, want := range []struct{ unit, msg string }{
		{"sdbox-hello.service", "written-" + word + " as " + name},
		{"sdbox-transient.service", "transient-" + word},
	} {
		eventually(t, 5*time.Second, "the journal has "+want.msg, func() bool {
			out, _ := u.Journal(ctx, want.unit)
			return strings.Contains(string(out), want.msg)
		})
	}

	// Go clients: over the manager's private socket, and over the user
	// bus as go-systemd's NewUserConnectionContext does.
	pc, err := u.Manager(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if p, err := pc.GetUnitTypePropertyContext(ctx, "sdbox-hello.service", "Service", "Result"); err != nil || p.Value.Value() != "success" {
		t.Errorf("sdbox-hello.service Result over the private socket: %v, %v", p, err)
	}
	if !u.HasBus() {
		t.Fatalf("no user bus in %s: is dbus-user-session installed?", u.RuntimeDir())
	}
	bc, err := sddbus.NewConnection(func() (*godbus.Conn, error) { return u.Bus(ctx) })
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	units, err := bc.ListUnitsByNamesContext(ctx, []string{"sdbox-hello.service", "dbus.socket"})
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(units, func(s sddbus.UnitStatus) bool { return s.Name == "dbus.socket" }); i < 0 || units[i].ActiveState != "active" {
		t.Errorf("the user's dbus.socket over the user bus: %+v", units)
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	checkHost("box closed")
}
