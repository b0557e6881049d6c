// Package handoff defines the wire format PowerHouse uses to hand an accepted
// connection from the sticky dispatcher to a worker instance, and the
// low-level calls that send and receive it.
//
// # The message
//
// One hand-off is one datagram on an AF_UNIX SOCK_DGRAM socket. It carries
// exactly one file descriptor, the connection, as SCM_RIGHTS ancillary data,
// and a small versioned header as its payload: the name of the public
// listener the connection arrived on and, when the connection came through a
// PROXY protocol header, the original source and destination addresses.
// docs/handoff.md in the repository gives the byte layout with a hex example,
// precisely enough to implement it in another language; examples/pyworker is
// such an implementation in Python.
//
// # Roles
//
// The dispatcher encodes a [Header] with [Header.AppendBinary] into a buffer
// it reuses and calls [Send] on the hand-off socket, which never blocks: a
// full queue at the receiver is reported as an error that matches
// [syscall.EAGAIN] (and unix.EAGAIN, the same value), so one slow worker
// cannot stall the dispatcher.
//
// The worker calls [ReceiveFrom] (or [Receive], which does not report the
// sender) when the socket is readable. ReceiveFrom also returns the
// sender's credentials (SCM_CREDENTIALS; the socket needs SO_PASSCRED), so
// that the worker serves hand-offs from its supervisor alone. It returns the
// descriptor and the decoded header, or an error matching [ErrMalformed]
// after closing every descriptor the datagram brought: a datagram with no
// descriptor or several, a truncated payload or control message, a bad magic,
// an unknown version or an out-of-bounds field never leaks a descriptor.
// Package activation builds a net.Listener on top of this.
//
// # Platforms
//
// The header codec is portable. [Send], [Receive] and [ReceiveFrom] need
// Linux (SCM_RIGHTS with MSG_CMSG_CLOEXEC, SCM_CREDENTIALS); elsewhere they
// return [errors.ErrUnsupported].
package handoff
