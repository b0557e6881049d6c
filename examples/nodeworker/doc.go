// Package nodeworker holds server.js, a stock Node.js HTTP server (Node's
// standard library only, no PowerHouse code) that serves as a worker of a
// kernel-mode group (dispatch = "kernel", notify = false): it listens on
// the socket systemd passes it (LISTEN_FDS, descriptor 3), answers
// "hello from worker <POWERHOUSE_INSTANCE>", and drains on SIGTERM. The
// benchmark's systemd-node-kernel row runs it, and the kernel-mode
// integration test (internal/integration, TestIntegrationKernelNodeWorker) runs
// four instances of it under a real systemd.
//
// The package's test runs it as systemd would, outside systemd: a real
// listening socket on descriptor 3 with LISTEN_FDS and LISTEN_PID, and
// checks its answer, its drain on SIGTERM, and that the socket, which
// outlives the process as systemd's copy does, keeps its queued
// connections for the next process.
package nodeworker
