package sticky

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/handoff"
)

// ProxyHeader is what a PROXY protocol header says about a connection.
type ProxyHeader struct {
	// Version is 1 (the text format) or 2 (the binary format).
	Version int

	// Local is true when the header carries no client address to use: a v1
	// UNKNOWN line, a v2 LOCAL command (a proxy's health check), or a v2
	// family other than TCP over IPv4 or IPv6 (UNSPEC, UDP, AF_UNIX), which
	// the specification lets a receiver treat as UNSPEC. The connection's own
	// peer address is then the one to use. Source and Dest are zero.
	Local bool

	// Source is the original client's address and port; Dest is the address
	// and port the client connected to. An IPv6 header may carry an
	// IPv4-mapped address; it is returned as sent.
	//
	// Both follow the hand-off's address rule, handoff.CheckAddrPort, so
	// that every header accepted here can be handed to a worker: a header
	// whose source fails it (port 0, 0.0.0.0, ::, ::ffff:0.0.0.0) is refused
	// as ProxyMalformed, and a destination that fails it is dropped: Dest
	// is then zero while Source is set, and the worker uses the
	// connection's own local address, as for a header without one.
	Source, Dest netip.AddrPort
}

// ProxyOptions tunes [ReadProxyHeader]. The zero value gives the defaults.
type ProxyOptions struct {
	// Timeout bounds the time from the call until the whole header has
	// arrived. Zero means 3 seconds: the specification asks receivers that
	// time out to wait at least 3 s, to cover a TCP retransmission, and a
	// proxy sends the header at once, so a longer wait only keeps a dead
	// connection around. Negative means no limit other than the context's.
	Timeout time.Duration

	// MaxV2Length is the largest v2 length field accepted: the address block
	// plus TLVs, the 16-byte fixed part not included. Zero means 1536, room
	// for the largest address block (216 bytes, AF_UNIX) and the TLVs that
	// haproxy or a cloud load balancer add (ALPN, authority, a 128-byte
	// unique ID, TLS details). Values above 65535 mean 65535.
	MaxV2Length int

	// onPeek, when set, is called with the byte count of every MSG_PEEK that
	// found data. Tests use it to write the rest of a split header only once
	// the parser has seen the first part.
	onPeek func(n int)
}

const (
	defaultProxyTimeout     = 3 * time.Second
	defaultProxyMaxV2Length = 1536

	v1Prefix = "PROXY "
	v1MaxLen = 107 // "PROXY UNKNOWN" + two IPv6 addresses + two ports + CRLF
	v2Sig    = "\r\n\r\n\x00\r\nQUIT\n"
	v2Fixed  = 16
	// minHeaderLen is the shortest valid header, "PROXY UNKNOWN\r\n"; every v2
	// header is longer. Reading this many bytes never reads past a header.
	minHeaderLen = 15
	// peekSize holds any v1 line and any v2 header without TLVs (16 + 216).
	peekSize = 256
)

// ProxyReason classifies why a PROXY protocol header was refused, so that a
// dispatcher can count refusals by cause.
type ProxyReason uint8

// The reasons a header is refused.
const (
	// ProxyMalformed: not a PROXY protocol header, or one that breaks the
	// grammar (bad address or port, extra spaces, CR without LF, TLVs that
	// overflow the header, a CRC32C TLV that does not match or a second
	// one...), or whose source address cannot be handed off (see
	// ProxyHeader.Source).
	ProxyMalformed ProxyReason = iota + 1
	// ProxyTooLong: a v1 line without CRLF in its first 107 bytes, or a v2
	// length above ProxyOptions.MaxV2Length.
	ProxyTooLong
	// ProxyUnsupported: a v2 version other than 2, a v2 command other than
	// LOCAL or PROXY, a v2 family/transport byte the specification does not
	// define, or a v1 protocol other than TCP4, TCP6 and UNKNOWN.
	ProxyUnsupported
	// ProxyTimeout: the header was not complete by the deadline.
	ProxyTimeout
	// ProxyTruncated: the peer closed the connection (or the buffer ended)
	// before the header was complete.
	ProxyTruncated
	// ProxyReadError: any other failure to read, including cancellation of
	// the context.
	ProxyReadError
)

var proxyReasonNames = [...]string{
	ProxyMalformed:   "malformed",
	ProxyTooLong:     "too_long",
	ProxyUnsupported: "unsupported",
	ProxyTimeout:     "timeout",
	ProxyTruncated:   "truncated",
	ProxyReadError:   "read_error",
}

// String returns a short name fit for a metric label, such as "too_long".
func (r ProxyReason) String() string {
	if int(r) < len(proxyReasonNames) && proxyReasonNames[r] != "" {
		return proxyReasonNames[r]
	}
	return fmt.Sprintf("ProxyReason(%d)", uint8(r))
}

// ProxyError is the error returned for a refused or unread PROXY protocol
// header. Use errors.As to get the Reason.
type ProxyError struct {
	Reason ProxyReason
	Detail string // what was wrong, for a log line
	Err    error  // the underlying read error, if any
}

func (e *ProxyError) Error() string {
	s := "proxy protocol header: " + e.Reason.String()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying read error, so that errors.Is(err,
// os.ErrDeadlineExceeded) and errors.Is(err, context.Canceled) work.
func (e *ProxyError) Unwrap() error { return e.Err }

func proxyErr(r ProxyReason, format string, args ...any) error {
	if len(args) == 0 {
		return &ProxyError{Reason: r, Detail: format}
	}
	return &ProxyError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReadProxyHeader reads a PROXY protocol header, version 1 or 2, from conn
// and consumes exactly its bytes: whatever the client sent after the header
// stays unread in the socket, so the descriptor can be handed to another
// process that reads the client's first bytes itself.
//
// When conn implements syscall.Conn (*net.TCPConn, *net.UnixConn) the header
// is found with recv(MSG_PEEK) and then read with one read of its exact
// length: two system calls when the header arrived in one segment, as
// proxies send it. Other connections are read in small exact pieces (up to
// about fifty reads for a v1 line), never past the header.
//
// The read deadline is set for the duration of the call (see
// ProxyOptions.Timeout, and the context's deadline if earlier) and cleared
// on return; cancelling ctx aborts the read. On error the connection is in
// an unspecified state and should be closed. Errors are *ProxyError.
//
// Call it only on listeners configured to receive the protocol: the
// specification forbids guessing whether a header is present, since that
// would let any client spoof its address. A slow client holds the calling
// goroutine until the deadline, so read headers outside the accept loop.
func ReadProxyHeader(ctx context.Context, conn net.Conn, opts ProxyOptions) (ProxyHeader, error) {
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = defaultProxyTimeout
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	if err := ctx.Err(); err != nil {
		return ProxyHeader{}, classifyReadErr(ctx, err)
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return ProxyHeader{}, &ProxyError{Reason: ProxyReadError, Detail: "set read deadline", Err: err}
	}

	var stop func()
	if ctx.Done() != nil {
		stop = abortOnDone(ctx, conn)
	}

	maxV2 := opts.MaxV2Length
	if maxV2 <= 0 {
		maxV2 = defaultProxyMaxV2Length
	}
	maxV2 = min(maxV2, 0xffff)

	var (
		h   ProxyHeader
		err error
	)
	if sc, ok := conn.(syscall.Conn); ok {
		var rc syscall.RawConn
		if rc, err = sc.SyscallConn(); err == nil {
			h, err = readPeeking(rc, conn, maxV2, opts.onPeek)
		}
	} else {
		h, err = readExact(conn, maxV2)
	}

	if stop != nil {
		stop()
	}
	// Clearing can only fail on a closed conn, which the caller will see.
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		return ProxyHeader{}, classifyReadErr(ctx, err)
	}
	return h, nil
}

// ParseProxyHeader parses the PROXY protocol header at the start of b and
// returns it with its length in bytes. Only opts.MaxV2Length is used. When b
// holds only part of a header the error's reason is ProxyTruncated; on any
// error n is 0. It does not modify b.
func ParseProxyHeader(b []byte, opts ProxyOptions) (h ProxyHeader, n int, err error) {
	maxV2 := opts.MaxV2Length
	if maxV2 <= 0 {
		maxV2 = defaultProxyMaxV2Length
	}
	total, err := headerLen(b, min(maxV2, 0xffff))
	if err != nil {
		return ProxyHeader{}, 0, err
	}
	if total == 0 || total > len(b) {
		return ProxyHeader{}, 0, proxyErr(ProxyTruncated, "%d bytes are only the start of a header", len(b))
	}
	h, err = parseHeader(b[:total])
	if err != nil {
		return ProxyHeader{}, 0, err
	}
	return h, total, nil
}

// abortOnDone moves conn's read deadline into the past when ctx is done,
// which wakes a blocked read. Once the returned stop has returned, the
// deadline is no longer touched, so that a late cancellation cannot undo
// the clearing of the deadline for the caller.
func abortOnDone(ctx context.Context, conn net.Conn) (stop func()) {
	var (
		mu       sync.Mutex
		finished bool
	)
	stopAfter := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			_ = conn.SetReadDeadline(time.Unix(1, 0))
		}
	})
	return func() {
		mu.Lock()
		finished = true
		mu.Unlock()
		stopAfter()
	}
}

func classifyReadErr(ctx context.Context, err error) error {
	var pe *ProxyError
	if errors.As(err, &pe) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return &ProxyError{Reason: ProxyTimeout, Err: cerr}
		}
		return &ProxyError{Reason: ProxyReadError, Err: cerr}
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &ProxyError{Reason: ProxyTimeout, Err: err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &ProxyError{Reason: ProxyTruncated, Detail: "connection closed", Err: err}
	}
	return &ProxyError{Reason: ProxyReadError, Err: err}
}

// readPeeking peeks at the socket until the queued bytes show the header's
// length (or show that it is not one), then reads exactly the rest of it.
//
// Bytes that form only the start of a header are consumed at once rather
// than peeked again and again: they all belong to the header, and leaving
// them queued can stall the connection. The kernel counts a partly read
// segment's whole buffer against the receive window, so a few header bytes
// left at the tail of a large segment can hold the window at zero while the
// rest of the header waits behind it in the sender.
func readPeeking(rc syscall.RawConn, conn net.Conn, maxV2 int, onPeek func(int)) (ProxyHeader, error) {
	p := &peeker{maxV2: maxV2, onPeek: onPeek}
	if err := rc.Read(p.peek); err != nil {
		return ProxyHeader{}, err
	}
	if p.err != nil {
		return ProxyHeader{}, p.err
	}
	hdr := p.buf[:]
	if p.total > len(hdr) {
		hdr = make([]byte, p.total) // a v2 header with many TLVs
		copy(hdr, p.buf[:p.have])
	}
	hdr = hdr[:p.total]
	// A read of exactly the remaining length cannot take bytes beyond the
	// header.
	if _, err := io.ReadFull(conn, hdr[p.have:]); err != nil {
		return ProxyHeader{}, err
	}
	return parseHeader(hdr)
}

// peeker is the state of readPeeking's RawConn callback, in one allocation.
type peeker struct {
	buf    [peekSize]byte
	have   int // buf[:have] is already read from the socket: a proper prefix of the header
	total  int // the header's length, once known
	err    error
	maxV2  int
	onPeek func(int)
}

// peek is the RawConn.Read callback: it returns false to wait until the
// socket is readable again, true when p.total or p.err is set.
func (p *peeker) peek(fd uintptr) bool {
	// final is set once the peer is known to have shut down: the next peek
	// then sees every byte that will ever come.
	for final := false; ; final = true {
		n, err := recvPeek(int(fd), p.buf[p.have:])
		switch {
		case err == unix.EINTR:
			final = false // not a real look; the loop sets it again
			continue
		case err == unix.EAGAIN:
			return false // nothing queued yet: wait for readability
		case err != nil:
			p.err = &ProxyError{Reason: ProxyReadError, Detail: "peek", Err: err}
			return true
		case n == 0:
			p.err = io.EOF
			if p.have > 0 {
				p.err = io.ErrUnexpectedEOF
			}
			return true
		}
		if p.onPeek != nil {
			p.onPeek(p.have + n)
		}
		p.total, p.err = headerLen(p.buf[:p.have+n], p.maxV2)
		if p.err != nil || p.total > 0 {
			return true
		}
		if p.err = consume(int(fd), p.buf[p.have:p.have+n]); p.err != nil {
			return true
		}
		p.have += n
		if final {
			p.err = io.ErrUnexpectedEOF
			return true
		}
		// A peek cannot see the end of the stream behind the queued bytes,
		// so ask whether the peer has shut down; if not, wait for more
		// bytes (or the deadline).
		if !peerShutdown(int(fd)) {
			return false
		}
	}
}

// recvPeek is recv(fd, b, MSG_PEEK). unix.Recvfrom would also ask for the
// source address, in a buffer that escapes to the heap on every call. b is
// never empty here.
func recvPeek(fd int, b []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), unix.MSG_PEEK, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// consume reads exactly len(b) bytes that a peek has shown to be queued.
func consume(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return &ProxyError{Reason: ProxyReadError, Detail: "read", Err: err}
		case n == 0:
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

// peerShutdown reports whether the peer of the stream socket fd has shut
// down its sending side, so that no more bytes will come.
func peerShutdown(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
}

// readExact reads a header from a connection that cannot peek, never asking
// for a byte that could lie beyond the header: first the minimum header
// length, then up to the v2 length field and the rest of a v2 header once
// its length is known; a v1 line is read two bytes at a time (one when the
// last byte is CR), since while no CRLF has been seen at least those bytes
// remain. It needs only an io.Reader, so the fuzz test runs it on a buffer
// and compares it with the buffer parse.
func readExact(conn io.Reader, maxV2 int) (ProxyHeader, error) {
	buf := make([]byte, minHeaderLen, peekSize)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return ProxyHeader{}, err
	}
	for {
		total, err := headerLen(buf, maxV2)
		if err != nil {
			return ProxyHeader{}, err
		}
		if total > 0 {
			if total <= len(buf) {
				// Only a malformed line ends before 15 bytes; the parse
				// refuses it.
				return parseHeader(buf[:total])
			}
			n := len(buf)
			if total > cap(buf) {
				buf = append(make([]byte, 0, total), buf...)
			}
			buf = buf[:total]
			if _, err := io.ReadFull(conn, buf[n:]); err != nil {
				return ProxyHeader{}, err
			}
			return parseHeader(buf)
		}
		more := 2
		switch {
		case buf[0] == v2Sig[0]:
			more = v2Fixed - len(buf) // up to the length field
		case buf[len(buf)-1] == '\r':
			more = 1
		}
		n := len(buf)
		buf = buf[:n+more] // headerLen refuses lines past 107 bytes, within cap
		if _, err := io.ReadFull(conn, buf[n:]); err != nil {
			return ProxyHeader{}, err
		}
	}
}

// headerLen returns the total length of the header at the start of b as
// soon as b shows it, (0, nil) while b is a proper prefix of a possible
// header, or the error that b already proves. It refuses early what it can,
// so that a client that is not a proxy is turned away without waiting.
func headerLen(b []byte, maxV2 int) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if b[0] == v2Sig[0] {
		m := min(len(b), len(v2Sig))
		if string(b[:m]) != v2Sig[:m] {
			return 0, proxyErr(ProxyMalformed, "not a PROXY protocol header")
		}
		if len(b) <= 12 {
			return 0, nil
		}
		if v := b[12] >> 4; v != 2 {
			return 0, proxyErr(ProxyUnsupported, "v2: version %d", v)
		}
		if c := b[12] & 0xf; c > 1 {
			return 0, proxyErr(ProxyUnsupported, "v2: command %d", c)
		}
		if len(b) < v2Fixed {
			return 0, nil
		}
		n := int(binary.BigEndian.Uint16(b[14:16]))
		if n > maxV2 {
			return 0, proxyErr(ProxyTooLong, "v2: length %d above the limit of %d", n, maxV2)
		}
		return v2Fixed + n, nil
	}

	m := min(len(b), len(v1Prefix))
	if string(b[:m]) != v1Prefix[:m] {
		return 0, proxyErr(ProxyMalformed, "not a PROXY protocol header")
	}
	for i := m; i < len(b) && i < v1MaxLen; i++ {
		switch b[i] {
		case '\r':
			if i+2 > v1MaxLen {
				return 0, proxyErr(ProxyTooLong, "v1: line longer than %d bytes", v1MaxLen)
			}
			if i+1 == len(b) {
				return 0, nil
			}
			if b[i+1] != '\n' {
				return 0, proxyErr(ProxyMalformed, "v1: CR not followed by LF")
			}
			return i + 2, nil
		case '\n':
			return 0, proxyErr(ProxyMalformed, "v1: LF without CR")
		}
	}
	if len(b) >= v1MaxLen {
		return 0, proxyErr(ProxyTooLong, "v1: no CRLF in the first %d bytes", v1MaxLen)
	}
	return 0, nil
}

// parseHeader parses b, exactly one header as delimited by headerLen.
func parseHeader(b []byte) (ProxyHeader, error) {
	if b[0] == v2Sig[0] {
		return parseV2(b)
	}
	return parseV1(b[len(v1Prefix) : len(b)-2])
}

// parseV1 parses the line between "PROXY " and CRLF.
func parseV1(line []byte) (ProxyHeader, error) {
	proto, rest, _ := bytes.Cut(line, []byte{' '})
	var is4 bool
	switch string(proto) {
	case "UNKNOWN":
		// The specification asks to ignore whatever follows, up to CRLF.
		return ProxyHeader{Version: 1, Local: true}, nil
	case "TCP4":
		is4 = true
	case "TCP6":
	case "":
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v1: empty protocol")
	default:
		return ProxyHeader{}, proxyErr(ProxyUnsupported, "v1: protocol %q", proto)
	}

	var f [4][]byte
	for i := range f {
		var ok bool
		f[i], rest, ok = bytes.Cut(rest, []byte{' '})
		if len(f[i]) == 0 || ok != (i < 3) {
			return ProxyHeader{}, proxyErr(ProxyMalformed, "v1: want 4 fields separated by single spaces after %s", proto)
		}
	}
	src, ok := parseV1Addr(f[0], is4)
	if !ok {
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v1: bad %s source address %q", proto, f[0])
	}
	dst, ok := parseV1Addr(f[1], is4)
	if !ok {
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v1: bad %s destination address %q", proto, f[1])
	}
	sport, ok := parsePort(f[2])
	if !ok {
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v1: bad source port %q", f[2])
	}
	dport, ok := parsePort(f[3])
	if !ok {
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v1: bad destination port %q", f[3])
	}
	return usable(ProxyHeader{
		Version: 1,
		Source:  netip.AddrPortFrom(src, sport),
		Dest:    netip.AddrPortFrom(dst, dport),
	})
}

// usable applies the hand-off's address rule to the addresses of a parsed
// header: the dispatcher hands every accepted header to a worker, and an
// address the encoder refuses would fail there instead, after the header
// was consumed. A bad source is the header's fault and refuses the
// connection; a bad destination is only information lost, so the header
// stands without it.
func usable(h ProxyHeader) (ProxyHeader, error) {
	if err := handoff.CheckAddrPort(h.Source); err != nil {
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v%d: unusable source: %v", h.Version, err)
	}
	if handoff.CheckAddrPort(h.Dest) != nil {
		h.Dest = netip.AddrPort{}
	}
	return h, nil
}

func parseV1Addr(b []byte, is4 bool) (netip.Addr, bool) {
	if is4 {
		return parseIPv4(b)
	}
	// The longest IPv6 text is 45 bytes (IPv4-mapped form); netip accepts
	// what inet_pton accepts, plus zones, which are refused here.
	if len(b) > 45 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(string(b))
	if err != nil || !a.Is6() || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

// parseIPv4 parses dotted decimal as the specification puts it: exactly four
// numbers 0-255, no leading zeros (which could be read as octal).
// Hand-written because netip.ParseAddr would need a string.
func parseIPv4(b []byte) (netip.Addr, bool) {
	var ip [4]byte
	i := 0
	for k := range ip {
		if k > 0 {
			if i >= len(b) || b[i] != '.' {
				return netip.Addr{}, false
			}
			i++
		}
		start, v := i, 0
		for i < len(b) && i-start < 3 && '0' <= b[i] && b[i] <= '9' {
			v = v*10 + int(b[i]-'0')
			i++
		}
		if i == start || v > 255 || (b[start] == '0' && i-start > 1) {
			return netip.Addr{}, false
		}
		ip[k] = byte(v)
	}
	if i != len(b) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(ip), true
}

// parsePort parses a decimal port, 0-65535, no sign, no leading zeros.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (b[0] == '0' && len(b) > 1) {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	if v > 0xffff {
		return 0, false
	}
	return uint16(v), true
}

// v2 family/transport bytes defined by the specification.
const (
	v2Unspec     = 0x00
	v2TCP4       = 0x11
	v2UDP4       = 0x12
	v2TCP6       = 0x21
	v2UDP6       = 0x22
	v2UnixStream = 0x31
	v2UnixDgram  = 0x32
)

// parseV2 parses a whole v2 header whose signature, version, command and
// length headerLen has checked.
func parseV2(b []byte) (ProxyHeader, error) {
	local := ProxyHeader{Version: 2, Local: true}
	if b[12]&0xf == 0 {
		// LOCAL: "the receiver must accept this connection as valid and
		// must use the real connection endpoints and discard the protocol
		// block including the family".
		return local, nil
	}
	block := b[v2Fixed:]
	var alen int
	switch fam := b[13]; fam {
	case v2Unspec:
		return local, nil
	case v2TCP4, v2UDP4:
		alen = 12
	case v2TCP6, v2UDP6:
		alen = 36
	case v2UnixStream, v2UnixDgram:
		alen = 216
	default:
		return ProxyHeader{}, proxyErr(ProxyUnsupported, "v2: family/transport 0x%02x", fam)
	}
	if len(block) < alen {
		return ProxyHeader{}, proxyErr(ProxyMalformed, "v2: %d address bytes for family 0x%02x, want %d", len(block), b[13], alen)
	}
	if err := checkTLVs(b, v2Fixed+alen); err != nil {
		return ProxyHeader{}, err
	}
	h := ProxyHeader{Version: 2}
	switch b[13] {
	case v2TCP4:
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(block[0:4])), binary.BigEndian.Uint16(block[8:10]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(block[4:8])), binary.BigEndian.Uint16(block[10:12]))
	case v2TCP6:
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(block[0:16])), binary.BigEndian.Uint16(block[32:34]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(block[16:32])), binary.BigEndian.Uint16(block[34:36]))
	default:
		// UDP and AF_UNIX: "a receiver is not required to implement other
		// ones, provided that it automatically falls back to the UNSPEC
		// mode for the valid combinations above".
		return local, nil
	}
	return usable(h)
}

const tlvCRC32C = 0x03

// checkTLVs walks the TLVs from off to the end of the header b and refuses
// one that overflows the header, as haproxy does. TLVs are otherwise skipped,
// except that a CRC32C TLV must match: the specification requires a
// receiver that knows the type to check it. A second CRC32C TLV is refused:
// each is a pass over the whole header, and a header of crafted matching
// ones (up to 9362 in 64 KiB) would buy thousands of passes for one sent.
func checkTLVs(b []byte, off int) error {
	sawCRC := false
	for off < len(b) {
		if len(b)-off < 3 {
			return proxyErr(ProxyMalformed, "v2: %d stray bytes after the last TLV", len(b)-off)
		}
		typ := b[off]
		start := off + 3
		end := start + int(binary.BigEndian.Uint16(b[off+1:start]))
		if end > len(b) {
			return proxyErr(ProxyMalformed, "v2: TLV 0x%02x overflows the header", typ)
		}
		if typ == tlvCRC32C {
			if sawCRC {
				return proxyErr(ProxyMalformed, "v2: more than one CRC32C TLV")
			}
			sawCRC = true
			if end-start != 4 {
				return proxyErr(ProxyMalformed, "v2: CRC32C TLV of %d bytes", end-start)
			}
			// The checksum covers the whole header with its own field zeroed.
			tab := crc32.MakeTable(crc32.Castagnoli)
			c := crc32.Update(0, tab, b[:start])
			c = crc32.Update(c, tab, []byte{0, 0, 0, 0})
			c = crc32.Update(c, tab, b[end:])
			if want := binary.BigEndian.Uint32(b[start:end]); c != want {
				return proxyErr(ProxyMalformed, "v2: CRC32C 0x%08x, header sums to 0x%08x", want, c)
			}
		}
		off = end
	}
	return nil
}
