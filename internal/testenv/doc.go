// Package testenv gives the tests what they take from the machine: the
// binaries they build from this module, and the programs they run for
// real (haproxy, node, python3, ...).
//
// # Binaries
//
// Build (or NewBin in a TestMain) builds packages of this module with the
// go command into a fresh directory of the run's own under the user's
// cache directory ($XDG_CACHE_HOME or ~/.cache)/powerhouse-test, mode
// 0755, removed when the test (or TestMain) ends:
//
//   - never in the source tree, so a test run leaves `git status`, and
//     `git status --ignored`, as it found them, and never reads the bin/
//     that `make build` fills: a fresh clone has none;
//   - never under /tmp or /var/tmp, which the test systemd (internal/sdbox)
//     and units with PrivateTmp= replace with empty directories of their
//     own. A box binds the directory where its workers look for it
//     (internal/integration uses /run/powerhouse-test-bin), and the
//     workers' unprivileged user can enter it whatever the host path's
//     parents allow (~ is often 0700), since only the bound directory
//     itself is on their path.
//
// A run killed before it could clean up leaves its directory behind; the
// next NewBin removes those older than a day.
//
// # Programs
//
// Program returns the path of a program a test needs. When the program is
// missing the test is skipped, or fails when $CI is set, with one line
// naming the program and the command that installs it (`sudo make test`
// installs them all, through tools/test-deps). Setting
// POWERHOUSE_TEST_MISSING to a comma-separated list of names makes Program
// treat those as missing: the way to see what a machine without them gets,
// without uninstalling anything.
package testenv
