package activation_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
	"golang.org/x/sys/unix"
)

var (
	proxy4 = handoff.Header{
		Name:        "0.0.0.0:9999",
		Source:      netip.MustParseAddrPort("203.0.113.7:51234"),
		Destination: netip.MustParseAddrPort("192.0.2.10:9999"),
		Flags:       handoff.FlagProxy,
	}
	proxy6 = handoff.Header{
		Name:   "[::]:9999",
		Source: netip.MustParseAddrPort("[2001:db8::1]:40000"),
		Flags:  handoff.FlagProxy,
	}
)

func encode(t testing.TB, h handoff.Header) []byte {
	t.Helper()
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStickyChild runs a worker the way systemd does for a sticky instance:
// a child process inherits the hand-off socket (LISTEN_FDS=1) and receives
// real connections sent over it, mixed with malformed datagrams. The child
// accepts four connections and closes its listener; the datagrams queued
// behind must still be in the socket afterwards.
func TestStickyChild(t *testing.T) {
	path, held, file := handoffSocket(t)
	w := startChild(t, "accept", []*os.File{file}, "ACCEPT_N=4", "LISTEN_FDNAMES=handoff")
	file.Close()
	if got := w.line(t); got != "listener=*activation.HandoffListener" {
		t.Fatalf("child: %s", got)
	}
	d := dial(t, path)

	type served struct {
		client net.Conn
		want   string
	}
	var valid []served
	// sendTCP hands over the server side of a fresh TCP connection, then
	// closes it as the dispatcher does: from then on only the child holds it.
	sendTCP := func(h handoff.Header, want func(client *net.TCPConn) string) {
		client, server := tcpPair(t)
		d.send(h, rawFD(t, server))
		server.Close()
		valid = append(valid, served{client, want(client)})
	}
	var dropped []net.Conn
	sendBad := func(payload []byte, nfds int) {
		client, server := tcpPair(t)
		fds := make([]int, nfds)
		for i := range fds {
			fds[i] = rawFD(t, server)
		}
		d.sendRaw(payload, fds...)
		server.Close()
		if nfds > 0 {
			dropped = append(dropped, client)
		}
	}
	wrongVersion := encode(t, handoff.Header{Name: "v2"})
	wrongVersion[4] = 2

	sendTCP(handoff.Header{Name: "0.0.0.0:9999"}, func(c *net.TCPConn) string {
		return fmt.Sprintf("type=*net.TCPConn remote=%s local=%s name=0.0.0.0:9999", c.LocalAddr(), c.RemoteAddr())
	})
	sendBad(encode(t, handoff.Header{Name: "no fd"}), 0)
	sendTCP(proxy4, func(*net.TCPConn) string {
		return "type=*activation.Conn remote=203.0.113.7:51234 local=192.0.2.10:9999 under=*net.TCPConn name=0.0.0.0:9999"
	})
	sendBad(encode(t, handoff.Header{Name: "two fds"}), 2)
	sendBad([]byte("GET / HTTP/1.0\r\n\r\n"), 1)
	sendBad(wrongVersion, 1)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	d.sendRaw(encode(t, handoff.Header{Name: "udp"}), rawFD(t, udp))
	udp.Close()
	sendTCP(proxy6, func(c *net.TCPConn) string {
		return fmt.Sprintf("type=*activation.Conn remote=[2001:db8::1]:40000 local=%s under=*net.TCPConn name=[::]:9999", c.RemoteAddr())
	})
	us, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	d.send(handoff.Header{Name: "/run/app.sock"}, us[1])
	unix.Close(us[1])
	uf := os.NewFile(uintptr(us[0]), "client")
	uclient, err := net.FileConn(uf)
	uf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer uclient.Close()
	valid = append(valid, served{uclient, "type=*net.UnixConn remote=@ local=@ name=/run/app.sock"})
	// Queued behind the fourth valid connection: never read by the child.
	for i := 1; i <= 3; i++ {
		_, server := tcpPair(t)
		d.send(handoff.Header{Name: fmt.Sprintf("left-%d", i)}, rawFD(t, server))
	}

	for i, s := range valid {
		if got := readLine(t, s.client); got != s.want {
			t.Errorf("connection %d:\n got %s\nwant %s", i, got, s.want)
		}
	}
	for i, c := range dropped {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("dropped connection %d: read %d, %v; want EOF (descriptor closed by the worker)", i, n, err)
		}
	}
	if got, want := w.line(t), "closed=true malformed=5 last="; !strings.HasPrefix(got, want) {
		t.Errorf("child: %s, want prefix %s", got, want)
	}
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("child: %v (stderr: %s)", err, w.stderr)
	}

	// Close did not drain: what the child did not accept is still queued
	// in the socket systemd (here, the test) holds.
	rc, err := held.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for {
		var h handoff.Header
		var fd int
		var rerr error
		rc.Control(func(s uintptr) { fd, rerr = handoff.Receive(int(s), &h) })
		if rerr == unix.EAGAIN {
			break
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		unix.Close(fd)
		left = append(left, h.Name)
	}
	if got := strings.Join(left, " "); got != "left-1 left-2 left-3" {
		t.Errorf("left in the socket after the worker closed it: %q, want left-1 left-2 left-3", got)
	}
}

// newListener returns a HandoffListener on a fresh hand-off socket, with a
// dispatcher to feed it and the test's own copy of the socket.
func newListener(t testing.TB) (*activation.HandoffListener, *dispatcher, *net.UnixConn) {
	t.Helper()
	path, held, file := handoffSocket(t)
	l, err := activation.NewHandoffListener(file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	file.Close()
	return l, dial(t, path), held
}

type acceptResult struct {
	c   net.Conn
	err error
}

func acceptAsync(l net.Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := l.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

func TestMalformed(t *testing.T) {
	good := encode(t, handoff.Header{Name: "x"})
	wrongVersion := encode(t, handoff.Header{Name: "x"})
	wrongVersion[4] = 9
	tests := []struct {
		name    string
		payload []byte
		fds     func(t *testing.T) []int
		want    string
	}{
		{name: "no fd", payload: good, fds: func(*testing.T) []int { return nil }, want: "no descriptor"},
		{name: "two fds", payload: good, fds: func(t *testing.T) []int {
			_, a := tcpPair(t)
			_, b := tcpPair(t)
			return []int{rawFD(t, a), rawFD(t, b)}
		}, want: "2 descriptors"},
		{name: "bad header", payload: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), fds: oneTCP, want: "magic"},
		{name: "wrong version", payload: wrongVersion, fds: oneTCP, want: "version 9"},
		{name: "empty payload", payload: nil, fds: oneTCP, want: "shorter"},
		{name: "oversized payload", payload: make([]byte, 1000), fds: oneTCP, want: "longer"},
		{name: "pipe, not a socket", payload: good, fds: func(t *testing.T) []int {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close(); w.Close() })
			return []int{int(r.Fd())}
		}, want: "not a socket"},
		{name: "UDP socket", payload: good, fds: func(t *testing.T) []int {
			u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { u.Close() })
			return []int{rawFD(t, u)}
		}, want: "not a stream"},
		{name: "listening TCP socket", payload: good, fds: func(t *testing.T) []int {
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			return []int{rawFD(t, ln)}
		}, want: "not connected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, d, _ := newListener(t)
			fds := tt.fds(t)
			_, server := tcpPair(t)
			before := openFDs(t)
			d.sendRaw(tt.payload, fds...)
			d.send(handoff.Header{Name: "after"}, rawFD(t, server))
			c, h, err := l.AcceptHandoff()
			if err != nil {
				t.Fatalf("Accept after a malformed datagram: %v", err)
			}
			if h.Name != "after" {
				t.Errorf("accepted %q, want the datagram after the malformed one", h.Name)
			}
			c.Close()
			if after := openFDs(t); after != before {
				t.Errorf("open descriptors: %d before, %d after", before, after)
			}
			n, last := l.Malformed()
			if n != 1 || last == nil || !errors.Is(last, handoff.ErrMalformed) || !strings.Contains(last.Error(), tt.want) {
				t.Errorf("Malformed() = %d, %v; want 1 and an error mentioning %q", n, last, tt.want)
			}
		})
	}
}

func oneTCP(t *testing.T) []int {
	_, s := tcpPair(t)
	return []int{rawFD(t, s)}
}

func TestConnTypes(t *testing.T) {
	l, d, _ := newListener(t)
	client, server := tcpPair(t)

	d.send(handoff.Header{Name: "plain"}, rawFD(t, server))
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("plain hand-off: %T, want *net.TCPConn", c)
	}
	if tc.RemoteAddr().String() != client.LocalAddr().String() {
		t.Errorf("RemoteAddr %s, want the client %s", tc.RemoteAddr(), client.LocalAddr())
	}
	tc.Close()

	d.send(proxy4, rawFD(t, server))
	c, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, ok := c.(*activation.Conn)
	if !ok {
		t.Fatalf("PROXY hand-off: %T, want *activation.Conn", c)
	}
	ra, ok := pc.RemoteAddr().(*net.TCPAddr)
	if !ok || ra.String() != "203.0.113.7:51234" {
		t.Errorf("RemoteAddr %#v", pc.RemoteAddr())
	}
	if pc.LocalAddr().String() != "192.0.2.10:9999" {
		t.Errorf("LocalAddr %s", pc.LocalAddr())
	}
	under, ok := pc.NetConn().(*net.TCPConn)
	if !ok || under.RemoteAddr().String() != client.LocalAddr().String() {
		t.Fatalf("NetConn %T %v", pc.NetConn(), pc.NetConn().RemoteAddr())
	}
	// io.Copy takes the sendfile path through ReadFrom; half-close works.
	f, err := os.CreateTemp(t.TempDir(), "body")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("hello")
	f.Seek(0, 0)
	if n, err := io.Copy(pc, f); n != 5 || err != nil {
		t.Fatalf("io.Copy: %d, %v", n, err)
	}
	f.Close()
	if err := pc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(client)
	if err != nil || string(b) != "hello" {
		t.Fatalf("client read %q, %v; want hello then EOF", b, err)
	}
}

// TestCloseWithoutDraining closes the listener with datagrams queued and
// with an Accept blocked, and checks that nothing more is read.
func TestCloseWithoutDraining(t *testing.T) {
	l, d, held := newListener(t)
	_, server := tcpPair(t)
	for i := 0; i < 5; i++ {
		d.send(handoff.Header{Name: fmt.Sprint(i)}, rawFD(t, server))
	}
	for i := 0; i < 2; i++ {
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v, want net.ErrClosed", err)
	}
	rc, _ := held.SyscallConn()
	var names []string
	for {
		var h handoff.Header
		var fd int
		var err error
		rc.Control(func(s uintptr) { fd, err = handoff.Receive(int(s), &h) })
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		names = append(names, h.Name)
	}
	if got := strings.Join(names, ","); got != "2,3,4" {
		t.Errorf("still queued after Close: %q, want 2,3,4", got)
	}
}

func TestCloseWakesAccept(t *testing.T) {
	l, d, held := newListener(t)
	res := acceptAsync(l)
	// Give Accept time to park in the poller; if it has not yet, Close
	// still makes it return ErrClosed, so this only chooses the path.
	time.Sleep(20 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("blocked Accept returned %v, %v; want net.ErrClosed", r.c, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake a blocked Accept")
	}
	// A datagram sent after Close stays queued.
	_, server := tcpPair(t)
	d.send(handoff.Header{Name: "late"}, rawFD(t, server))
	rc, _ := held.SyscallConn()
	var h handoff.Header
	var fd int
	var err error
	rc.Control(func(s uintptr) { fd, err = handoff.Receive(int(s), &h) })
	if err != nil || h.Name != "late" {
		t.Fatalf("after Close: %q, %v; want the datagram still queued", h.Name, err)
	}
	unix.Close(fd)
}

func TestConcurrentAccept(t *testing.T) {
	l, d, _ := newListener(t)
	_, server := tcpPair(t)
	const workers, each = 4, 50
	errs := make(chan error, workers)
	for i := 0; i < workers; i++ {
		go func() {
			for j := 0; j < each; j++ {
				c, err := l.Accept()
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			}
			errs <- nil
		}()
	}
	for i := 0; i < workers*each; i++ {
		d.send(handoff.Header{Name: "c"}, rawFD(t, server))
	}
	for i := 0; i < workers; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestNoDescriptorLeak receives and closes 100,000 connections and checks
// that the process ends with the descriptors it started with. The same
// TCP connection is handed over each time (every hand-off still creates,
// and must release, a new descriptor in the receiver): 100,000 distinct
// loopback connections would exhaust the ephemeral ports.
func TestNoDescriptorLeak(t *testing.T) {
	n := 100000
	l, d, _ := newListener(t)
	_, server := tcpPair(t)
	sfd := rawFD(t, server)
	headers := []handoff.Header{{Name: "0.0.0.0:9999"}, proxy4, proxy6}
	before := openFDs(t)
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			c, err := l.Accept()
			if err != nil {
				done <- err
				return
			}
			c.Close()
		}
		done <- nil
	}()
	bad := 0
	for i := 0; i < n; i++ {
		if i%10000 == 5 { // a malformed one now and then must not disturb the count
			d.sendRaw([]byte("junk"), sfd)
			bad++
		}
		d.send(headers[i%len(headers)], sfd)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections in %v", n, time.Since(start))
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after %d connections", before, after, n)
	}
	if got, _ := l.Malformed(); got != uint64(bad) {
		t.Errorf("Malformed() = %d, want %d", got, bad)
	}
}

// BenchmarkAccept measures receiving one connection: per op, the
// dispatcher's sendmsg (in the loop: stopping the timer per op would cost
// more than what is measured), then Accept, which is recvmsg, header
// decode and turning the descriptor into a *net.TCPConn (a *Conn for
// PROXY), and Close. "raw" is the same without a net.Conn: handoff.Send,
// handoff.Receive and close(2), so plain minus raw is the price of getting
// a real *net.TCPConn.
func BenchmarkAccept(b *testing.B) {
	for _, bc := range []struct {
		name string
		h    handoff.Header
		raw  bool
	}{
		{name: "plain", h: handoff.Header{Name: "0.0.0.0:9999"}},
		{name: "proxy", h: proxy4},
		{name: "raw", h: handoff.Header{Name: "0.0.0.0:9999"}, raw: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l, _, held := newListener(b)
			path := l.Addr().String()
			snd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(snd)
			_, server := tcpPair(b)
			sfd := rawFD(b, server)
			hfd := rawFD(b, held)
			var h handoff.Header
			b.ReportAllocs()
			for b.Loop() {
				if err := handoff.Send(snd, path, &bc.h, sfd); err != nil {
					b.Fatal(err)
				}
				if bc.raw {
					fd, err := handoff.Receive(hfd, &h)
					if err != nil {
						b.Fatal(err)
					}
					unix.Close(fd)
					continue
				}
				c, err := l.Accept()
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
