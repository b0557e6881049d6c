package cli

import (
	"bytes"
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

// dumpTCP asks the kernel for every TCP socket of family and keeps those
// on ports.
func dumpTCP(family uint8, ports map[uint16]bool) ([]tcpConn, error) {
	req := make([]byte, sizeofInetDiagReqV2)
	req[0], req[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[4:], tcpAccepted)
	var out []tcpConn
	err := sockDiag(req, func(b []byte) {
		if c, ok := parseInetDiagMsg(b); ok && ports[c.Local.Port()] {
			out = append(out, c)
		}
	})
	return out, err
}

// unixConn is one connection to a unix stream listener: Server is the
// cookie of its accepted socket (0 while it waits in the accept queue),
// Client the inode of the connecting socket (0 once that is closed). The
// client's inode is what both states show: the listener lists the
// queued connections by it, an accepted socket names its peer by it.
type unixConn struct {
	Server uint64
	Client uint32
}

// unixConns lists the connections to the unix stream listeners at paths:
// those in their accept queues and those accepted, which carry the
// listener's address.
func unixConns(paths map[string]bool) ([]unixConn, error) {
	req := make([]byte, sizeofUnixDiagReq)
	req[0] = unix.AF_UNIX
	ne := binary.NativeEndian
	ne.PutUint32(req[4:], 1<<1|1<<10) // TCP_ESTABLISHED (connected), TCP_LISTEN
	ne.PutUint32(req[12:], udiagShowName|udiagShowPeer|udiagShowIcons)
	var out []unixConn
	err := sockDiag(req, func(b []byte) {
		if len(b) < sizeofUnixDiagMsg || b[1] != unix.SOCK_STREAM {
			return
		}
		listening := b[2] == 10
		cookie := uint64(ne.Uint32(b[8:])) | uint64(ne.Uint32(b[12:]))<<32
		var name string
		var peer uint32
		var queued []byte
		for attrs := b[sizeofUnixDiagMsg:]; len(attrs) >= 4; {
			l, typ := int(ne.Uint16(attrs)), ne.Uint16(attrs[2:])
			if l < 4 || l > len(attrs) {
				return
			}
			v := attrs[4:l]
			switch {
			case typ == unixDiagName:
				n, _, _ := bytes.Cut(v, []byte{0})
				name = string(n)
			case typ == unixDiagPeer && len(v) >= 4:
				peer = ne.Uint32(v)
			case typ == unixDiagIcons:
				queued = v
			}
			attrs = attrs[min(len(attrs), (l+3)&^3):]
		}
		if !paths[name] {
			return
		}
		if !listening {
			out = append(out, unixConn{Server: cookie, Client: peer})
			return
		}
		for ; len(queued) >= 4; queued = queued[4:] {
			if ino := ne.Uint32(queued); ino != 0 {
				out = append(out, unixConn{Client: ino})
			}
		}
	})
	return out, err
}

// Sizes of linux/unix_diag.h's request and answer, what to show and the
// attributes that show it.
const (
	sizeofUnixDiagReq = 24 // family, protocol, pad, states, ino, show, cookie[2]
	sizeofUnixDiagMsg = 16 // family, type, state, pad, ino, cookie[2]
	udiagShowName     = 0x1
	udiagShowPeer     = 0x4
	udiagShowIcons    = 0x8
	unixDiagName      = 0
	unixDiagPeer      = 2
	unixDiagIcons     = 3
)

// sockDiag sends the SOCK_DIAG_BY_FAMILY dump request req (the structure
// after the netlink header) over NETLINK_SOCK_DIAG and calls each with
// every answer, bounded by maxDiagBytes in all.
func sockDiag(req []byte, each func([]byte)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	msg := make([]byte, unix.SizeofNlMsghdr+len(req))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(msg[8:], 1) // sequence
	copy(msg[unix.SizeofNlMsghdr:], req)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag: send: %w", err)
	}
	buf := make([]byte, 1<<16)
	total := 0
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("sock_diag: receive: %w", err)
		}
		if total += n; total > maxDiagBytes {
			return fmt.Errorf("sock_diag: more than %d bytes of sockets", maxDiagBytes)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return fmt.Errorf("sock_diag: %w", syscall.Errno(-errno))
					}
				}
				return errors.New("sock_diag: error message")
			}
			each(m.Data)
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
