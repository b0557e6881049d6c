package sticky

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/handoff"
)

// worker is a hand-off socket a test reads like a worker would.
type worker struct {
	id   int
	conn *net.UnixConn
	fd   int
}

func newWorkers(t *testing.T, dir string, n int) map[int]*worker {
	ws := map[int]*worker{}
	for id := 1; id <= n; id++ {
		p := filepath.Join(dir, strconv.Itoa(id)+".sock")
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		rc, _ := c.SyscallConn()
		w := &worker{id: id, conn: c}
		rc.Control(func(fd uintptr) { w.fd = int(fd) })
		ws[id] = w
	}
	return ws
}

// receive waits for one hand-off on w and returns its header and the
// connection as a net.Conn.
func (w *worker) receive(t *testing.T) (handoff.Header, net.Conn) {
	t.Helper()
	rc, _ := w.conn.SyscallConn()
	var h handoff.Header
	var fd int
	var rerr error
	w.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := rc.Read(func(s uintptr) bool {
		fd, rerr = handoff.Receive(int(s), &h)
		return !errors.Is(rerr, unix.EAGAIN)
	}); err != nil {
		t.Fatalf("worker %d: no hand-off: %v", w.id, err)
	}
	if rerr != nil {
		t.Fatalf("worker %d: %v", w.id, rerr)
	}
	f := os.NewFile(uintptr(fd), "conn")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return h, c
}

// pending reports whether a hand-off is queued on w.
func (w *worker) pending() bool {
	var buf [1]byte
	n, _, _, _, err := unix.Recvmsg(w.fd, buf[:], nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err == nil && n >= 0
}

func startDispatcher(t *testing.T, dir string, proxy bool, ids ...int) (*Dispatcher, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := NewDispatcher(DispatcherOptions{
		Path:      func(id int) string { return filepath.Join(dir, strconv.Itoa(id)+".sock") },
		QueueWait: 50 * time.Millisecond,
		Proxy:     ProxyOptions{Timeout: 300 * time.Millisecond},
	})
	d.Up.Replace(ids...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // the duplicate in f keeps the socket listening
	ln := Listener{Name: "public", Proxy: proxy, File: f}
	if proxy {
		ln.ProxyFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	go func() { done <- d.Serve(ctx, []Listener{ln}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return d, addr
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := dl.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDispatchSticky: each client address always reaches the instance
// rendezvous hashing picks, and the bytes flow between client and worker
// directly over the handed-off descriptor.
func TestDispatchSticky(t *testing.T) {
	dir := t.TempDir()
	ws := newWorkers(t, dir, 4)
	d, addr := startDispatcher(t, dir, false, 1, 2, 3, 4)
	hit := map[int]bool{}
	for i := 2; i <= 21; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		want, _ := d.Up.Pick(netip.MustParseAddr(src))
		for j := 0; j < 3; j++ {
			c := dialFrom(t, src, addr)
			h, wc := ws[want].receive(t)
			if h.Name != "public" || h.Proxied() {
				t.Errorf("header %+v", h)
			}
			if got := wc.RemoteAddr().(*net.TCPAddr).IP.String(); got != src {
				t.Errorf("worker sees peer %s, want %s", got, src)
			}
			c.Write([]byte("ping"))
			buf := make([]byte, 4)
			io.ReadFull(wc, buf)
			if string(buf) != "ping" {
				t.Errorf("worker read %q", buf)
			}
			wc.Close()
			c.Close()
			hit[want] = true
		}
	}
	if len(hit) != 4 {
		t.Errorf("instances hit: %v, want all 4", hit)
	}
	for id, w := range ws {
		if w.pending() {
			t.Errorf("instance %d got a connection it should not have", id)
		}
	}
	// The count follows sendmsg's return, which the worker's receive
	// may beat: the last one can lag a moment.
	waitFor(t, func() bool { return d.Stats().HandedOff == 60 })
	if s := d.Stats(); s.HandedOff != 60 || s.StickyMiss != 0 || s.Dropped != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestDispatchFallback: when the preferred instance's queue stays full for
// QueueWait the connection goes to the next instance in rendezvous order,
// counted as a sticky miss.
func TestDispatchFallback(t *testing.T) {
	dir := t.TempDir()
	ws := newWorkers(t, dir, 2)
	d, addr := startDispatcher(t, dir, false, 1, 2)
	src := "127.0.0.7"
	order := d.Up.Order(netip.MustParseAddr(src), nil)
	first, second := order[0], order[1]
	filled := fillQueue(t, sockPath(dir, first))
	c := dialFrom(t, src, addr)
	defer c.Close()
	h, wc := ws[second].receive(t)
	wc.Close()
	if h.Name != "public" {
		t.Errorf("instance %d got %+v", second, h)
	}
	waitFor(t, func() bool { return d.Stats().StickyMiss == 1 })
	if s := d.Stats(); s.QueueFull != 1 || s.HandedOff != 1 || len(s.Queued) != 0 {
		t.Errorf("stats %+v, want one queue-full fallback and nothing queued", s)
	}
	// The preferred instance's queue holds the test's datagrams alone.
	ws[first].discard(t, filled)
	if ws[first].pending() {
		t.Error("the preferred instance got the connection too")
	}
}

// sockPath is the hand-off socket of instance id in dir, as newWorkers
// makes them.
func sockPath(dir string, id int) string { return filepath.Join(dir, strconv.Itoa(id)+".sock") }

// fillQueue fills the kernel queue of the hand-off socket at path with
// hand-offs from sockets of the test's own, as a worker that stopped
// reading would leave it, and returns how many it took.
//
// A send fails with EAGAIN both when the receiver's queue holds
// net.unix.max_dgram_qlen datagrams (the queue is full: what the test
// needs) and when the sender's own send buffer is spent (which says
// nothing of the queue, and lets the dispatcher's sends through: with a
// large max_dgram_qlen a single filler stops there). So the queue is full
// when a fresh socket cannot send even one: whatever the host's
// max_dgram_qlen, the count is measured, not assumed.
func fillQueue(t *testing.T, path string) int {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(pair[0]); unix.Close(pair[1]) })
	h := handoff.Header{Name: "filler"}
	total := 0
	// A bound on the sockets: max_dgram_qlen is an int, but a queue that
	// takes more than this many sockets' worth is a test gone wrong.
	for range 1024 {
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Kept open until the test ends: closing a sender does not take
		// its datagrams back, but its descriptor count is the test's.
		t.Cleanup(func() { unix.Close(s) })
		if err := unix.Connect(s, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		n := 0
		for ; ; n++ {
			err := handoff.Send(s, "", &h, pair[0])
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if n == 0 {
			return total
		}
		total += n
	}
	t.Fatalf("the queue of %s took %d hand-offs and still had room", path, total)
	return 0
}

// discard receives n hand-offs the test queued with fillQueue.
func (w *worker) discard(t *testing.T, n int) {
	t.Helper()
	for range n {
		h, c := w.receive(t)
		c.Close()
		if h.Name != "filler" {
			t.Errorf("worker %d: got %+v among the fillers", w.id, h)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDispatchNoInstance: with no instance up, connections are closed and
// counted, never leaked.
func TestDispatchNoInstance(t *testing.T) {
	dir := t.TempDir()
	d, addr := startDispatcher(t, dir, false)
	c := dialFrom(t, "127.0.0.1", addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection stayed open")
	}
	c.Close()
	waitFor(t, func() bool { return d.Stats().Dropped == 1 })
}

// TestDispatchProxy: the address in a PROXY header is the stickiness key
// and travels to the worker; bytes after the header reach the worker.
func TestDispatchProxy(t *testing.T) {
	dir := t.TempDir()
	ws := newWorkers(t, dir, 3)
	d, addr := startDispatcher(t, dir, true, 1, 2, 3)
	for _, tc := range []struct{ header, src string }{
		{"PROXY TCP4 203.0.113.9 192.0.2.1 40000 80\r\n", "203.0.113.9:40000"},
		{"PROXY TCP6 2001:db8::5 2001:db8::1 40001 80\r\n", "[2001:db8::5]:40001"},
	} {
		want, _ := d.Up.Pick(netip.MustParseAddrPort(tc.src).Addr())
		c := dialFrom(t, "127.0.0.1", addr)
		c.Write([]byte(tc.header + "GET"))
		h, wc := ws[want].receive(t)
		if !h.Proxied() || h.Source.String() != tc.src {
			t.Errorf("header %+v, want source %s", h, tc.src)
		}
		buf := make([]byte, 3)
		io.ReadFull(wc, buf)
		if string(buf) != "GET" {
			t.Errorf("worker read %q after the header", buf)
		}
		wc.Close()
		c.Close()
	}
	// Garbage and a stalled header are closed and counted; a good client
	// right after them is served at once.
	bad := dialFrom(t, "127.0.0.1", addr)
	bad.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	slow := dialFrom(t, "127.0.0.1", addr)
	slow.Write([]byte("PROXY TCP4 1.2.3.4"))
	good := dialFrom(t, "127.0.0.1", addr)
	good.Write([]byte("PROXY TCP4 198.51.100.1 192.0.2.1 1 80\r\n"))
	want, _ := d.Up.Pick(netip.MustParseAddr("198.51.100.1"))
	start := time.Now()
	_, wc := ws[want].receive(t)
	if time.Since(start) > 250*time.Millisecond {
		t.Errorf("a good client waited %v behind a slow one", time.Since(start))
	}
	wc.Close()
	for _, c := range []net.Conn{bad, slow} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("bad connection stayed open")
		}
		c.Close()
	}
	good.Close()
	waitFor(t, func() bool { return d.Stats().ProxyErrors == 2 })
}

// BenchmarkDispatch measures the dispatcher's hot path end to end: a
// client connects over loopback, the dispatcher accepts, picks an
// instance and hands the descriptor over, a worker receives it. The
// client's connect and the worker's receive are in the loop too; compare
// with handoff's BenchmarkSendReceive and a plain loopback accept.
func BenchmarkDispatch(b *testing.B) {
	dir := b.TempDir()
	ws := map[int]*worker{}
	for id := 1; id <= 2; id++ {
		p := filepath.Join(dir, strconv.Itoa(id)+".sock")
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		ws[id] = &worker{id: id, conn: c}
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	f, _ := l.(*net.TCPListener).File()
	addr := l.Addr().String()
	l.Close()
	d := NewDispatcher(DispatcherOptions{Path: func(id int) string { return filepath.Join(dir, strconv.Itoa(id)+".sock") }})
	d.Up.Replace(1, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Serve(ctx, []Listener{{Name: "public", File: f}})
	// Workers drain their sockets and close what they get.
	for _, w := range ws {
		go func(w *worker) {
			rc, _ := w.conn.SyscallConn()
			var h handoff.Header
			for {
				err := rc.Read(func(s uintptr) bool {
					fd, err := handoff.Receive(int(s), &h)
					if errors.Is(err, unix.EAGAIN) {
						return false
					}
					if err == nil {
						unix.Close(fd)
					}
					return true
				})
				if err != nil {
					return
				}
			}
		}(w)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.StopTimer()
	waitForB(b, func() bool { return d.Stats().HandedOff >= uint64(b.N) })
}

func waitForB(b *testing.B, cond func() bool) {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// TestDispatchBeats: each accept loop's beat grows by two per connection
// and is even while the loop waits (the supervisor's watchdog reads an
// odd, unchanged beat as a loop wedged in a dispatch).
func TestDispatchBeats(t *testing.T) {
	dir := t.TempDir()
	ws := newWorkers(t, dir, 1)
	d, addr := startDispatcher(t, dir, false, 1)
	var b []uint64
	waitBeats := func(want uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if b = d.Beats(); len(b) == 1 && b[0] == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("beats %v, want [%d]", b, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitBeats(0)
	for i := 1; i <= 3; i++ {
		c := dialFrom(t, "127.0.0.1", addr)
		_, wc := ws[1].receive(t)
		wc.Close()
		c.Close()
		waitBeats(uint64(2 * i))
	}
}
