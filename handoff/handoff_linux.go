//go:build linux

package handoff

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxRecvFDs is how many descriptors Receive makes room for. One is valid;
// room for more lets a datagram with a few extra descriptors be recognised
// and every one of them closed. Beyond that the kernel sets MSG_CTRUNC and
// discards the descriptors that did not fit, so nothing leaks either way.
const maxRecvFDs = 16

// rightsMsg is one SCM_RIGHTS control message carrying one descriptor, laid
// out as the kernel expects (the struct gives it the alignment a cmsghdr
// needs, which a byte array would not).
type rightsMsg struct {
	hdr unix.Cmsghdr
	fd  int32
	_   [4]byte // CMSG_SPACE padding on 64-bit platforms
}

// credSpace is CMSG_SPACE(sizeof(struct ucred)): one SCM_CREDENTIALS
// message, which the kernel writes before the SCM_RIGHTS one whenever
// SO_PASSCRED is set on the socket.
const credSpace = unix.SizeofCmsghdr + (unix.SizeofUcred+7)&^7

// recvOOB is Receive's control buffer, aligned for cmsghdr: room for the
// credentials and then one header with maxRecvFDs descriptors (a multiple
// of 8 bytes, so CMSG_SPACE == CMSG_LEN). Without the room for the
// credentials, a socket with SO_PASSCRED would leave too little for the
// descriptors: the kernel would set MSG_CTRUNC and close the connection.
type recvOOB struct {
	_ [0]unix.Cmsghdr
	b [credSpace + unix.SizeofCmsghdr + 4*maxRecvFDs]byte
}

// Send sends one hand-off datagram on sock, an AF_UNIX SOCK_DGRAM socket:
// h encoded as the payload and connFD as SCM_RIGHTS. to is the receiver's
// socket path ("@name" for the abstract namespace), or "" when sock is
// connected.
//
// Send never blocks, whatever sock's mode (MSG_DONTWAIT). When the
// receiver's queue is full it returns an error matching syscall.EAGAIN
// (equal to unix.EAGAIN): the datagram was not sent and the caller may try
// another worker or later. On success the kernel holds its own reference to
// the connection; the caller still owns connFD and should close it.
//
// Send is safe for concurrent use and does not allocate unless it fails.
// A raw fd is taken so it can be called from syscall.RawConn's Control or
// Write callbacks as well as with descriptors from unix.Accept4.
func Send(sock int, to string, h *Header, connFD int) error {
	var buf [MaxHeaderLen]byte
	p, err := h.AppendBinary(buf[:0])
	if err != nil {
		return fmt.Errorf("handoff: send: %w", err)
	}
	if connFD < 0 {
		return fmt.Errorf("handoff: send: invalid descriptor %d", connFD)
	}
	var rights rightsMsg
	rights.hdr.Level = unix.SOL_SOCKET
	rights.hdr.Type = unix.SCM_RIGHTS
	rights.hdr.SetLen(unix.CmsgLen(4))
	rights.fd = int32(connFD)

	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.SetIovlen(1)
	msg.Control = (*byte)(unsafe.Pointer(&rights))
	msg.SetControllen(unix.CmsgSpace(4))

	var sa unix.RawSockaddrUnix
	if to != "" {
		n, err := fillSockaddr(&sa, to)
		if err != nil {
			return fmt.Errorf("handoff: send: %w", err)
		}
		msg.Name = (*byte)(unsafe.Pointer(&sa))
		msg.Namelen = n
	}
	// MSG_DONTWAIT: never blocks, so RawSyscall, which spares the runtime
	// the bookkeeping of a blocking call (and a sysmon wake-up).
	_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(sock), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	if e != 0 {
		if to == "" {
			return fmt.Errorf("handoff: sendmsg: %w", e)
		}
		return fmt.Errorf("handoff: sendmsg to %s: %w", to, e)
	}
	return nil
}

// fillSockaddr encodes path the way the kernel reads sockaddr_un, as
// x/sys/unix does: "@" selects the abstract namespace.
func fillSockaddr(sa *unix.RawSockaddrUnix, path string) (uint32, error) {
	if len(path) >= len(sa.Path) {
		return 0, fmt.Errorf("socket path %q longer than %d bytes", path, len(sa.Path)-1)
	}
	sa.Family = unix.AF_UNIX
	for i := 0; i < len(path); i++ {
		sa.Path[i] = int8(path[i])
	}
	n := uint32(unsafe.Offsetof(sa.Path)) + uint32(len(path)) + 1 // with the NUL
	if path[0] == '@' {
		sa.Path[0] = 0
		n-- // abstract names are counted, not terminated
	}
	return n, nil
}

// Receive reads one hand-off datagram from sock, an AF_UNIX SOCK_DGRAM
// socket, without blocking, and decodes its header into h (reusing h.Name
// when it is unchanged, see Header.UnmarshalBinary).
//
// It returns the connection's descriptor, close-on-exec, which the caller
// owns. When nothing is queued it returns -1 and exactly unix.EAGAIN
// (unwrapped, so a poller loop pays no allocation): wait for readability
// and call again. When the datagram is not a valid hand-off it closes every
// descriptor that came with it and returns an error matching ErrMalformed;
// the datagram is consumed and the next one can be read. Other errors come
// from recvmsg.
//
// Receive does not look at who sent the datagram; a worker should use
// ReceiveFrom, which does.
func Receive(sock int, h *Header) (connFD int, err error) {
	connFD, _, _, err = receive(sock, h)
	return connFD, err
}

// ReceiveFrom is Receive that also returns the sender's credentials, which
// the caller checks before serving the connection (a worker accepts
// hand-offs from its supervisor's uid only). sock must have SO_PASSCRED
// set (unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PASSCRED, 1), or
// PassCredentials=yes in the .socket unit).
//
// A datagram without credentials is rejected like a malformed one (its
// descriptors closed, the datagram consumed) with an error matching
// ErrNoCredentials. For a malformed datagram, cred still holds its sender
// when the kernel reported one, so that the caller can tell a broken
// supervisor from a stranger. Like Receive it does not allocate unless it
// fails, and returns exactly unix.EAGAIN when nothing is queued.
func ReceiveFrom(sock int, h *Header) (connFD int, cred Ucred, err error) {
	connFD, cred, ok, err := receive(sock, h)
	if !ok && (err == nil || errors.Is(err, ErrMalformed)) {
		// A datagram was read (and a malformed one's descriptors closed):
		// without credentials it is rejected whatever else is wrong.
		if connFD >= 0 {
			unix.Close(connFD)
		}
		return -1, Ucred{}, fmt.Errorf("handoff: receive: %w", ErrNoCredentials)
	}
	return connFD, cred, err
}

// receive is Receive and ReceiveFrom: hasCred says whether the datagram
// carried SCM_CREDENTIALS.
func receive(sock int, h *Header) (connFD int, cred Ucred, hasCred bool, err error) {
	var buf [MaxHeaderLen + 1]byte // one spare byte: a longer payload sets MSG_TRUNC
	var oob recvOOB
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.SetIovlen(1)
	msg.Control = &oob.b[0]
	msg.SetControllen(len(oob.b))
	var n uintptr
	for {
		var e unix.Errno
		n, _, e = unix.Syscall(unix.SYS_RECVMSG, uintptr(sock), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN {
			return -1, cred, false, unix.EAGAIN
		}
		if e != 0 {
			return -1, cred, false, fmt.Errorf("handoff: recvmsg: %w", e)
		}
		break
	}

	var fds [maxRecvFDs]int32
	nfds := parseControl(oob.b[:msg.Controllen], fds[:], &cred, &hasCred)
	kept := min(nfds, len(fds))
	var bad error
	switch {
	case peekVersion(buf[:n]) != nil:
		// First: another version's datagram may be longer or carry other
		// descriptors, and the receiver must say which version it got.
		bad = peekVersion(buf[:n])
	case msg.Flags&unix.MSG_CTRUNC != 0:
		bad = fmt.Errorf("%w: control data truncated (more than %d descriptors or not enough free descriptors)", ErrMalformed, maxRecvFDs)
	case msg.Flags&unix.MSG_TRUNC != 0:
		bad = fmt.Errorf("%w: payload longer than %d bytes", ErrMalformed, MaxHeaderLen)
	case nfds == 0:
		bad = fmt.Errorf("%w: no descriptor", ErrMalformed)
	case nfds > 1:
		bad = fmt.Errorf("%w: %d descriptors, want 1", ErrMalformed, nfds)
	default:
		if err := h.UnmarshalBinary(buf[:n]); err != nil {
			bad = err
		}
	}
	if bad != nil {
		for _, fd := range fds[:kept] {
			unix.Close(int(fd))
		}
		return -1, cred, hasCred, fmt.Errorf("handoff: receive: %w", bad)
	}
	return int(fds[0]), cred, hasCred, nil
}

// parseControl stores the descriptors of every SCM_RIGHTS message in oob
// into fds and returns how many there were, and the SCM_CREDENTIALS
// message, if any, into cred and hasCred. Descriptors beyond len(fds) are
// closed at once, so that none can leak whatever the buffer sizes. Other
// control messages carry no descriptor and are skipped.
func parseControl(oob []byte, fds []int32, cred *Ucred, hasCred *bool) int {
	n := 0
	hdrLen := unix.CmsgLen(0)
	for off := 0; off+hdrLen <= len(oob); {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		l := int(h.Len)
		if l < hdrLen || off+l > len(oob) {
			break // the kernel never writes this; stop rather than read garbage
		}
		data := oob[off+hdrLen : off+l]
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS:
			for i := 0; i+4 <= len(data); i += 4 {
				fd := *(*int32)(unsafe.Pointer(&data[i]))
				if n < len(fds) {
					fds[n] = fd
				} else {
					unix.Close(int(fd))
				}
				n++
			}
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_CREDENTIALS && len(data) >= unix.SizeofUcred:
			uc := (*unix.Ucred)(unsafe.Pointer(&data[0]))
			*cred = Ucred{Pid: uc.Pid, Uid: uc.Uid, Gid: uc.Gid}
			*hasCred = true
		}
		off += unix.CmsgSpace(l - hdrLen)
	}
	return n
}
