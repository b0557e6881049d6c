package steer

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/sticky"
)

// privateNetns moves the test's goroutine, locked to its OS thread for
// good, into a network namespace of its own with loopback up: sockets it
// creates, and sysctls it writes under /proc/sys/net, are the namespace's,
// never the host's. The thread ends with the test (a goroutine that exits
// locked takes its thread with it), namespace and all.
func privateNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread() // never unlocked, on purpose
	host, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Skipf("no /proc/thread-self: %v", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("cannot create a network namespace (run as root): %v", err)
	}
	mine, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil || mine == host {
		t.Fatalf("still in the host's network namespace %s (%v)", host, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatalf("bring lo up: %v", err)
	}
}

func readSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// hostSysctl reads a sysctl from a thread in the host's namespace (a fresh
// goroutine: the test's own thread is locked in its private one).
func hostSysctl(t *testing.T, path string) string {
	t.Helper()
	ch := make(chan string)
	go func() {
		b, _ := os.ReadFile(path)
		ch <- strings.TrimSpace(string(b))
	}()
	return <-ch
}

// TestSteerMigratesAcceptQueue: with net.ipv4.tcp_migrate_req=1 (set in a
// private network namespace), closing an instance's listener migrates the
// connections waiting in its accept queue instead of resetting them, and
// the program places each on its bucket's new instance, reading the client
// address from the migrating socket (there is no packet). Without that
// branch the kernel's hash places them, and about two in three land elsewhere.
func TestSteerMigratesAcceptQueue(t *testing.T) {
	const sysctl = "/proc/sys/net/ipv4/tcp_migrate_req"
	before := hostSysctl(t, sysctl)
	privateNetns(t)
	t.Cleanup(func() {
		if after := hostSysctl(t, sysctl); after != before {
			t.Errorf("the host's %s changed from %s to %s", sysctl, before, after)
		}
	})
	if err := os.WriteFile(sysctl, []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if got := readSysctl(t, sysctl); got != "1" {
		t.Fatalf("%s = %s in the private namespace", sysctl, got)
	}

	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	if p, err := newProgram(s.table, s.listeners[0].socks, true); err != nil {
		t.Fatalf("this kernel should take the select-or-migrate program: %v", err)
	} else {
		p.Close()
	}
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)

	// Connections from instance 1's sources, left in its accept queue.
	var srcs []netip.Addr
	for _, a := range loopbackSources(200) {
		if pick(t, up, a) == 1 {
			srcs = append(srcs, a)
		}
	}
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, a := range srcs {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: a.AsSlice()}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", g.addr.String())
		if err != nil {
			t.Fatalf("connect from %v: %v", a, err)
		}
		clients = append(clients, c)
	}

	// Instance 1 stops: the table moves its buckets, then its listener closes.
	less := up.Without(1)
	if _, err := s.SetTable(less); err != nil {
		t.Fatal(err)
	}
	g.close(1)

	got := map[netip.Addr]int{}
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(srcs) && time.Now().Before(deadline) {
		var ids []int
		var pfds []unix.PollFd
		for id, fd := range g.fds {
			ids = append(ids, id)
			pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
		if _, err := unix.Poll(pfds, int(time.Until(deadline)/time.Millisecond)+1); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		for i, p := range pfds {
			if p.Revents&unix.POLLIN == 0 {
				continue
			}
			nfd, sa, err := unix.Accept4(int(p.Fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			if err != nil {
				continue
			}
			unix.Close(nfd)
			if a, ok := sa.(*unix.SockaddrInet4); ok {
				got[netip.AddrFrom4(a.Addr)] = ids[i]
			}
		}
	}
	if len(got) != len(srcs) {
		t.Fatalf("%d of %d queued connections reached another instance", len(got), len(srcs))
	}
	for _, a := range srcs {
		if want := pick(t, less, a); got[a] != want {
			t.Errorf("%v migrated to %d, Pick says %d", a, got[a], want)
		}
	}
	t.Logf("%d queued connections migrated, each to its bucket's new instance", len(srcs))
}
