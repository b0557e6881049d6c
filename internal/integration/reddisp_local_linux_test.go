package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/testenv"
)

// redLocalScript is what a local user tries: hand a descriptor to web@1
// as the supervisor would, and read two groups' configuration.
const redLocalScript = `
import socket, array
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.connect('/run/powerhouse/web/1.sock')
    r, w = socket.socketpair()
    s.sendmsg([b'\x01'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r.fileno()]))])
    print('handoff sent')
except OSError as e:
    print('handoff refused', e.errno)
for g in ['web', 'api']:
    try:
        open('/run/powerhouse/%s/config.json' % g).read()
        print('read', g)
    except OSError as e:
        print('read refused', g, e.errno)
`

// TestIntegrationRedLocalUser: what docs/SECURITY.md says of local users,
// tried in a real house by a user created in the box (useradd inside it:
// the box's /etc is a private overlay). An unprivileged user can neither
// write a hand-off datagram (the socket is 0600, root's) nor read a
// group's config.json (0640, group powerhouse); the workers' user reads
// config.json, as documented, but cannot hand off either.
func TestIntegrationRedLocalUser(t *testing.T) {
	python := testenv.Program(t, "python3")
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")
	waitFor(t, 30*time.Second, "web@1's hand-off socket", func() bool {
		_, err := h.run("test", "-S", "/run/powerhouse/web/1.sock")
		return err == nil
	})
	if out, err := h.run("useradd", "--system", "--no-create-home", "mallory"); err != nil {
		t.Fatalf("useradd in the box: %v\n%s", err, out)
	}
	const eacces = "13"
	for _, tc := range []struct {
		user string
		want []string
	}{
		{"mallory", []string{"handoff refused " + eacces, "read refused web " + eacces, "read refused api " + eacces}},
		{"powerhouse", []string{"handoff refused " + eacces, "read web", "read api"}},
	} {
		out, err := h.run("setpriv", "--reuid="+tc.user, "--regid="+tc.user, "--init-groups", python, "-c", redLocalScript)
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.user, err, out)
		}
		if got, want := strings.Join(strings.Fields(out), " "), strings.Join(tc.want, " "); got != want {
			t.Errorf("%s: got\n%s\nwant %q", tc.user, out, tc.want)
		}
	}
}
