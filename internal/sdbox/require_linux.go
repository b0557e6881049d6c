package sdbox

import (
	"os"
	"testing"
)

// Require skips the test, with a message that says what to do, unless
// this process can boot a box: root, systemd, util-linux, and D-Bus. When
// the environment variable CI is set it fails the test instead, so that a
// CI run cannot pass by skipping what it was meant to test.
func Require(t testing.TB) {
	t.Helper()
	var why string
	if err := missing(); err != nil {
		why = err.Error()
		if os.Geteuid() != 0 {
			why = "needs root: run `sudo make test` (or `sudo go test ./...`)"
		}
	} else if !hasBus() {
		why = "needs D-Bus: `apt-get install dbus`"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("sdbox: cannot boot a private systemd: %s", why)
	}
	t.Skipf("sdbox: skipping, cannot boot a private systemd: %s", why)
}
