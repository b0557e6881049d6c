// Package generator turns a validated PowerHouse configuration into the
// house's systemd units. It is pure: no I/O, the same configuration always
// gives byte-identical units, and every value written into a unit is
// escaped by systemd's rules, so no text of the configuration can add,
// end or change a section or a directive.
//
// # Units
//
// powerhouse.target (the house), powerhouse@.service (one supervisor per
// group), powerhouse@GROUP.socket (a group's direct listening sockets),
// powerhouse-proxy@GROUP.socket (its PROXY protocol listeners, with an
// IPAddressAllow= of their proxy_from and IPAddressDeny=any; Service= is
// the group's supervisor; see GroupSockets), powerhouse-GROUP@.service
// (the workers), powerhouse-GROUP@.socket (a
// sticky group's per-instance hand-off sockets) and
// powerhouse-prepare.service (the [prepare] hook).
//
// A reloadable group (reloadable = true, the default) also gets
// powerhouse-GROUP.b@.service, side B of its instances (units.Side): the
// workers' template again, but for its Description= and
// POWERHOUSE_SIDE=b (side A's is =a). A handover reload starts the new
// process of instance N in the side that is not running, and stops the
// old one once the new one is ready; both sides have Sockets= on the same
// socket, so either serves the slot. See Sides.
//
// A kernel-mode group (dispatch = "kernel") has no powerhouse@GROUP.socket
// and no hand-off sockets: powerhouse-GROUP@.socket is each instance's own
// listening socket on the group's addresses (ReusePort=yes,
// FileDescriptorName=instance-%i), and the drop-in
// powerhouse@GROUP.service.d/50-kernel.conf (KernelDropIn) gives that
// group's supervisor every instance's socket, CAP_BPF, bpf(2) and a
// descriptor store. A user's manager refuses kernel mode (CheckScope).
//
// # Users
//
// In system scope workers run as the static user and group powerhouse
// (config.DefaultUser, created by units.Sysusers) unless their
// [worker.service] names another, with no capability and a system call
// filter (exposure 1.5 in systemd-analyze security). The supervisor runs
// as root without capabilities and is a member of every worker group
// (WorkerGroup), so that it can give each group's config.json to that
// group without CAP_CHOWN. Hand-off sockets are root's and 0600, with
// PassCredentials=yes; sticky workers learn the supervisor's uid from
// POWERHOUSE_SUPERVISOR_UID. In user scope no unit sets User= or Group=.
package generator
