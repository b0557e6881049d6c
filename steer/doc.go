// Package steer provides kernel steering for a worker group: an eBPF
// sk_reuseport program that places each new connection on the listening
// socket of the instance that sticky dispatch would pick for the client's
// address, with no process in the data path.
//
// # How it places a connection
//
// Every instance has its own listening socket on the group's address, all in
// one SO_REUSEPORT group. For a new connection the kernel runs the program
// attached to the group, which reads the client's source address from the
// packet (bpf_skb_load_bytes_relative from the network header: 4 bytes at
// offset 12 for IPv4, 16 at offset 8 for IPv6, by the context's
// eth_protocol), computes [sticky.Bucket] of it, reads the bucket's instance
// from a 4,096-entry array (the bucket table) and selects that instance's
// socket from a REUSEPORT_SOCKARRAY indexed by instance number
// (bpf_sk_select_reuseport). User space fills the table with the rendezvous
// winner of each bucket among the instances that are up
// ([Steering.SetTable], [sticky.Set.PickBucket]), so a client reaches the
// same instance as with hand-off dispatch, and an instance that leaves moves
// only its own clients.
//
// When the program cannot place a connection it returns SK_PASS without a
// selection, and the kernel picks a socket by its own hash of the 4-tuple,
// as with plain SO_REUSEPORT: the connection is served, not refused, but not
// sticky. That happens when the bucket's instance has no socket in the
// array (its listener was closed: the kernel clears the slot itself), when
// the table leaves the bucket empty (no instance up), and for packets that
// are neither IPv4 nor IPv6.
//
// # Migration
//
// With net.ipv4.tcp_migrate_req=1 (a per-namespace sysctl; the installer's
// business, not this package's), a listener that closes hands the
// connections queued on it to the others of its group instead of resetting
// them, and the kernel asks the program where (it is loaded as
// BPF_SK_REUSEPORT_SELECT_OR_MIGRATE). There may be no packet then; the
// program takes the client address from the migrating socket instead, so
// each connection goes to its bucket's instance in the table as it is by
// then. Hence the order when an instance stops: the table first, then the
// socket. Kernels before 5.14 get the program without migration.
//
// # Several listen addresses
//
// A socket array can only serve the reuseport group its program runs for,
// so each listen address l (0, 1, ...) has its own program and socket
// array; all share the one bucket table, so one SetTable moves a client on
// every address at once.
//
// # Surviving the supervisor
//
// The program belongs to the reuseport group, not to the process that
// attached it: it keeps steering, by the last table, while the supervisor is
// down. [Steering.Files] gives descriptors of the table, programs and arrays
// named for systemd's file descriptor store; a restarted supervisor gets
// them back and [Adopt]s them instead of loading and attaching new ones.
//
// # Requirements
//
// Loading needs CAP_BPF and CAP_NET_ADMIN (or root) and no kernel lockdown
// against BPF; sk_reuseport programs need Linux 4.19, migration 5.14 (the
// program is loaded without it on older kernels). Errors from [Load] say
// which step failed and why; a supervisor logs one line and serves with
// plain SO_REUSEPORT. Linux only, like package sticky.
//
// # Use
//
// The sequence for a supervisor, with fds its listening sockets (fds[l][id]
// for listen address l and instance id) and up the set of instances that
// are up:
//
//	s, err := steer.Adopt(storedFiles)       // after a restart; or else:
//	s, err = steer.Load(len(addresses), maxInstance+1)
//	for l := range addresses {
//		for id, fd := range fds[l] { s.SetSocket(l, id, fd) } // a no-op for a socket already there
//		s.Attach(l, anyFdOf(fds[l]))     // harmless after Adopt
//	}
//	s.SetTable(up)                       // again on every change of up
//	files, _ := s.Files()                // once after Load: FDSTORE=1, FDNAME=f.Name(), FDPOLL=0
//
// An instance whose listener systemd re-created: SetSocket with the new
// descriptor. An instance stopped: SetTable without it first, then close
// the supervisor's copy of its socket (or it stays in the group), so that
// the connections queued on it migrate to their buckets' new instances. [Steering.Shares] gives the bucket count per instance for status.
package steer
