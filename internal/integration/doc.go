// Package integration holds the tests that run PowerHouse against a real
// systemd: a private one booted as PID 1 in namespaces (internal/sdbox),
// with the units generated from testdata/demo.toml (and testdata/session.toml
// for examples/session), the real supervisor and the example workers, and a
// real HAProxy in front (testdata/haproxy.cfg). They need root; see
// sdbox.Require. They run one at a time: several use the same loopback ports.
//
// TestMain builds the binaries (powerhouse, hello, session) out of the
// source tree with internal/testenv, and every box sees them at
// /run/powerhouse-test-bin, a path open to the workers' unprivileged user
// wherever the clone lives. Tests that run haproxy, node, python3, curl or
// make ask testenv.Program for it: skipped without it, failed in CI, in
// one line naming the install command.
package integration
