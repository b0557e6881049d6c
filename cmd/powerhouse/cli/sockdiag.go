package cli

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpConn is one TCP socket the kernel reports through sock_diag, other
// than a listener: its local address and its cookie, a number the kernel
// gives each socket once and never reuses while the system runs (a
// connection keeps it from the handshake through TIME_WAIT).
type tcpConn struct {
	Local  netip.AddrPort
	Cookie uint64
}

// Sizes and offsets of the sock_diag structures (linux/inet_diag.h),
// which golang.org/x/sys does not define.
const (
	sizeofInetDiagSockID = 48 // sport, dport, src[4], dst[4], if, cookie[2]
	sizeofInetDiagReqV2  = 8 + sizeofInetDiagSockID
	sizeofInetDiagMsg    = 4 + sizeofInetDiagSockID + 20
	// tcpAccepted are the states of a connection the handshake has
	// made, from ESTABLISHED (1; in the accept queue or accepted) to its
	// end: FIN_WAIT1 (4), FIN_WAIT2 (5), TIME_WAIT (6), CLOSE (7),
	// CLOSE_WAIT (8), LAST_ACK (9), CLOSING (11). Not the handshake
	// (SYN_RECV, NEW_SYN_RECV: a request becomes a new socket with a new
	// cookie when it completes, so it would count twice, and a SYN that
	// never completes is no connection served), not LISTEN, not SYN_SENT.
	tcpAccepted = 1<<1 | 1<<4 | 1<<5 | 1<<6 | 1<<7 | 1<<8 | 1<<9 | 1<<11
	// maxDiagBytes bounds one dump: 64 MiB is close to a million
	// sockets' records.
	maxDiagBytes = 64 << 20
)

// tcpConns lists the TCP connections of this network namespace whose
// local port is one of ports, from the accept queue to TIME_WAIT
// (tcpAccepted), IPv4 and IPv6.
func tcpConns(ports map[uint16]bool) ([]tcpConn, error) {
	var out []tcpConn
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		cs, err := dumpTCP(family, ports)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

// dumpTCP asks the kernel (NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY) for
// every TCP socket of family and keeps those on ports.
func dumpTCP(family uint8, ports map[uint16]bool) ([]tcpConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.SizeofNlMsghdr+sizeofInetDiagReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], tcpAccepted)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: send: %w", err)
	}
	var out []tcpConn
	buf := make([]byte, 1<<16)
	total := 0
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag: receive: %w", err)
		}
		if total += n; total > maxDiagBytes {
			return nil, fmt.Errorf("sock_diag: more than %d bytes of sockets", maxDiagBytes)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return nil, fmt.Errorf("sock_diag: %w", syscall.Errno(-errno))
					}
				}
				return nil, errors.New("sock_diag: error message")
			}
			if c, ok := parseInetDiagMsg(m.Data); ok && ports[c.Local.Port()] {
				out = append(out, c)
			}
		}
	}
}

// parseInetDiagMsg reads the local address and cookie of one
// inet_diag_msg.
func parseInetDiagMsg(b []byte) (tcpConn, bool) {
	if len(b) < sizeofInetDiagMsg {
		return tcpConn{}, false
	}
	id := b[4 : 4+sizeofInetDiagSockID]
	port := binary.BigEndian.Uint16(id[0:])
	var a netip.Addr
	switch b[0] {
	case unix.AF_INET:
		a = netip.AddrFrom4([4]byte(id[4:8]))
	case unix.AF_INET6:
		a = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
	default:
		return tcpConn{}, false
	}
	ne := binary.NativeEndian
	cookie := uint64(ne.Uint32(id[40:])) | uint64(ne.Uint32(id[44:]))<<32
	return tcpConn{Local: netip.AddrPortFrom(a, port), Cookie: cookie}, true
}
