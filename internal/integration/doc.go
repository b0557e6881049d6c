// Package integration holds the tests that run PowerHouse against a real
// systemd: a private one booted as PID 1 in namespaces (internal/sdbox),
// with the units generated from testdata/demo.toml (and testdata/session.toml
// for examples/session), the real supervisor and the example workers, and a
// real HAProxy in front (testdata/haproxy.cfg). They need root; see
// sdbox.Require. They run one at a time: several use the same loopback ports.
package integration
