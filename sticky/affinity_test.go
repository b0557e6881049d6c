package sticky

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/affinity"
	"github.com/powerhouse/powerhouse/handoff"
)

// delivery is one connection a test worker received: the instance, what
// it read (up to the end of the head, or EOF), whether the descriptor
// arrived non-blocking, and the connection (kept open, so it counts as
// open until the test closes it or reports it closed).
type delivery struct {
	id       int
	nonblock bool
	h        handoff.Header
	c        net.Conn
	err      error
}

// collect receives every hand-off of ws, like a worker, until the test
// ends, and reports each on the returned channel.
func collect(t *testing.T, ws map[int]*worker) <-chan delivery {
	out := make(chan delivery, 2048)
	for _, w := range ws {
		go func() {
			rc, _ := w.conn.SyscallConn()
			for {
				var h handoff.Header
				var fd int
				var rerr error
				if err := rc.Read(func(s uintptr) bool {
					fd, rerr = handoff.Receive(int(s), &h)
					return !errors.Is(rerr, unix.EAGAIN)
				}); err != nil {
					return // the test ended
				}
				if rerr != nil {
					out <- delivery{id: w.id, err: rerr}
					continue
				}
				fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
				f := os.NewFile(uintptr(fd), "conn")
				c, err := net.FileConn(f)
				f.Close()
				if err != nil {
					out <- delivery{id: w.id, err: err}
					continue
				}
				t.Cleanup(func() { c.Close() })
				out <- delivery{id: w.id, nonblock: fl&unix.O_NONBLOCK != 0, h: h, c: c}
			}
		}()
	}
	return out
}

// readHead reads what d's client sent, up to the end of its head or EOF.
func (d delivery) readHead(t *testing.T) string {
	t.Helper()
	head, err := readHead(d.c)
	if err != nil {
		t.Fatalf("worker %d: reading the request: %v", d.id, err)
	}
	return head
}

// readHead reads c up to the blank line that ends an HTTP head, or EOF.
func readHead(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var b []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(b, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		b = append(b, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			return string(b), err
		}
	}
	return string(b), nil
}

func next(t *testing.T, ch <-chan delivery) delivery {
	t.Helper()
	d := nextAny(t, ch)
	if d.nonblock {
		t.Fatalf("worker %d got a non-blocking descriptor: the dispatcher changed the file status flags it shares with the worker", d.id)
	}
	return d
}

func nextAny(t *testing.T, ch <-chan delivery) delivery {
	t.Helper()
	select {
	case d := <-ch:
		if d.err != nil {
			t.Fatalf("worker %d: %v", d.id, d.err)
		}
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no hand-off within 10s")
	}
	return delivery{}
}

// startKey runs a dispatcher with key affinity o over instances ids,
// and returns it, its address and what its workers receive.
func startKey(t *testing.T, o AffinityOptions, proxy bool, nWorkers int, ids ...int) (*Dispatcher, string, <-chan delivery) {
	t.Helper()
	dir := t.TempDir()
	ws := newWorkers(t, dir, nWorkers)
	d := newTestDispatcher(dir, DispatcherOptions{QueueWait: 50 * time.Millisecond, Affinity: o}, ids...)
	f, addr := listenFile(t, "tcp", "127.0.0.1:0")
	ln := Listener{Name: "public", File: f, Proxy: proxy}
	if proxy {
		ln.ProxyFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	ch := collect(t, ws)
	serveWith(t, d, ln)
	return d, addr, ch
}

func spec(t *testing.T, s string) affinity.Spec {
	sp, err := affinity.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// send dials addr from src and writes req; the connection stays open.
func send(t *testing.T, src, addr, req string) net.Conn {
	t.Helper()
	c := dialFrom(t, src, addr)
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return c
}

func get(query, headers string) string {
	return "GET /socket.io/?EIO=4&transport=polling" + query + " HTTP/1.1\r\nHost: example.com\r\n" + headers + "\r\n"
}

// TestAffinityQueryKeysSpread: 500 fixed distinct sid keys from ONE
// source address spread over 4 instances within ±20 %, each key sticks
// to its instance, and every worker reads its request whole, from a
// blocking descriptor. Source affinity would put all 500 on one instance.
func TestAffinityQueryKeysSpread(t *testing.T) {
	d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "query:sid")}, false, 4, 1, 2, 3, 4)
	const n = 500
	where := map[string]int{}
	count := map[int]int{}
	for round := range 2 {
		for i := range n {
			key := fmt.Sprintf("client-%03d", i)
			req := get("&sid="+key, "")
			c := send(t, "127.0.0.1", addr, req)
			got := next(t, ch)
			if head := got.readHead(t); head != req {
				t.Fatalf("worker read %q, want %q: the dispatcher consumed bytes", head, req)
			}
			got.c.Close()
			c.Close()
			if round == 0 {
				where[key] = got.id
				count[got.id]++
			} else if where[key] != got.id {
				t.Fatalf("key %s went to %d, then %d", key, where[key], got.id)
			}
		}
	}
	for id := 1; id <= 4; id++ {
		if c := count[id]; c < n/4*80/100 || c > n/4*120/100 {
			t.Errorf("instance %d got %d of %d keys, want %d ± 20%%: %v", id, c, n, n/4, count)
		}
	}
	if st := d.Stats(); st.KeyRouted != 2*n || st.Fallbacks != 0 || st.TagRouted != 0 {
		t.Errorf("KeyRouted %d Fallbacks %d TagRouted %d, want %d 0 0", st.KeyRouted, st.Fallbacks, st.TagRouted, 2*n)
	}
}

// TestAffinityMintedIDs: an id minted by an instance goes to that
// instance while it is up, in a query or a cookie; an id whose instance
// is down is hashed like any key.
func TestAffinityMintedIDs(t *testing.T) {
	for _, tc := range []struct {
		spec string
		req  func(id string) string
	}{
		{"query:sid", func(id string) string { return get("&sid="+id, "") }},
		{"cookie:sid", func(id string) string { return get("", "Cookie: theme=dark; sid="+id+"\r\n") }},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, tc.spec)}, false, 4, 1, 2, 3, 4)
			for inst := 1; inst <= 4; inst++ {
				for range 20 {
					send(t, "127.0.0.1", addr, tc.req(affinity.NewSessionID(inst)))
					if got := next(t, ch); got.id != inst {
						t.Fatalf("id minted by %d went to %d", inst, got.id)
					}
				}
			}
			send(t, "127.0.0.1", addr, tc.req(affinity.NewSessionID(7))) // instance 7 is not up
			next(t, ch)
			if st := d.Stats(); st.TagRouted != 80 || st.KeyRouted != 1 {
				t.Errorf("TagRouted %d KeyRouted %d, want 80 1", st.TagRouted, st.KeyRouted)
			}
		})
	}
}

// TestAffinityFallback: connections without a key from one address go
// by the fallback: all to the address's instance with "source", over
// every instance (the least loaded first) with "spread".
func TestAffinityFallback(t *testing.T) {
	for _, spread := range []bool{false, true} {
		t.Run(fmt.Sprint("spread=", spread), func(t *testing.T) {
			d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "query:sid"), Spread: spread}, false, 4, 1, 2, 3, 4)
			count := map[int]int{}
			for i := range 40 {
				send(t, "127.0.0.1", addr, get("", "")) // held open: they count as open
				count[next(t, ch).id]++
				// The worker may hold it before the dispatcher counted it.
				waitFor(t, func() bool { return d.Stats().HandedOff == uint64(i+1) })
			}
			want, _ := d.Up.Pick(netip.MustParseAddr("127.0.0.1"))
			if !spread && count[want] != 40 {
				t.Errorf("fallback source: %v, want all 40 on %d", count, want)
			}
			if spread {
				for id := 1; id <= 4; id++ {
					if count[id] != 10 {
						t.Errorf("fallback spread: %v, want 10 each (least open connections)", count)
						break
					}
				}
			}
			if st := d.Stats(); st.Fallbacks != 40 || st.KeyRouted != 0 {
				t.Errorf("Fallbacks %d KeyRouted %d, want 40 0", st.Fallbacks, st.KeyRouted)
			}
		})
	}
}

// TestAffinityXFF: X-Forwarded-For from a trusted proxy places the
// connection as its client's address would be; the same header from
// another peer is ignored (counted), the connection going by its own
// address.
func TestAffinityXFF(t *testing.T) {
	d, addr, ch := startKey(t, AffinityOptions{
		Spec:           spec(t, "header:X-Forwarded-For"),
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	}, false, 4, 1, 2, 3, 4)
	stranger := netip.MustParseAddr("127.0.0.3")
	strangerInst, _ := d.Up.Pick(stranger)
	tried := 0
	for i := 1; i < 255 && tried < 8; i++ {
		client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		want, _ := d.Up.Pick(client)
		if want == strangerInst {
			continue // would not tell honoured from ignored
		}
		tried++
		hdr := "X-Forwarded-For: " + client.String() + ", 127.0.0.2\r\n"
		send(t, "127.0.0.2", addr, get("", hdr))
		if got := next(t, ch); got.id != want {
			t.Fatalf("from the trusted proxy, client %s went to %d, want %d", client, got.id, want)
		}
		send(t, stranger.String(), addr, get("", hdr))
		if got := next(t, ch); got.id != strangerInst {
			t.Fatalf("from an untrusted peer, client %s went to %d, want the peer's own %d", client, got.id, strangerInst)
		}
	}
	if st := d.Stats(); st.KeyRouted != uint64(tried) || st.XFFIgnored != uint64(tried) || st.Fallbacks != uint64(tried) {
		t.Errorf("KeyRouted %d XFFIgnored %d Fallbacks %d, want %d each", st.KeyRouted, st.XFFIgnored, st.Fallbacks, tried)
	}
}

// TestAffinityBalanceFactor: a hot key population (every connection
// with one key) is capped at BalanceFactor times the average open
// connections per instance; the excess spills in rendezvous order; once
// the worker reports them closed, the key's instance takes it again.
func TestAffinityBalanceFactor(t *testing.T) {
	d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "header:X-User"), BalanceFactor: 1.25}, false, 4, 1, 2, 3, 4)
	const n = 100
	count := map[int]int{}
	var hot []delivery
	home := 0
	for i := range n {
		send(t, "127.0.0.1", addr, get("", "X-User: hot\r\n"))
		got := next(t, ch)
		waitFor(t, func() bool { return d.Stats().HandedOff == uint64(i+1) })
		count[got.id]++
		if i == 0 {
			home = got.id
		}
		if got.id == home {
			hot = append(hot, got)
		}
	}
	limit := 1.25 * float64(n) / 4
	for id, c := range count {
		if float64(c) > limit+1 {
			t.Errorf("instance %d holds %d connections, over 1.25 × the average (%.0f): %v", id, c, limit, count)
		}
	}
	st := d.Stats()
	if st.Spills == 0 || st.Spills != uint64(n-count[home]) {
		t.Errorf("Spills %d, want %d (the connections not on the key's instance %d): %v", st.Spills, n-count[home], home, count)
	}
	if st.Open[home] != uint64(count[home]) {
		t.Errorf("Open[%d] = %d, want %d", home, st.Open[home], count[home])
	}
	// The worker closes its connections and reports it: the key's
	// instance is below the bound again.
	for _, h := range hot {
		h.c.Close()
	}
	d.Closed(home, uint64(len(hot)))
	send(t, "127.0.0.1", addr, get("", "X-User: hot\r\n"))
	if got := next(t, ch); got.id != home {
		t.Errorf("after its connections closed, the hot key went to %d, want its instance %d", got.id, home)
	}
}

// TestAffinityPeekWaits: a head that arrives in pieces is waited for
// (out of Go's poller) and handed over whole; the worker reads every byte
// the client sent, body included, from a blocking descriptor.
func TestAffinityPeekWaits(t *testing.T) {
	d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "cookie:sid")}, false, 4, 1, 2, 3, 4)
	id := affinity.NewSessionID(3)
	c := send(t, "127.0.0.1", addr, "POST /form HTTP/1.1\r\nHost: x\r\nCoo")
	waitFor(t, func() bool { return d.Stats().Peeking == 1 })
	rest := "kie: sid=" + id + "\r\nContent-Length: 5\r\n\r\nhello"
	io.WriteString(c, rest)
	got := next(t, ch)
	if got.id != 3 {
		t.Errorf("went to %d, want 3", got.id)
	}
	all := got.readHead(t)
	buf := make([]byte, 5)
	if !strings.HasSuffix(all, "hello") {
		got.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := io.ReadFull(got.c, buf[:5-len(all[strings.Index(all, "\r\n\r\n")+4:])])
		all += string(buf[:n])
	}
	if want := "POST /form HTTP/1.1\r\nHost: x\r\nCoo" + rest; all != want {
		t.Errorf("worker read %q, want %q", all, want)
	}
}

// TestAffinitySlowClients: clients that send nothing do not hold up
// others (each waits PeekTimeout at most, then goes by the fallback,
// counted); a client that closes without a byte is closed, counted; a
// head that is not HTTP or too large goes by the fallback at once,
// counted, with its bytes intact; past MaxPeeking a connection goes by
// the fallback at once.
func TestAffinitySlowClients(t *testing.T) {
	const timeout = 2 * time.Second
	d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "query:sid"), PeekTimeout: timeout, MaxPeeking: 51}, false, 4, 1, 2, 3, 4)
	for range 50 {
		send(t, "127.0.0.1", addr, "") // silent: connected, nothing sent
	}
	waitFor(t, func() bool { return d.Stats().Peeking == 50 })
	start := time.Now()
	id := affinity.NewSessionID(2)
	send(t, "127.0.0.1", addr, get("&sid="+id, ""))
	if got := next(t, ch); got.id != 2 {
		t.Fatalf("went to %d, want 2", got.id)
	}
	if el := time.Since(start); el > timeout/2 {
		t.Errorf("a client with its head waited %v behind 50 silent ones", el)
	}
	// One more silent one fills MaxPeeking; the next goes by the fallback
	// at once.
	send(t, "127.0.0.1", addr, "")
	waitFor(t, func() bool { return d.Stats().Peeking == 51 })
	send(t, "127.0.0.1", addr, "")
	next(t, ch)
	if st := d.Stats(); st.PeekRejects[PeekBusy] != 1 || st.PeekRejects[PeekTimeout] != 0 {
		t.Errorf("PeekRejects %v, want busy 1, no timeout yet", st.PeekRejects)
	}
	for range 51 {
		next(t, ch)
	}
	if el := time.Since(start); el < timeout/2 {
		t.Errorf("silent clients handed off after %v, before PeekTimeout", el)
	}
	// Not HTTP (a TLS ClientHello's first bytes), and a head with no end
	// within MaxHead: by the fallback, bytes intact.
	tls := "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
	c := send(t, "127.0.0.1", addr, tls)
	c.(*net.TCPConn).CloseWrite()
	if head := next(t, ch).readHead(t); head != tls {
		t.Errorf("worker read %q, want %q", head, tls)
	}
	big := "GET /" + strings.Repeat("a", affinity.MaxHead) + "?sid=late HTTP/1.1\r\n\r\n"
	send(t, "127.0.0.1", addr, big)
	if head := next(t, ch).readHead(t); head != big {
		t.Errorf("worker read %d bytes, want the %d sent", len(head), len(big))
	}
	// Closed without a byte: nothing to hand off.
	const before = 55 // 1 with a key, 1 busy, 51 silent, not HTTP, too large
	waitFor(t, func() bool { return d.Stats().HandedOff == before })
	c = dialFrom(t, "127.0.0.1", addr)
	c.Close()
	waitFor(t, func() bool { return d.Stats().PeekRejects[PeekClosed] == 1 })
	st := d.Stats()
	if st.HandedOff != before || st.PeekRejects[PeekTimeout] != 51 || st.PeekRejects[PeekMalformed] != 1 || st.PeekRejects[PeekTooLarge] != 1 {
		t.Errorf("HandedOff %d (want %d), PeekRejects %v, want timeout 51, malformed 1, too_large 1, closed 1", st.HandedOff, before, st.PeekRejects)
	}
	if st.Fallbacks != 54 {
		t.Errorf("Fallbacks %d, want 54", st.Fallbacks)
	}
}

// TestAffinityProxy: on a PROXY listener the header is consumed first,
// then the request is peeked: the key routes, the worker reads the
// request alone.
func TestAffinityProxy(t *testing.T) {
	d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "query:sid")}, true, 4, 1, 2, 3, 4)
	req := get("&sid="+affinity.NewSessionID(4), "")
	send(t, "127.0.0.1", addr, "PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\n"+req)
	got := nextAny(t, ch) // PROXY connections reach the worker non-blocking, as before key affinity: the header is read through Go's poller
	if head := got.readHead(t); got.id != 4 || head != req {
		t.Errorf("instance %d read %q; want 4 and %q", got.id, head, req)
	}
	if got.h.Source != netip.MustParseAddrPort("192.0.2.1:5555") {
		t.Errorf("hand-off source %v, want the PROXY header's", got.h.Source)
	}
	if st := d.Stats(); st.TagRouted != 1 {
		t.Errorf("TagRouted %d, want 1", st.TagRouted)
	}
}

// BenchmarkPeekRoute measures a connection through the key path: accept,
// peek the head, extract the key, route, hand off; "source" is the same
// client (it sends the same request) on the source path, so the
// difference is what the key path costs. It reports the share of
// connections whose head had not arrived at accept ("epoll/op"), which
// took the peeker's epoll round.
func BenchmarkPeekRoute(b *testing.B) {
	for _, aff := range []string{"source", "query:sid"} {
		b.Run(aff, func(b *testing.B) {
			dir := b.TempDir()
			for id := 1; id <= 2; id++ {
				c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath(dir, id), Net: "unixgram"})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				go func() {
					rc, _ := c.SyscallConn()
					var h handoff.Header
					for {
						if err := rc.Read(func(s uintptr) bool {
							fd, err := handoff.Receive(int(s), &h)
							if errors.Is(err, unix.EAGAIN) {
								return false
							}
							if err == nil {
								unix.Close(fd)
							}
							return true
						}); err != nil {
							return
						}
					}
				}()
			}
			sp, _ := affinity.Parse(aff)
			d := newTestDispatcher(dir, DispatcherOptions{Affinity: AffinityOptions{Spec: sp}}, 1, 2)
			l, _ := net.Listen("tcp", "127.0.0.1:0")
			f, _ := l.(*net.TCPListener).File()
			addr := l.Addr().String()
			l.Close()
			done := make(chan struct{})
			ctx, cancel := contextWithCancel()
			go func() { d.Serve(ctx, []Listener{{Name: "public", File: f}}); close(done) }()
			defer func() { cancel(); <-done }()
			req := []byte("GET /socket.io/?EIO=4&transport=polling&sid=ph1.q2V0aGlzaXNyYW5kb21ieQ HTTP/1.1\r\nHost: x\r\n\r\n")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				c.Write(req)
				c.Close()
			}
			b.StopTimer()
			waitForB(b, func() bool { return d.Stats().HandedOff >= uint64(b.N) })
			b.ReportMetric(float64(d.aff.waited.Load())/float64(b.N), "epoll/op")
		})
	}
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

// BenchmarkPeekExtract is the work the key path adds to a connection
// whose head has arrived: one recv(MSG_PEEK) on a real TCP socket, the
// key's extraction and the routing decision (with a bounded load).
func BenchmarkPeekExtract(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	req := "GET /socket.io/?EIO=4&transport=polling&sid=client-0042 HTTP/1.1\r\nHost: x\r\nCookie: a=b\r\n\r\n"
	io.WriteString(c, req)
	f, _ := s.(*net.TCPConn).File()
	defer f.Close()
	fd := int(f.Fd())
	sp, _ := affinity.Parse("query:sid")
	d := newTestDispatcher(b.TempDir(), DispatcherOptions{Affinity: AffinityOptions{Spec: sp, BalanceFactor: 1.25}}, 1, 2, 3, 4)
	var buf [affinity.MaxHead]byte
	peer := netip.MustParseAddr("127.0.0.1")
	waitForB(b, func() bool { n, _ := peekNow(fd, buf[:]); return n == len(req) })
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, err := peekNow(fd, buf[:])
		if err != nil || n != len(req) {
			b.Fatal(n, err)
		}
		r, err := affinity.Extract(sp, buf[:n], peer, affinity.Options{})
		if err != nil {
			b.Fatal(err)
		}
		d.route(r, true, peer)
	}
}

// TestKeyBucket pins the key hash: a change moves every key-affinity
// session to another instance at the upgrade, which release notes must
// say; and a bucket's order is the one routeKey applies first to.
func TestKeyBucket(t *testing.T) {
	for key, want := range map[string]int{"": 3741, "client-000": 1649, "ph3.q2V0aGlzaXNyYW5kb21ieQ": 848} {
		if got := KeyBucket(key); got != want {
			t.Errorf("KeyBucket(%q) = %d, want %d", key, got, want)
		}
	}
	s := NewSet(1, 2, 3, 4)
	a := netip.MustParseAddr("192.0.2.1")
	if got, want := s.OrderBucket(Bucket(a), nil), s.Order(a, nil); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("OrderBucket(Bucket(a)) = %v, Order(a) = %v", got, want)
	}
	for _, first := range []int{1, 2, 3, 4} {
		o := routeKey{bucket: 7, first: first}.order(s, nil)
		rest := slices.DeleteFunc(s.OrderBucket(7, nil), func(id int) bool { return id == first })
		if o[0] != first || fmt.Sprint(o[1:]) != fmt.Sprint(rest) {
			t.Errorf("order with first %d = %v, want %d then %v", first, o, first, rest)
		}
	}
}

// TestAffinityProxyPeekBudget: a PROXY connection keeps its slot in its
// peer's pending budget while its request head is awaited, so a trusted
// peer's slow requests are bounded as its slow headers are.
func TestAffinityProxyPeekBudget(t *testing.T) {
	dir := t.TempDir()
	ws := newWorkers(t, dir, 2)
	d := newTestDispatcher(dir, DispatcherOptions{
		QueueWait: 50 * time.Millisecond, MaxPendingProxy: 8, MaxPendingProxyPerPeer: 1,
		Affinity: AffinityOptions{Spec: spec(t, "query:sid"), PeekTimeout: 5 * time.Second},
	}, 1, 2)
	f, addr := listenFile(t, "tcp", "127.0.0.1:0")
	ch := collect(t, ws)
	serveWith(t, d, Listener{Name: "lb", File: f, Proxy: true, ProxyFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	slow := send(t, "127.0.0.1", addr, "PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\nGET /?sid=")
	second := send(t, "127.0.0.1", addr, "PROXY TCP4 192.0.2.3 192.0.2.2 5555 443\r\n")
	closedByServer(t, second)
	if st := d.Stats(); st.ProxyBusy != 1 {
		t.Errorf("ProxyBusy %d, want 1: the second connection of the peer found its budget spent", st.ProxyBusy)
	}
	io.WriteString(slow, "k HTTP/1.1\r\n\r\n")
	if got := nextAny(t, ch); got.readHead(t) != "GET /?sid=k HTTP/1.1\r\n\r\n" {
		t.Error("the slow request was not handed over whole")
	}
}

// TestAffinityPeekTrickle: a head sent a byte at a time is still read
// whole and routed by its key (the peeker parses again only when a line
// completes).
func TestAffinityPeekTrickle(t *testing.T) {
	d, addr, ch := startKey(t, AffinityOptions{Spec: spec(t, "header:X-Session"), PeekTimeout: 5 * time.Second}, false, 4, 1, 2, 3, 4)
	id := affinity.NewSessionID(4)
	req := "GET / HTTP/1.1\r\nHost: x\r\nX-Session: " + id + "\r\n\r\n"
	c := send(t, "127.0.0.1", addr, req[:1])
	waitFor(t, func() bool { return d.Stats().Peeking == 1 })
	for i := 1; i < len(req); i++ {
		if _, err := io.WriteString(c, req[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	got := next(t, ch)
	if head := got.readHead(t); got.id != 4 || head != req {
		t.Errorf("instance %d read %q, want 4 and %q", got.id, head, req)
	}
	if st := d.Stats(); st.TagRouted != 1 {
		t.Errorf("TagRouted %d, want 1", st.TagRouted)
	}
}

// TestForget: an instance whose process ended (killed: no close reports)
// starts again from zero open connections; the closed count takes the
// difference and stays monotonic; a late report cannot make it negative.
func TestForget(t *testing.T) {
	d := &Dispatcher{}
	in := d.inst(2)
	in.handed.Add(10)
	in.closed.Add(3)
	if got := in.open(); got != 7 {
		t.Fatalf("open = %d, want 7", got)
	}
	d.Forget(2)
	if got, c := in.open(), in.closed.Load(); got != 0 || c != 10 {
		t.Errorf("after Forget: open %d, closed %d; want 0, 10", got, c)
	}
	d.Closed(2, 4) // a report that was on its way
	in.handed.Add(5)
	if got := in.open(); got != 1 {
		t.Errorf("open = %d after 5 more hand-offs, want 1 (the late report counted against them)", got)
	}
	d.Forget(3) // an instance that never had a connection
	if got := d.inst(3).open(); got != 0 {
		t.Errorf("open of an unknown instance = %d", got)
	}
}
