package handoff

import (
	"errors"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/sockettest"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Shared socket helpers (internal/sockettest).
var (
	tcpPair  = sockettest.TCPPair
	rawFD    = sockettest.RawFD
	openFDs  = sockettest.OpenFDs
	sameFile = sockettest.SameFile
)

// dgramPair returns a connected pair of unix datagram sockets, closed at the
// end of the test.
func dgramPair(t testing.TB) (send, recv int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestSendReceive(t *testing.T) {
	snd, rcv := dgramPair(t)
	client, server := tcpPair(t)
	want := docHeader
	if err := Send(snd, "", &want, rawFD(t, server)); err != nil {
		t.Fatal(err)
	}
	var got Header
	fd, err := Receive(rcv, &got)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if got != want {
		t.Errorf("header: got %+v, want %+v", got, want)
	}
	if !sameFile(t, fd, rawFD(t, server)) {
		t.Error("received descriptor is not the sent connection")
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("received descriptor is not close-on-exec")
	}
	// Bytes written on the received descriptor reach the client.
	if _, err := unix.Write(fd, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := client.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("client read %q, %v", b, err)
	}
}

func TestSendToPath(t *testing.T) {
	tests := []struct {
		name string
		addr func(t *testing.T) string
	}{
		{name: "filesystem", addr: func(t *testing.T) string { return filepath.Join(t.TempDir(), "1.sock") }},
		{name: "abstract", addr: func(t *testing.T) string { return "@powerhouse-handoff-test-" + strings.ReplaceAll(t.Name(), "/", "-") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			snd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(snd)
			_, server := tcpPair(t)
			h := Header{Name: "n"}
			if err := Send(snd, addr, &h, rawFD(t, server)); err != nil {
				t.Fatal(err)
			}
			var got Header
			fd, err := Receive(rawFD(t, ln), &got)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			if got != h {
				t.Errorf("got %+v", got)
			}
		})
	}
}

func TestSendErrors(t *testing.T) {
	snd, _ := dgramPair(t)
	_, server := tcpPair(t)
	if err := Send(snd, "", &Header{}, rawFD(t, server)); err == nil {
		t.Error("empty name: no error")
	}
	if err := Send(snd, "", &Header{Name: "n"}, -1); err == nil {
		t.Error("descriptor -1: no error")
	}
	if err := Send(snd, "/"+strings.Repeat("x", 200), &Header{Name: "n"}, rawFD(t, server)); err == nil {
		t.Error("overlong path: no error")
	}
	unconnected, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unconnected)
	path := filepath.Join(t.TempDir(), "nobody.sock")
	err = Send(unconnected, path, &Header{Name: "n"}, rawFD(t, server))
	if !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), path) {
		t.Errorf("send to a missing path: %v, want ENOENT naming the path", err)
	}
}

// TestSendFullQueue checks the dispatcher's guarantee: a full receiver
// queue is an immediate EAGAIN, even on a blocking socket, and sending works
// again once the receiver has read.
func TestSendFullQueue(t *testing.T) {
	snd, rcv := dgramPair(t) // both blocking: MSG_DONTWAIT must do the work
	_, server := tcpPair(t)
	h := Header{Name: "n"}
	var err error
	sent := 0
	for ; sent < 10000; sent++ {
		if err = Send(snd, "", &h, rawFD(t, server)); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.EAGAIN) || !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("after %d sends: err = %v, want EAGAIN", sent, err)
	}
	t.Logf("queue full after %d datagrams", sent)
	var got Header
	fd, err := Receive(rcv, &got)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := Send(snd, "", &h, rawFD(t, server)); err != nil {
		t.Fatalf("send after one receive: %v", err)
	}
	for i := 0; i < sent; i++ {
		fd, err := Receive(rcv, &got)
		if err != nil {
			t.Fatalf("receive %d: %v", i, err)
		}
		unix.Close(fd)
	}
	if _, err := Receive(rcv, &got); err != unix.EAGAIN {
		t.Fatalf("empty queue: err = %v, want exactly unix.EAGAIN", err)
	}
}

// sendRaw sends an arbitrary datagram, for the cases Send refuses to build.
func sendRaw(t testing.TB, sock int, payload []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(sock, payload, oob, nil, 0); err != nil {
		t.Fatal(err)
	}
}

func TestReceiveMalformed(t *testing.T) {
	good, _ := (&Header{Name: "ok"}).MarshalBinary()
	badVersion, _ := (&Header{Name: "ok"}).MarshalBinary()
	badVersion[offVersion] = 2
	tests := []struct {
		name    string
		payload []byte
		nfds    int
		want    string
	}{
		{name: "no descriptor", payload: good, nfds: 0, want: "no descriptor"},
		{name: "two descriptors", payload: good, nfds: 2, want: "2 descriptors"},
		{name: "more than fit", payload: good, nfds: maxRecvFDs + 10, want: "truncated"},
		{name: "bad header", payload: []byte("GET / HTTP/1.1\r\n"), nfds: 1, want: "magic"},
		{name: "wrong version", payload: badVersion, nfds: 1, want: "version 2"},
		{name: "empty payload", payload: nil, nfds: 1, want: "shorter"},
		{name: "oversized payload", payload: make([]byte, 4096), nfds: 1, want: "longer"},
	}
	// Each case runs with Receive and with ReceiveFrom on a socket with
	// SO_PASSCRED, whose credentials take room in the control buffer.
	for _, tt := range tests {
		for _, from := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/from=%v", tt.name, from), func(t *testing.T) {
				snd, rcv := dgramPair(t)
				if from {
					passCred(t, rcv)
				}
				_, server := tcpPair(t)
				fds := make([]int, tt.nfds)
				for i := range fds {
					fds[i] = rawFD(t, server)
				}
				before := openFDs(t)
				sendRaw(t, snd, tt.payload, fds...)
				var h Header
				var fd int
				var err error
				if from {
					var cred Ucred
					fd, cred, err = ReceiveFrom(rcv, &h)
					if cred.Pid != int32(os.Getpid()) {
						t.Errorf("credentials of a malformed datagram: %+v, want pid %d", cred, os.Getpid())
					}
				} else {
					fd, err = Receive(rcv, &h)
				}
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Receive = %d, %v; want ErrMalformed", fd, err)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %q does not mention %q", err, tt.want)
				}
				if fd != -1 {
					t.Errorf("descriptor %d returned with an error", fd)
				}
				if after := openFDs(t); after != before {
					t.Errorf("open descriptors: %d before, %d after: leaked", before, after)
				}
				// The bad datagram is consumed; the next good one comes through.
				if err := Send(snd, "", &Header{Name: "next"}, rawFD(t, server)); err != nil {
					t.Fatal(err)
				}
				fd, err = Receive(rcv, &h)
				if err != nil {
					t.Fatalf("good datagram after a bad one: %v", err)
				}
				unix.Close(fd)
				if h.Name != "next" {
					t.Errorf("name %q", h.Name)
				}
			})
		}
	}
}

// passCred sets SO_PASSCRED on sock, as the worker library does.
func passCred(t testing.TB, sock int) {
	t.Helper()
	if err := unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
}

// TestReceiveFrom checks that the sender's credentials come with the
// connection, and that the control buffer has room for them and for the
// most descriptors Receive recognises: with too small a buffer the kernel
// sets MSG_CTRUNC and discards the connection itself.
func TestReceiveFrom(t *testing.T) {
	snd, rcv := dgramPair(t)
	passCred(t, rcv)
	_, server := tcpPair(t)
	want := Ucred{Pid: int32(os.Getpid()), Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid())}

	if err := Send(snd, "", &docHeader, rawFD(t, server)); err != nil {
		t.Fatal(err)
	}
	var h Header
	fd, cred, err := ReceiveFrom(rcv, &h)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if cred != want {
		t.Errorf("credentials %+v, want %+v", cred, want)
	}
	if h != docHeader {
		t.Errorf("header %+v, want %+v", h, docHeader)
	}

	// maxRecvFDs descriptors and the credentials both fit: the datagram is
	// refused for its count, not for a truncation.
	fds := make([]int, maxRecvFDs)
	for i := range fds {
		fds[i] = rawFD(t, server)
	}
	good, _ := docHeader.MarshalBinary()
	before := openFDs(t)
	sendRaw(t, snd, good, fds...)
	_, cred, err = ReceiveFrom(rcv, &h)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), fmt.Sprintf("%d descriptors, want 1", maxRecvFDs)) {
		t.Errorf("%d descriptors with credentials: %v; want ErrMalformed naming the count", maxRecvFDs, err)
	}
	if cred != want {
		t.Errorf("credentials %+v, want %+v", cred, want)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after: leaked", before, after)
	}
}

// TestReceiveFromNoCredentials: without SO_PASSCRED no credentials come,
// and ReceiveFrom refuses the datagram rather than guess, closing the
// connection.
func TestReceiveFromNoCredentials(t *testing.T) {
	snd, rcv := dgramPair(t)
	client, server := tcpPair(t)
	if err := Send(snd, "", &docHeader, rawFD(t, server)); err != nil {
		t.Fatal(err)
	}
	server.Close() // the kernel's reference in the datagram is the last one
	before := openFDs(t)
	var h Header
	fd, _, err := ReceiveFrom(rcv, &h)
	if !errors.Is(err, ErrNoCredentials) || fd != -1 {
		t.Fatalf("ReceiveFrom = %d, %v; want -1, ErrNoCredentials", fd, err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after: leaked", before, after)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read %d, %v; want EOF (connection closed)", n, err)
	}
}

// handOff sends one hand-off of sfd with h on snd and receives it into got
// on rcv, with ReceiveFrom when cred, then closes the received descriptor.
func handOff(tb testing.TB, snd, rcv, sfd int, h, got *Header, cred bool) {
	if err := Send(snd, "", h, sfd); err != nil {
		tb.Fatal(err)
	}
	var fd int
	var err error
	if cred {
		fd, _, err = ReceiveFrom(rcv, got)
	} else {
		fd, err = Receive(rcv, got)
	}
	if err != nil {
		tb.Fatal(err)
	}
	unix.Close(fd)
}

func TestSendReceiveNoAllocs(t *testing.T) {
	snd, rcv := dgramPair(t)
	_, server := tcpPair(t)
	sfd := rawFD(t, server)
	h := Header{Name: "0.0.0.0:9999", Source: netip.MustParseAddrPort("[2001:db8::1]:1"), Destination: netip.MustParseAddrPort("[2001:db8::2]:2")}
	got := Header{Name: h.Name}
	if n := testing.AllocsPerRun(1000, func() { handOff(t, snd, rcv, sfd, &h, &got, false) }); n != 0 {
		t.Errorf("Send+Receive: %v allocations per hand-off, want 0", n)
	}
	passCred(t, rcv)
	if n := testing.AllocsPerRun(1000, func() { handOff(t, snd, rcv, sfd, &h, &got, true) }); n != 0 {
		t.Errorf("Send+ReceiveFrom: %v allocations per hand-off, want 0", n)
	}
	if _, _, err := ReceiveFrom(rcv, &got); err != unix.EAGAIN {
		t.Errorf("ReceiveFrom on an empty queue: %v, want exactly unix.EAGAIN", err)
	}
}

// BenchmarkSendReceive is the raw cost of one hand-off: encode, sendmsg,
// recvmsg, decode and close of the received descriptor; "cred" with the
// sender's credentials (SO_PASSCRED), as workers receive.
func BenchmarkSendReceive(b *testing.B) {
	for _, cred := range []bool{false, true} {
		name := "plain"
		if cred {
			name = "cred"
		}
		b.Run(name, func(b *testing.B) {
			snd, rcv := dgramPair(b)
			if cred {
				passCred(b, rcv)
			}
			_, server := tcpPair(b)
			sfd := rawFD(b, server)
			h := docHeader
			var got Header
			b.ReportAllocs()
			for b.Loop() {
				handOff(b, snd, rcv, sfd, &h, &got, cred)
			}
		})
	}
}
