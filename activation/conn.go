package activation

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/powerhouse/powerhouse/handoff"
)

// Conn is a handed-off connection that came through PROXY protocol: it
// reports the original client as RemoteAddr (and the address the client
// connected to as LocalAddr, when the PROXY header carried it), where the
// socket itself would report the load balancer.
//
// Connections without such an address are returned unwrapped, as the
// *net.TCPConn or *net.UnixConn the kernel made, so type assertions and
// everything else work unchanged. For a *Conn, NetConn returns that
// underlying connection; ReadFrom, WriteTo, CloseRead, CloseWrite and
// SyscallConn are forwarded to it, so net/http's sendfile/splice paths and
// half-closes keep working.
type Conn struct {
	net.Conn
	remote net.Addr
	local  net.Addr // nil: the socket's own
}

// RemoteAddr returns the original client address from the PROXY header, a
// *net.TCPAddr.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// LocalAddr returns the original destination address from the PROXY
// header, or the socket's own local address when the header had none.
func (c *Conn) LocalAddr() net.Addr {
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

// NetConn returns the underlying *net.TCPConn or *net.UnixConn, whose
// addresses are those of the socket.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// ReadFrom lets io.Copy into the connection use the underlying socket's
// sendfile/splice.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r) // struct hides ReadFrom: no recursion
}

// WriteTo lets io.Copy from the connection use the underlying socket's
// splice.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := c.Conn.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}

// CloseRead shuts down the reading side of the underlying socket.
func (c *Conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return fmt.Errorf("close read: %w", errors.ErrUnsupported)
}

// CloseWrite shuts down the writing side of the underlying socket.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write: %w", errors.ErrUnsupported)
}

// SyscallConn returns the underlying socket's raw connection.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, fmt.Errorf("syscall conn: %w", errors.ErrUnsupported)
}

// newConn turns a received descriptor into the connection Accept returns,
// taking ownership of fd (it is closed on every path).
//
// net.FileConn is the only way the standard library makes a real
// *net.TCPConn from a descriptor; it duplicates the descriptor, so the
// original is closed right after. The dup, the getsockname/getpeername
// and the poller registration are the bulk of the cost of one hand-off
// (BenchmarkAccept measures it).
func newConn(fd int, h *handoff.Header) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "handoff")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: descriptor is not a socket: %w", handoff.ErrMalformed, err)
	}
	// Only a connected stream socket is a connection to serve; anything
	// else (a listening socket, UDP, a unix datagram socket) is refused.
	switch s := c.(type) {
	case *net.TCPConn:
		if s.RemoteAddr() == nil {
			c.Close()
			return nil, fmt.Errorf("%w: TCP socket is not connected", handoff.ErrMalformed)
		}
	case *net.UnixConn:
		if s.LocalAddr().Network() != "unix" || s.RemoteAddr() == nil {
			c.Close()
			return nil, fmt.Errorf("%w: unix socket is not a connected stream socket", handoff.ErrMalformed)
		}
	default:
		c.Close()
		return nil, fmt.Errorf("%w: %T is not a stream connection", handoff.ErrMalformed, c)
	}
	if !h.Source.IsValid() {
		return c, nil
	}
	pc := &Conn{Conn: c, remote: tcpAddr(h.Source)}
	if h.Destination.IsValid() {
		pc.local = tcpAddr(h.Destination)
	}
	return pc, nil
}

// tcpAddr unmaps IPv4-mapped addresses so that a client prints as
// 203.0.113.7:51234 whichever family the PROXY header used.
func tcpAddr(ap netip.AddrPort) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}
