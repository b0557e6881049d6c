package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	webURL     = "http://127.0.0.1:9999/"
	proxyAddr  = "127.0.0.1:9997"
	apiURL     = "http://127.0.0.1:9998/"
	webClients = 40
)

func clientAddr(i int) string { return fmt.Sprintf("127.0.0.%d", i+2) }

// stickyMap asks every client address once and returns addr -> instance.
func stickyMap(t *testing.T, n int) map[string]string {
	t.Helper()
	m := map[string]string{}
	for i := 0; i < n; i++ {
		r, err := get(client(clientAddr(i)), webURL)
		if err != nil {
			t.Fatalf("client %s: %v", clientAddr(i), err)
		}
		m[clientAddr(i)] = r.Instance
	}
	return m
}

// stream keeps new connections flowing from the given client addresses,
// one request at a time per address, until stop is closed.
type stream struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	seen       map[string]map[string]bool // addr -> instances that answered
	pids       map[string]map[string]bool // instance -> pids seen
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startStream(addrs []string) *stream { return startLoad(webURL, addrs, false) }

// stickyRounds maps the web clients to the instances that answer them
// ten times, checks that each address always reaches the same one and
// that each of the 4 instances gets clients, and returns the first map.
func stickyRounds(t *testing.T) map[string]string {
	t.Helper()
	first := stickyMap(t, webClients)
	per := map[string]int{}
	for _, inst := range first {
		per[inst]++
	}
	for round := 0; round < 9; round++ {
		again := stickyMap(t, webClients)
		for a, inst := range again {
			if inst != first[a] {
				t.Errorf("%s reached %s, then %s", a, first[a], inst)
			}
		}
	}
	for n := 1; n <= 4; n++ {
		if per[fmt.Sprintf("web@%d", n)] == 0 {
			t.Errorf("instance web@%d got no client: %v", n, per)
		}
	}
	t.Logf("clients per instance: %v", per)
	return first
}

// stopWeb2 stops web@2 and checks that its clients move within a second
// and that no other client moves; it returns the clients' instances
// before and after.
func stopWeb2(t *testing.T, h *house) (before, after map[string]string) {
	t.Helper()
	before = stickyMap(t, webClients)
	h.systemctl("stop", units.Group{Name: "web"}.Instance(2))
	start := time.Now()
	waitFor(t, 5*time.Second, "web@2's clients to move", func() bool {
		after = stickyMap(t, webClients)
		for _, inst := range after {
			if inst == "web@2" {
				return false
			}
		}
		return true
	})
	if d := time.Since(start); d > time.Second+500*time.Millisecond {
		t.Errorf("clients moved after %v, want within a second", d)
	}
	for a, inst := range before {
		if inst != "web@2" && after[a] != inst {
			t.Errorf("%s moved from %s to %s though its instance kept running", a, inst, after[a])
		}
	}
	return before, after
}

// killWeb2UnderStream SIGKILLs web@2 while 16 of the web clients stream
// requests, waits until its successor runs and the stream goes on, and
// checks that at most one request per stream failed (the one inside the
// killed process), and only for web@2's clients (none refused, with
// noRefused). It returns each client's instance before the kill and the
// finished stream.
func killWeb2UnderStream(t *testing.T, h *house, noRefused bool) (map[string]string, *stream) {
	t.Helper()
	web2 := units.Group{Name: "web"}.Instance(2)
	before := stickyMap(t, webClients)
	oldPID := h.show(web2, "MainPID")
	var addrs []string
	for a := range before {
		addrs = append(addrs, a)
	}
	s := startStream(addrs[:16])
	s.waitServed(t, 200)
	h.systemctl("kill", "-s", "KILL", web2)
	waitFor(t, 20*time.Second, "web@2 back with a new PID", func() bool {
		p := h.show(web2, "MainPID")
		return p != "0" && p != oldPID && h.show(web2, "ActiveState") == "active"
	})
	s.waitServed(t, 200)
	s.finish()
	for _, f := range s.failures {
		a := strings.SplitN(f, ":", 2)[0]
		if before[a] != "web@2" || (noRefused && strings.Contains(f, "refused")) {
			t.Errorf("a client of %s failed: %s", before[a], f)
		}
	}
	if s.failed.Load() > 16 {
		t.Errorf("%d failures, more than one per stream: %v", s.failed.Load(), s.failures)
	}
	return before, s
}

// startLoad keeps requests to url flowing from each address, on new
// connections or on kept-alive ones.
func startLoad(url string, addrs []string, keepAlive bool) *stream {
	s := &stream{stop: make(chan struct{}), seen: map[string]map[string]bool{}, pids: map[string]map[string]bool{}}
	for _, a := range addrs {
		s.wg.Add(1)
		go func(a string) {
			defer s.wg.Done()
			c := client(a)
			if keepAlive {
				c = keepAliveClient(a)
			}
			for {
				select {
				case <-s.stop:
					return
				default:
				}
				r, err := get(c, url)
				s.mu.Lock()
				if err != nil {
					s.failed.Add(1)
					s.failures = append(s.failures, a+": "+err.Error())
				} else {
					s.ok.Add(1)
					if s.seen[a] == nil {
						s.seen[a] = map[string]bool{}
					}
					s.seen[a][r.Instance] = true
					if s.pids[r.Instance] == nil {
						s.pids[r.Instance] = map[string]bool{}
					}
					s.pids[r.Instance][r.PID] = true
				}
				s.mu.Unlock()
			}
		}(a)
	}
	return s
}

func (s *stream) finish() { close(s.stop); s.wg.Wait() }

// waitServed waits until the stream has served n more requests.
func (s *stream) waitServed(t *testing.T, n int64) {
	t.Helper()
	target := s.ok.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d requests served", n), func() bool { return s.ok.Load() >= target })
}

// TestIntegrationSticky runs the demo house in a real systemd and checks
// the sticky dispatcher against client addresses, worker crashes, stops, a
// supervisor crash and PROXY protocol clients.
func TestIntegrationSticky(t *testing.T) {
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")
	if got := h.show("powerhouse@web.service", "ActiveState"); got != "active" {
		t.Fatalf("supervisor: %s\n%s", got, h.journal())
	}

	t.Run("every address always reaches the same instance", func(t *testing.T) {
		stickyRounds(t)
	})

	t.Run("shared socket group serves", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 20; i++ {
			r, err := get(client("127.0.0.1"), apiURL)
			if err != nil {
				t.Fatal(err)
			}
			seen[r.Instance] = true
		}
		if len(seen) == 0 {
			t.Fatal("no api instance answered")
		}
	})

	t.Run("SIGKILL of a worker loses only what was inside it", func(t *testing.T) {
		// At most one request per stream could be inside the killed
		// process, and only from clients of web@2.
		before, s := killWeb2UnderStream(t, h, false)
		t.Logf("served %d, failed %d (inside the killed process)", s.ok.Load(), s.failed.Load())
		after := stickyMap(t, webClients)
		for a, inst := range before {
			if after[a] != inst {
				t.Errorf("%s moved from %s to %s", a, inst, after[a])
			}
		}
	})

	t.Run("stopping an instance moves only its clients", func(t *testing.T) {
		before, _ := stopWeb2(t, h)
		h.systemctl("restart", "powerhouse-web@2.service")
		waitFor(t, 10*time.Second, "web@2's clients to come back", func() bool {
			m := stickyMap(t, webClients)
			for a, inst := range before {
				if m[a] != inst {
					return false
				}
			}
			return true
		})
	})

	t.Run("SIGKILL of the supervisor loses nothing", func(t *testing.T) {
		pids := map[string]string{}
		for n := 1; n <= 4; n++ {
			u := units.Group{Name: "web"}.Instance(n)
			pids[u] = h.show(u, "MainPID")
		}
		oldSup := h.show("powerhouse@web.service", "MainPID")
		var addrs []string
		for i := 0; i < 16; i++ {
			addrs = append(addrs, clientAddr(i))
		}
		s := startStream(addrs)
		s.waitServed(t, 200)
		h.systemctl("kill", "-s", "KILL", "powerhouse@web.service")
		waitFor(t, 20*time.Second, "a new supervisor", func() bool {
			p := h.show("powerhouse@web.service", "MainPID")
			return p != "0" && p != oldSup && h.show("powerhouse@web.service", "ActiveState") == "active"
		})
		s.waitServed(t, 200)
		s.finish()
		if s.failed.Load() != 0 {
			t.Errorf("%d connections failed across the supervisor crash: %v", s.failed.Load(), s.failures)
		}
		for u, p := range pids {
			if got := h.show(u, "MainPID"); got != p {
				t.Errorf("%s: PID %s, was %s before the supervisor crash", u, got, p)
			}
		}
		// The new supervisor found the workers running: nothing started.
		newSup := h.show("powerhouse@web.service", "MainPID")
		if out, _ := h.run("journalctl", "--no-pager", "-o", "cat", "POWERHOUSE_EVENT=worker.start", "_PID="+newSup); strings.Contains(out, "started") {
			t.Errorf("the restarted supervisor reported running workers as started:\n%s", out)
		}
		t.Logf("served %d across the supervisor restart", s.ok.Load())
	})

	t.Run("PROXY protocol", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			header func(src netip.AddrPort) []byte
			src    string
		}{
			{"v1", func(s netip.AddrPort) []byte {
				return []byte(fmt.Sprintf("PROXY TCP4 %s 127.0.0.1 %d 9997\r\n", s.Addr(), s.Port()))
			}, "203.0.113.7:41000"},
			{"v2", proxyV2, "198.51.100.23:42000"},
			{"v2 ipv6", proxyV2, "[2001:db8::9]:43000"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				src := netip.MustParseAddrPort(tc.src)
				var inst string
				for i := 0; i < 3; i++ {
					got := proxyGet(t, tc.header(src))
					if !strings.Contains(got, "remote="+src.String()) {
						t.Fatalf("worker saw %q, want remote=%s", got, src)
					}
					in := strings.Fields(got)[0]
					if inst != "" && in != inst {
						t.Errorf("PROXY client %s reached %s then %s", src, inst, in)
					}
					inst = in
				}
			})
		}
		t.Run("garbage and slow headers", func(t *testing.T) {
			garbage, err := net.Dial("tcp", proxyAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer garbage.Close()
			garbage.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			slow, err := net.Dial("tcp", proxyAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			slow.Write([]byte("PROXY TCP4 1.2.3.4 "))
			// A good client right behind them is served at once.
			start := time.Now()
			got := proxyGet(t, proxyV2(netip.MustParseAddrPort("192.0.2.44:5000")))
			if !strings.Contains(got, "remote=192.0.2.44:5000") {
				t.Errorf("good client got %q", got)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("good client waited %v", d)
			}
			for name, c := range map[string]net.Conn{"garbage": garbage, "slow": slow} {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, 64)
				if n, err := c.Read(b); err == nil {
					t.Errorf("%s header: connection answered %q, want it closed", name, b[:n])
				}
			}
		})
	})
}

// proxyGet sends a PROXY header and an HTTP request on one connection.
func proxyGet(t *testing.T, header []byte) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(append(header, "GET / HTTP/1.0\r\n\r\n"...))
	var buf bytes.Buffer
	b := make([]byte, 4096)
	for {
		n, err := c.Read(b)
		buf.Write(b[:n])
		if err != nil {
			break
		}
	}
	_, body, ok := strings.Cut(buf.String(), "\r\n\r\n")
	if !ok {
		t.Fatalf("no HTTP reply: %q", buf.String())
	}
	return strings.TrimSpace(body)
}

// proxyV2 builds a PROXY protocol v2 header for a TCP client src.
func proxyV2(src netip.AddrPort) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x21)
	if src.Addr().Is4() {
		b = append(b, 0x11)
		b = binary.BigEndian.AppendUint16(b, 12)
		a := src.Addr().As4()
		b = append(b, a[:]...)
		b = append(b, 127, 0, 0, 1)
	} else {
		b = append(b, 0x21)
		b = binary.BigEndian.AppendUint16(b, 36)
		a := src.Addr().As16()
		b = append(b, a[:]...)
		d := netip.IPv6Loopback().As16()
		b = append(b, d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, 9997)
}
