// Package supervisor is the master of one worker group: it runs as
// powerhouse@GROUP.service, starts and watches the group's instances
// through systemd (units.Manager), for a sticky group dispatches the
// connections of the group's public sockets to the instances that are up,
// and carries out every operation on the group — rolling reload, scale,
// reconfigure, status — for the callers of its control socket
// (units.Group.ControlPath; Client is the typed client, api.go the
// protocol). docs/ARCHITECTURE.md section 1 is the design.
//
// Operations run one at a time, in the order they came, in the
// supervisor's own goroutine: a caller that goes away leaves its
// operation running to its end, logged and reported as events.
//
// Readiness: READY=1 once an instance is up; STATUS= is one line, "4/4
// up · 1.2k conn/s · 0 misses", "degraded: 1/3 up · …" when fewer run
// than wanted; a start in which no instance
// comes up fails with each instance's state and systemd's Result. The
// watchdog (WatchdogSec=) is fed only while the main loop and the
// dispatch loops go round.
//
// Metrics: a registry of its own per supervisor (metrics.go), read at
// scrape time, served on units.Group.MetricsPath.
//
// Membership: an instance takes connections while systemd is running it or
// bringing it back (a restart, an automatic restart after a crash: its
// hand-off socket queues connections meanwhile). It leaves the set as soon
// as it is being stopped, has failed, or is masked, so only its own clients
// move. When a stopped instance comes to rest, the supervisor stops its
// hand-off socket too, so that connections queued there cannot start it
// again; `systemctl start powerhouse-GROUP@N` starts both.
//
// Kernel mode (dispatch = "kernel", kernel.go): the instances listen on
// sockets of their own and package steer's eBPF program picks each
// connection's instance; the supervisor only keeps the program's bucket
// table equal to rendezvous hashing over the members, with the same rules,
// holds a copy of every instance's socket (Sockets= of its drop-in) and
// closes it when the instance stops, keeps the program in its fd store so
// that a restarted supervisor adopts it, and restarts itself to take the
// sockets of instances started after it. Where the program cannot be
// loaded the group is served by plain SO_REUSEPORT and says it is degraded.
package supervisor
