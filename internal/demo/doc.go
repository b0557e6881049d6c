// Command demo is `make demo`: a guided tour of PowerHouse in a private
// systemd, for a reader who has just cloned the repository.
//
//	sudo make demo              # builds bin/, then runs bin/powerhouse-demo
//	sudo bin/powerhouse-demo    # the same, from the repository or below it
//
// It boots a throwaway systemd as PID 1 of private namespaces (the test
// harness, internal/sdbox), runs `powerhouse install --now
// testdata/demo.toml` inside it, and shows, one screen each:
//
//  1. the units that install wrote (sandboxing lines folded);
//  2. `powerhouse status` and `systemctl list-units 'powerhouse*'`;
//  3. requests from twelve client addresses (127.0.0.2 … 127.0.0.13), five
//     new connections each, every address always answered by the same
//     instance; and a client behind a PROXY protocol load balancer;
//  4. `systemctl reload powerhouse@web` under load (new and kept-alive
//     connections from eight addresses, and 24 long-lived connections,
//     examples/hello's line-echo, a line every 100 ms each): the handover
//     of each instance, its new process serving beside its old one
//     draining, the old and new PIDs, the time to ready and the
//     connections drained and cut of each worker.reload event; the
//     requests served during the reload and failed (0), the long-lived
//     connections cut (0), every instance with a new process afterwards,
//     every client still on its instance;
//  5. `systemctl kill -s KILL powerhouse-web@2.service`: the instance
//     comes back with a new process and its clients are served by it;
//  6. `powerhouse events`: the journald events of all that.
//
// Then it stops the house, powers the box off and checks that nothing of
// it is left (the box's PID namespace is empty, the ports are free).
//
// Every claim a screen makes is checked, and printed with ✓ or ✗; the
// demo exits 1 if any check failed or a step could not be done, 2 when it
// cannot run at all (not root, not Linux, not in the repository, a port
// taken), and 0 otherwise. SIGINT and SIGTERM end it early, with the same
// tear-down, and exit 130. If the demo is killed outright, the box dies
// with it (sdbox sets PR_SET_PDEATHSIG on its init).
//
// # What it leaves on the host
//
// Nothing. Everything PowerHouse writes goes to the box's private mounts:
// install writes /etc/powerhouse (the box's /etc is an overlay whose
// writes stay in the box) and /etc/systemd/system (a private tmpfs), and
// the runtime files go to the box's own /run. So unlike the integration
// tests, which bind a host directory onto /etc/powerhouse to read what
// `powerhouse set` wrote, the demo binds nothing writable: the repository
// is bound read-only at its own path, which keeps it visible even when it
// lives under /tmp (the box's /tmp is private). The box shares the host's
// network namespace, so the demo's ports (127.0.0.1:9997–9999) must be
// free; it says so and stops if they are not.
package main
