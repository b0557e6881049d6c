// Package integration holds the tests that run PowerHouse against a real
// systemd: a private one booted as PID 1 in namespaces (internal/sdbox),
// with the units generated from testdata/demo.toml, the real supervisor
// and the examples/hello worker. They need root; see sdbox.Require.
package integration
