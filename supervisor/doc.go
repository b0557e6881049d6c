// Package supervisor is the master of one worker group: it runs as
// powerhouse@GROUP.service, starts and watches the group's instances
// through systemd, and for a sticky group dispatches the connections of the
// group's public sockets to the instances that are up.
//
// Membership: an instance takes connections while systemd is running it or
// bringing it back (a restart, an automatic restart after a crash: its
// hand-off socket queues connections meanwhile). It leaves the set as soon
// as it is being stopped, has failed, or is masked, so only its own clients
// move. When a stopped instance comes to rest, the supervisor stops its
// hand-off socket too, so that connections queued there cannot start it
// again; `systemctl start powerhouse-GROUP@N` starts both.
package supervisor
