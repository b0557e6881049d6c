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
package generator
