package steer

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/sticky"
)

// needBPF fails t on err, except that without the privilege to load BPF
// programs it skips outside CI ($CI set): CI runs as root and must run
// these tests.
func needBPF(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, os.ErrPermission) && os.Getenv("CI") == "" {
		t.Skipf("cannot load BPF programs (run the tests as root, or with CAP_BPF): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// load is Load for tests: it skips, with what to do, where the process may
// not load BPF programs (outside CI: needBPF), and closes s at the end.
func load(t testing.TB, listeners, maxInstances int) *Steering {
	t.Helper()
	s, err := Load(listeners, maxInstances)
	needBPF(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// group is a SO_REUSEPORT group of real listening sockets on one address,
// one per instance: fds[id] is instance id's socket.
type group struct {
	t    testing.TB
	addr netip.AddrPort
	fds  map[int]int
}

func listenGroup(t testing.TB, host string, ids ...int) *group {
	t.Helper()
	g := &group{t: t, fds: map[int]int{}}
	ip := netip.MustParseAddr(host)
	for _, id := range ids {
		family := unix.AF_INET
		if ip.Is6() {
			family = unix.AF_INET6
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.close(id) })
		g.fds[id] = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		var sa unix.Sockaddr
		if ip.Is6() {
			sa = &unix.SockaddrInet6{Addr: ip.As16(), Port: int(g.addr.Port())}
		} else {
			sa = &unix.SockaddrInet4{Addr: ip.As4(), Port: int(g.addr.Port())}
		}
		if err := unix.Bind(fd, sa); err != nil {
			t.Fatalf("bind %v: %v", sa, err)
		}
		if err := unix.Listen(fd, 128); err != nil {
			t.Fatal(err)
		}
		if !g.addr.IsValid() {
			got, err := unix.Getsockname(fd)
			if err != nil {
				t.Fatal(err)
			}
			switch a := got.(type) {
			case *unix.SockaddrInet4:
				g.addr = netip.AddrPortFrom(ip, uint16(a.Port))
			case *unix.SockaddrInet6:
				g.addr = netip.AddrPortFrom(ip, uint16(a.Port))
			}
		}
	}
	return g
}

func (g *group) close(id int) {
	if fd, ok := g.fds[id]; ok {
		unix.Close(fd)
		delete(g.fds, id)
	}
}

// connect opens a connection from src to the group and returns the instance
// whose socket accepted it (its pending connection is accepted and closed).
func (g *group) connect(src netip.Addr) int {
	g.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", g.addr.String())
	if err != nil {
		g.t.Fatalf("connect from %v: %v", src, err)
	}
	defer c.Close()
	want := c.LocalAddr().(*net.TCPAddr).AddrPort()
	// The handshake has ended when Dial returns; poll with a deadline all
	// the same, and check that the connection found is this one.
	var ids []int
	var pfds []unix.PollFd
	for id, fd := range g.fds {
		ids = append(ids, id)
		pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	n, err := unix.Poll(pfds, 5000)
	if err != nil || n == 0 {
		g.t.Fatalf("connection from %v: no listener ready (%v)", src, err)
	}
	for i, p := range pfds {
		if p.Revents&unix.POLLIN == 0 {
			continue
		}
		nfd, sa, err := unix.Accept4(int(p.Fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if err != nil {
			g.t.Fatalf("accept on instance %d: %v", ids[i], err)
		}
		unix.Close(nfd)
		var peer netip.AddrPort
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			peer = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
		case *unix.SockaddrInet6:
			peer = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
		}
		if peer.Addr().Unmap() != want.Addr().Unmap() || peer.Port() != want.Port() {
			g.t.Fatalf("instance %d accepted %v, want the connection from %v", ids[i], peer, want)
		}
		return ids[i]
	}
	g.t.Fatalf("connection from %v: poll said ready but no listener was", src)
	return 0
}

// steer loads, attaches and fills s from the group and the set.
func (g *group) steer(s *Steering, l int, up *sticky.Set) {
	g.t.Helper()
	for id, fd := range g.fds {
		if err := s.SetSocket(l, id, fd); err != nil {
			g.t.Fatal(err)
		}
	}
	for _, fd := range g.fds {
		if err := s.Attach(l, fd); err != nil {
			g.t.Fatal(err)
		}
		break
	}
	if _, err := s.SetTable(up); err != nil {
		g.t.Fatal(err)
	}
}

func loopbackSources(n int) []netip.Addr {
	addrs := make([]netip.Addr, n)
	a := netip.MustParseAddr("127.0.0.2")
	for i := range addrs {
		addrs[i] = a
		a = a.Next()
	}
	return addrs
}

func pick(t testing.TB, up *sticky.Set, a netip.Addr) int {
	t.Helper()
	id, ok := up.Pick(a)
	if !ok {
		t.Fatalf("empty set %v", up.IDs())
	}
	return id
}

// placements connects from every source rounds times and checks each
// source always reaches the same instance; it returns that instance per
// source.
func (g *group) placements(srcs []netip.Addr, rounds int) map[netip.Addr]int {
	g.t.Helper()
	got := map[netip.Addr]int{}
	for r := range rounds {
		for _, a := range srcs {
			id := g.connect(a)
			if r > 0 && got[a] != id {
				g.t.Fatalf("%v reached instance %d, then %d", a, got[a], id)
			}
			got[a] = id
		}
	}
	return got
}

// TestSteerPlacesByPick is the "same instance in both modes" property, with
// real sockets: 4 listeners in one SO_REUSEPORT group, the table filled from
// a sticky.Set, and 40 sources each reaching exactly the instance that
// sticky's Pick (the hand-off dispatcher's choice) names, every time. The
// kernel's own hash spreads a source's connections over all 4 (it covers the
// source port), so without the program this fails at once.
func TestSteerPlacesByPick(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	srcs := loopbackSources(40)
	got := g.placements(srcs, 3)
	count := map[int]int{}
	for _, a := range srcs {
		if want := pick(t, up, a); got[a] != want {
			t.Errorf("%v reached instance %d, Pick says %d", a, got[a], want)
		}
		count[got[a]]++
	}
	t.Logf("40 sources over 4 instances: %v", count)
	if sh := s.Shares(); len(sh) != 4 || sh[1]+sh[2]+sh[3]+sh[4] != sticky.Buckets {
		t.Errorf("Shares = %v, want 4 instances holding %d buckets", sh, sticky.Buckets)
	}
}

// TestSteerInstanceLeaves: the table refilled without instance 3 moves the
// sources instance 3 served, each to its Pick in the smaller set, and no
// other source; writing only the changed buckets, about a quarter.
func TestSteerInstanceLeaves(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	srcs := loopbackSources(40)
	before := g.placements(srcs, 1)

	less := up.Without(3)
	held := s.Shares()[3]
	changed, err := s.SetTable(less)
	if err != nil {
		t.Fatal(err)
	}
	if changed != held || changed == 0 || s.Shares()[3] != 0 {
		t.Errorf("SetTable wrote %d buckets, want the %d of instance 3", changed, held)
	}
	after := g.placements(srcs, 2)
	moved := 0
	for _, a := range srcs {
		switch {
		case before[a] == 3:
			moved++
			if want := pick(t, less, a); after[a] != want {
				t.Errorf("%v moved from 3 to %d, Pick says %d", a, after[a], want)
			}
		case after[a] != before[a]:
			t.Errorf("%v moved from %d to %d though only 3 left", a, before[a], after[a])
		}
	}
	if moved == 0 {
		t.Fatal("instance 3 served none of the 40 sources: the test shows nothing")
	}
}

// TestSteerClosedListener: when an instance's listener is closed, the
// kernel empties its slot (its sources fall to the kernel's hash, still
// served); refilling the table without it moves exactly its sources to
// their Pick.
func TestSteerClosedListener(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	srcs := loopbackSources(40)
	before := g.placements(srcs, 1)

	g.close(2)
	var cookie uint64
	if err := s.listeners[0].socks.Lookup(uint32(2), &cookie); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("slot of the closed listener: %v (cookie %d), want it empty", err, cookie)
	}
	for _, a := range srcs {
		if id := g.connect(a); id == 2 {
			t.Fatalf("%v reached the closed instance", a)
		}
	}
	if err := s.ClearSocket(0, 2); err != nil {
		t.Errorf("clearing an empty slot: %v", err)
	}
	less := up.Without(2)
	if _, err := s.SetTable(less); err != nil {
		t.Fatal(err)
	}
	after := g.placements(srcs, 2)
	for _, a := range srcs {
		if before[a] != 2 && after[a] != before[a] {
			t.Errorf("%v moved from %d to %d though only 2 left", a, before[a], after[a])
		}
		if want := pick(t, less, a); after[a] != want {
			t.Errorf("%v reached %d, Pick says %d", a, after[a], want)
		}
	}
}

// TestSteerAdopt is a supervisor restart: the descriptors go to the fd
// store (Files), the process's own handles close, and a new Steering built
// from the stored files keeps steering, reports the shares, and its table
// changes are the ones the attached program reads.
func TestSteerAdopt(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	shares := s.Shares()
	files, err := s.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	if len(names) != 3 || names[0] != FileTable || names[1] != FilePrefixProg+"0" || names[2] != FilePrefixSocks+"0" {
		t.Errorf("Files named %v", names)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	srcs := loopbackSources(40)
	// Nothing of the first Steering is open in Go: the group steers on.
	for a, id := range g.placements(srcs, 2) {
		if want := pick(t, up, a); id != want {
			t.Errorf("with the supervisor's handles closed, %v reached %d, Pick says %d", a, id, want)
		}
	}
	// An unrelated descriptor in the list (a listener from Sockets=) is ignored.
	other := dupFile(t, g.fds[1], "public")
	adopted, err := Adopt(append([]*os.File{other}, files...))
	if err != nil {
		t.Fatal(err)
	}
	defer adopted.Close()
	if got := adopted.Shares(); !mapsEqual(got, shares) {
		t.Errorf("adopted Shares = %v, want %v", got, shares)
	}
	// Re-adding the same sockets is a no-op, not EBUSY.
	for id, fd := range g.fds {
		if err := adopted.SetSocket(0, id, fd); err != nil {
			t.Errorf("SetSocket again after adopt: %v", err)
		}
	}
	less := up.Without(1)
	if _, err := adopted.SetTable(less); err != nil {
		t.Fatal(err)
	}
	for a, id := range g.placements(srcs, 1) {
		if want := pick(t, less, a); id != want {
			t.Errorf("after the adopted table changed, %v reached %d, Pick says %d", a, id, want)
		}
	}
}

// dupFile returns a duplicate of fd named name, closed at the end of the
// test. (An *os.File made from a descriptor something else owns would close
// it when collected.)
func dupFile(t testing.TB, fd int, name string) *os.File {
	t.Helper()
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), name)
	t.Cleanup(func() { f.Close() })
	return f
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestAdoptChecks: Adopt refuses descriptors that are not what their names
// say, and incomplete sets.
func TestAdoptChecks(t *testing.T) {
	s := load(t, 2, 8)
	other := load(t, 1, 8)
	files, err := s.Files()
	if err != nil {
		t.Fatal(err)
	}
	otherFiles, err := other.Files()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*os.File{}
	for _, f := range append(files, otherFiles...) {
		t.Cleanup(func() { f.Close() })
	}
	for _, f := range files {
		byName[f.Name()] = f
	}
	rename := func(f *os.File, name string) *os.File { return dupFile(t, int(f.Fd()), name) }
	tests := []struct {
		name  string
		files []*os.File
	}{
		{"nothing", nil},
		{"no program", []*os.File{byName[FileTable]}},
		{"table is a socket array", []*os.File{rename(byName["steer-socks-0"], FileTable), byName["steer-prog-0"], byName["steer-socks-0"]}},
		{"socket array is the table", []*os.File{byName[FileTable], byName["steer-prog-0"], rename(byName[FileTable], "steer-socks-0")}},
		{"program is a map", []*os.File{byName[FileTable], rename(byName[FileTable], "steer-prog-0"), byName["steer-socks-0"]}},
		{"second address lacks its array", []*os.File{byName[FileTable], byName["steer-prog-0"], byName["steer-socks-0"], byName["steer-prog-1"]}},
		{"program of another table", []*os.File{byName[FileTable], rename(otherFiles[1], "steer-prog-0"), byName["steer-socks-0"]}},
		{"program of another array", []*os.File{byName[FileTable], rename(byName["steer-prog-1"], "steer-prog-0"), byName["steer-socks-0"]}},
		{"a socket for the table", []*os.File{rename(os.Stdin, FileTable), byName["steer-prog-0"], byName["steer-socks-0"]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a, err := Adopt(tt.files); err == nil {
				a.Close()
				t.Fatal("Adopt succeeded")
			} else {
				t.Log(err)
			}
		})
	}
	a, err := Adopt(files)
	if err != nil {
		t.Fatal(err)
	}
	if a.Listeners() != 2 || a.MaxInstances() != 8 {
		t.Errorf("adopted %d addresses, %d instances; want 2, 8", a.Listeners(), a.MaxInstances())
	}
	a.Close()
}

// TestSteerTwoAddresses: two listen addresses (two reuseport groups), one
// table; each group's connections go to that group's socket of Pick.
func TestSteerTwoAddresses(t *testing.T) {
	up := sticky.NewSet(1, 2, 3)
	s := load(t, 2, 4)
	g0 := listenGroup(t, "127.0.0.1", up.IDs()...)
	g1 := listenGroup(t, "127.0.0.1", up.IDs()...)
	g0.steer(s, 0, up)
	g1.steer(s, 1, up)
	srcs := loopbackSources(20)
	p0, p1 := g0.placements(srcs, 2), g1.placements(srcs, 2)
	for _, a := range srcs {
		if want := pick(t, up, a); p0[a] != want || p1[a] != want {
			t.Errorf("%v reached %d and %d on the two addresses, Pick says %d", a, p0[a], p1[a], want)
		}
	}
}

// TestSteerIPv6: the IPv6 branch of the program, end to end. Loopback IPv6
// has one source address (::1), so its connections, from many source ports,
// must all reach Pick(::1); the kernel's hash would spread them.
func TestSteerIPv6(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "::1", up.IDs()...)
	g.steer(s, 0, up)
	src := netip.IPv6Loopback()
	want := pick(t, up, src)
	for range 12 {
		if id := g.connect(src); id != want {
			t.Fatalf("::1 reached %d, Pick says %d", id, want)
		}
	}
}

// TestSteerDualStack: IPv6 sockets bound to ::ffff:127.0.0.1 take IPv4
// clients; the packets are IPv4, the sockets IPv6, and each client reaches
// the Pick of its address (which is the Pick of its IPv4-mapped form).
func TestSteerDualStack(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "::ffff:127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	srcs := loopbackSources(20)
	for a, id := range g.placements(srcs, 2) {
		if want := pick(t, up, netip.AddrFrom16(a.As16())); id != want {
			t.Errorf("%v reached %d on a dual-stack socket, Pick says %d", a, id, want)
		}
	}
}

// TestSocketErrors: the socket array takes listening SO_REUSEPORT sockets
// by instance number within its size, and says which rule a refusal broke.
func TestSocketErrors(t *testing.T) {
	s := load(t, 1, 4)
	g := listenGroup(t, "127.0.0.1", 1, 2)
	plain, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(plain)
	tests := []struct {
		name string
		run  func() error
	}{
		{"instance beyond the array", func() error { return s.SetSocket(0, 4, g.fds[1]) }},
		{"negative instance", func() error { return s.SetSocket(0, -1, g.fds[1]) }},
		{"no such address", func() error { return s.SetSocket(1, 1, g.fds[1]) }},
		{"not a bound reuseport socket", func() error { return s.SetSocket(0, 1, plain) }},
		{"not a socket", func() error { return s.SetSocket(0, 1, int(os.Stdin.Fd())) }},
		{"one socket in two slots", func() error {
			if err := s.SetSocket(0, 1, g.fds[1]); err != nil {
				return nil
			}
			return s.SetSocket(0, 2, g.fds[1])
		}},
		{"table instance beyond the array", func() error { _, err := s.SetTable(sticky.NewSet(1, 9)); return err }},
		{"attach to a socket outside any group", func() error { return s.Attach(0, plain) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
		})
	}
	for _, bad := range [][2]int{{0, 4}, {MaxListeners + 1, 4}, {1, 0}, {1, MaxInstances + 1}} {
		if s, err := Load(bad[0], bad[1]); err == nil {
			s.Close()
			t.Errorf("Load(%d, %d) succeeded", bad[0], bad[1])
		}
	}
}

// bucketProgram loads the program's bucket computation as a socket filter,
// which BPF_PROG_TEST_RUN runs on a given packet.
func bucketProgram(t testing.TB) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SocketFilter, Instructions: bucketTestCode(), License: "Dual MIT/GPL",
	})
	needBPF(t, err)
	t.Cleanup(func() { prog.Close() })
	return prog
}

// packet is an Ethernet frame with an IPv4 or IPv6 header from src; the
// rest of the headers is zero, which the program does not read.
func packet(src netip.Addr) []byte {
	eth := make([]byte, 14)
	if src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20+20)
		ip[0] = 0x45
		copy(ip[12:16], src.AsSlice())
		return append(eth, ip...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40+20)
	ip[0] = 0x60
	copy(ip[8:24], src.AsSlice())
	return append(eth, ip...)
}

// TestProgramAgreesWithBucket runs the program's bucket code, the same
// instructions the sk_reuseport program starts with, on packets from 20,000
// random IPv4 and IPv6 sources and special addresses, and compares with
// sticky.Bucket: the kernel and the hand-off dispatcher must agree on every
// address. Packets that are neither IPv4 nor IPv6 are left to the kernel.
func TestProgramAgreesWithBucket(t *testing.T) {
	prog := bucketProgram(t)
	r := rand.New(rand.NewPCG(1, 2))
	addrs := []netip.Addr{
		netip.IPv4Unspecified(), netip.IPv6Unspecified(), netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("127.0.0.2"), netip.IPv6Loopback(), netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
		netip.MustParseAddr("fe80::1"), netip.MustParseAddr("2001:db8::1"),
	}
	for range 10_000 {
		var b [16]byte
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		addrs = append(addrs, netip.AddrFrom4([4]byte(b[:4])), netip.AddrFrom16(b))
	}
	for _, a := range addrs {
		got, err := prog.Run(&ebpf.RunOptions{Data: packet(a)})
		if err != nil {
			t.Fatalf("test run for %v: %v", a, err)
		}
		if want := sticky.Bucket(a); int(got) != want {
			t.Fatalf("program: bucket %d for %v, sticky.Bucket: %d", got, a, want)
		}
	}
	arp := packet(netip.MustParseAddr("192.0.2.1"))
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	// A packet too short for its source address would take the same
	// branch, but BPF_PROG_TEST_RUN refuses packets shorter than their IP
	// header, so that case is not tested here.
	for name, pkt := range map[string][]byte{"ARP": arp} {
		got, err := prog.Run(&ebpf.RunOptions{Data: pkt})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != bucketTestFail {
			t.Errorf("%s: program returned %d, want no bucket (%d)", name, got, bucketTestFail)
		}
	}
}

// TestSteerManySources is the agreement test through the real sk_reuseport
// program: sources across 127.0.0.0/8 (any of which loopback accepts), one
// connection each, each reaching its Pick over 4 instances.
func TestSteerManySources(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	r := rand.New(rand.NewPCG(3, 4))
	n := 400
	if testing.Short() {
		n = 50
	}
	for range n {
		a := netip.AddrFrom4([4]byte{127, byte(r.Uint32()), byte(r.Uint32()), byte(2 + r.IntN(250))})
		if id, want := g.connect(a), pick(t, up, a); id != want {
			t.Fatalf("%v reached %d, Pick says %d", a, id, want)
		}
	}
}

// BenchmarkBucketProgram is the program's hash of one source address, in
// the kernel (BPF_PROG_TEST_RUN's own timing, per run).
func BenchmarkBucketProgram(b *testing.B) {
	prog := bucketProgram(b)
	for _, a := range []string{"192.0.2.1", "2001:db8::1"} {
		b.Run(a, func(b *testing.B) {
			_, per, err := prog.Benchmark(packet(netip.MustParseAddr(a)), b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/run")
		})
	}
}

// BenchmarkConnect is a loopback connect and accept with and without the
// program attached: the difference is what steering adds per connection.
func BenchmarkConnect(b *testing.B) {
	for _, steered := range []bool{false, true} {
		name := "plain"
		if steered {
			name = "steered"
		}
		b.Run(name, func(b *testing.B) {
			up := sticky.NewSet(1, 2, 3, 4)
			g := listenGroup(b, "127.0.0.1", up.IDs()...)
			if steered {
				g.steer(load(b, 1, 8), 0, up)
			}
			srcs := loopbackSources(64)
			i := 0
			for b.Loop() {
				g.connect(srcs[i%len(srcs)])
				i++
			}
		})
	}
}

// TestSteerFallsBackToHash: an empty table (no instance up) and a detached
// program both leave placement to the kernel's hash: connections are
// served, and one source's connections spread over the group (the hash
// covers the source port) instead of sticking. Steering first, so the
// spread shows the fallback and not a group that never steered.
func TestSteerFallsBackToHash(t *testing.T) {
	up := sticky.NewSet(1, 2, 3, 4)
	s := load(t, 1, 8)
	g := listenGroup(t, "127.0.0.1", up.IDs()...)
	g.steer(s, 0, up)
	src := netip.MustParseAddr("127.0.0.9")
	spread := func() map[int]int {
		seen := map[int]int{}
		for range 24 {
			seen[g.connect(src)]++
		}
		return seen
	}
	if seen := spread(); len(seen) != 1 {
		t.Fatalf("steered, one source reached %v", seen)
	}
	if _, err := s.SetTable(sticky.NewSet()); err != nil {
		t.Fatal(err)
	}
	if sh := s.Shares(); len(sh) != 0 {
		t.Errorf("empty table: Shares = %v", sh)
	}
	if seen := spread(); len(seen) < 2 {
		t.Errorf("with an empty table one source reached only %v", seen)
	}
	if _, err := s.SetTable(up); err != nil {
		t.Fatal(err)
	}
	if seen := spread(); len(seen) != 1 {
		t.Fatalf("table refilled, one source reached %v", seen)
	}
	if err := Detach(g.fds[3]); err != nil {
		t.Fatal(err)
	}
	if seen := spread(); len(seen) < 2 {
		t.Errorf("detached, one source reached only %v", seen)
	}
}

// FuzzProgramAgreesWithBucket: for any 16 bytes, as an IPv6 source and (its
// first 4) as an IPv4 one, the program's bucket is sticky.Bucket's.
func FuzzProgramAgreesWithBucket(f *testing.F) {
	f.Add(make([]byte, 16))
	f.Add([]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2})
	prog := bucketProgram(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 16 {
			return
		}
		for _, a := range []netip.Addr{netip.AddrFrom16([16]byte(b[:16])), netip.AddrFrom4([4]byte(b[:4]))} {
			got, err := prog.Run(&ebpf.RunOptions{Data: packet(a)})
			if err != nil {
				t.Fatal(err)
			}
			if want := sticky.Bucket(a); int(got) != want {
				t.Fatalf("program: bucket %d for %v, sticky.Bucket: %d", got, a, want)
			}
		}
	})
}
