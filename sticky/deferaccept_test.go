package sticky

import (
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// deferAccept sets TCP_DEFER_ACCEPT on f, a listening socket, as
// systemd's DeferAcceptSec=1 does on the public socket of a key-affinity
// group (generator.deferAccept).
func deferAccept(t *testing.T, f *os.File) {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1)
	}); err != nil || serr != nil {
		t.Fatalf("TCP_DEFER_ACCEPT: %v %v", err, serr)
	}
}

// readable polls f for an incoming connection for at most wait.
func readable(t *testing.T, f *os.File, wait time.Duration) bool {
	t.Helper()
	rc, _ := f.SyscallConn()
	var n int
	var perr error
	rc.Control(func(fd uintptr) {
		for {
			n, perr = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(wait/time.Millisecond))
			if perr != unix.EINTR {
				return
			}
		}
	})
	if perr != nil {
		t.Fatal(perr)
	}
	return n > 0
}

// TestDeferAcceptKernel pins down, on real sockets, the Linux semantics
// the generator relies on when it sets DeferAcceptSec=1 for a key
// affinity: a connection whose client has sent nothing is not accepted;
// its first bytes make it acceptable at once; and a client that never
// sends is still passed to accept() after the deferral (the kernel
// retransmits its SYN-ACK and takes the client's ACK to it), so a
// dispatcher behind such a socket never loses a silent client.
func TestDeferAcceptKernel(t *testing.T) {
	f, addr := listenFile(t, "tcp", "127.0.0.1:0")
	defer f.Close()
	deferAccept(t, f)
	acceptOne := func() (int, error) {
		rc, _ := f.SyscallConn()
		var nfd int
		var aerr error
		rc.Control(func(fd uintptr) { nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK) })
		return nfd, aerr
	}

	talker, err := net.Dial("tcp", addr) // the handshake completes on the client's side
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	if readable(t, f, 300*time.Millisecond) {
		t.Fatal("a connection that sent nothing was acceptable at once: TCP_DEFER_ACCEPT had no effect")
	}
	io.WriteString(talker, "GET / HTTP/1.1\r\n\r\n")
	if !readable(t, f, 5*time.Second) {
		t.Fatal("a connection with data was not acceptable within 5s")
	}
	nfd, err := acceptOne()
	if err != nil {
		t.Fatal(err)
	}
	var buf [64]byte
	if n, err := peekNow(nfd, buf[:]); err != nil || n == 0 {
		t.Errorf("the accepted connection's head is not there at accept: %d bytes, %v", n, err)
	}
	unix.Close(nfd)

	t0 := time.Now()
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if !readable(t, f, 10*time.Second) {
		t.Fatal("a client that never sends was not passed to accept() within 10s of connecting")
	}
	took := time.Since(t0)
	nfd, err = acceptOne()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nfd)
	if n, err := peekNow(nfd, buf[:]); err != unix.EAGAIN {
		t.Errorf("the silent connection peeked %d bytes, %v; want nothing yet (EAGAIN)", n, err)
	}
	t.Logf("a silent client was accepted %v after it connected", took.Round(time.Millisecond))
}

// TestDeferAcceptDispatch: a key-affinity dispatcher on a
// TCP_DEFER_ACCEPT listener (what the generated units give it) finds each
// head at accept, so no connection waits in its epoll loop; and a client
// that never sends is still placed, by the fallback, after the deferral
// and PeekTimeout: neither hung nor lost.
func TestDeferAcceptDispatch(t *testing.T) {
	const timeout = 300 * time.Millisecond
	dir := t.TempDir()
	ws := newWorkers(t, dir, 2)
	d := newTestDispatcher(dir, DispatcherOptions{QueueWait: 50 * time.Millisecond, Affinity: AffinityOptions{Spec: spec(t, "query:sid"), PeekTimeout: timeout}}, 1, 2)
	f, addr := listenFile(t, "tcp", "127.0.0.1:0")
	deferAccept(t, f)
	ch := collect(t, ws)
	serveWith(t, d, Listener{Name: "public", File: f})

	// Clients that connect and write their request a little later: the
	// dispatcher sees none of them before its head is there.
	const n = 20
	for i := range n {
		c := send(t, "127.0.0.1", addr, "")
		if i == 0 {
			deadline := time.Now().Add(200 * time.Millisecond)
			for time.Now().Before(deadline) { // nothing to wait on: the kernel must stay silent meanwhile
				if st := d.Stats(); st.Peeking != 0 || st.HandedOff != 0 {
					t.Fatalf("the dispatcher got a connection before its head: %+v", st)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		io.WriteString(c, get("&sid=k"+string(rune('a'+i)), ""))
		got := next(t, ch)
		if head := got.readHead(t); head != get("&sid=k"+string(rune('a'+i)), "") {
			t.Fatalf("worker %d read %q", got.id, head)
		}
	}
	if st := d.Stats(); st.KeyRouted != n || st.Fallbacks != 0 {
		t.Errorf("KeyRouted %d Fallbacks %d, want %d and 0", st.KeyRouted, st.Fallbacks, n)
	}
	if w := d.aff.waited.Load(); w != 0 {
		t.Errorf("%d of %d connections waited in the epoll loop, want none (their heads were there at accept)", w, n)
	}

	t0 := time.Now()
	send(t, "127.0.0.1", addr, "") // never sends
	got := next(t, ch)
	took := time.Since(t0)
	if took < timeout {
		t.Errorf("the silent client was placed after %v, before PeekTimeout %v", took, timeout)
	}
	if st := d.Stats(); st.Fallbacks != 1 || st.PeekRejects[PeekTimeout] != 1 {
		t.Errorf("Fallbacks %d, PeekRejects timeout %d; want 1 and 1", st.Fallbacks, st.PeekRejects[PeekTimeout])
	}
	t.Logf("the silent client went to instance %d %v after it connected", got.id, took.Round(time.Millisecond))
}
