package handoff

import "errors"

// Ucred is the sender of a hand-off datagram as the kernel reports it
// (SCM_CREDENTIALS): its process id, user id and group id, translated into
// the receiver's namespaces. The kernel fills it in from the sending
// process; a sender can only claim ids it holds (or any, with
// CAP_SETUID/CAP_SETGID), so a worker can trust the uid.
type Ucred struct {
	Pid int32
	Uid uint32
	Gid uint32
}

// ErrNoCredentials is matched by the error ReceiveFrom returns for a
// datagram that came without sender credentials, which happens only when
// SO_PASSCRED is not set on the socket. The datagram is consumed and its
// descriptors are closed, as for ErrMalformed.
var ErrNoCredentials = errors.New("hand-off without sender credentials (SO_PASSCRED not set on the socket?)")
