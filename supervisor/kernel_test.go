package supervisor

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/sticky"
	"github.com/powerhouse/powerhouse/units"
)

// fakeSteer is a steering program held in memory. It is a fake for what a
// real kernel cannot be made to do on demand in a unit test: a program that
// fails to load (no CAP_BPF), a table that cannot be written. The real
// program is tested in package steer and, under a real systemd, in
// internal/integration (TestIntegrationKernel*).
type fakeSteer struct {
	mu       sync.Mutex
	adopted  []string // names of the files it was adopted from
	attached int
	slots    map[int]bool
	table    []int
	tables   int     // SetTable calls
	history  [][]int // every table set
	closed   bool
	id       uint32
}

func (p *fakeSteer) Attach(l int, f *os.File) error {
	p.mu.Lock()
	p.attached++
	p.mu.Unlock()
	return nil
}
func (p *fakeSteer) SetSocket(l, n int, f *os.File) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slots[n] = true
	return nil
}
func (p *fakeSteer) ClearSocket(l, n int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.slots, n)
	return nil
}
func (p *fakeSteer) SetTable(up *sticky.Set) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.table = up.IDs()
	p.tables++
	p.history = append(p.history, up.IDs())
	return nil
}
func (p *fakeSteer) Shares() map[int]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[int]int{}
	for i, n := range p.table {
		m[n] = sticky.Buckets / len(p.table)
		if i == 0 {
			m[n] += sticky.Buckets % len(p.table)
		}
	}
	return m
}
func (p *fakeSteer) Files() ([]*os.File, error) {
	fd, err := unix.MemfdCreate("prog", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return []*os.File{os.NewFile(uintptr(fd), "steer-prog-0")}, nil
}
func (p *fakeSteer) ProgramIDs() []uint32 { return []uint32{p.id} }
func (p *fakeSteer) Close() error         { p.mu.Lock(); p.closed = true; p.mu.Unlock(); return nil }

func (p *fakeSteer) state() (table []int, slots []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := range p.slots {
		slots = append(slots, n)
	}
	slices.Sort(slots)
	return slices.Clone(p.table), slots
}

// kernelTOML is a kernel-mode group on PORT.
const kernelTOML = `
[[worker]]
name = "web"
exec = "/bin/true"
amount = 4
sticky = true
dispatch = "kernel"
listen = ["127.0.0.1:PORT"]
`

// reusePortSockets opens n listening sockets in one SO_REUSEPORT group on
// a free loopback port, named as systemd names the instances' sockets.
func reusePortSockets(t *testing.T, n int) (int, []*os.File) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	var port int
	var files []*os.File
	for i := 1; i <= n; i++ {
		l, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		// Named as systemd names it, on a descriptor of its own (two
		// *os.File on one descriptor would close it twice).
		fd, err := unix.Dup(int(f.Fd()))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("instance-%d", i)))
	}
	return port, files
}

// kernelRig is a kernel-mode supervisor over a fake manager whose socket
// units are up, with a fake program.
func kernelRig(t *testing.T, n int, load func(adopt []*os.File) (steering, error), extra ...*os.File) (*rig, *storeRec) {
	t.Helper()
	port, files := reusePortSockets(t, n)
	rec := &storeRec{}
	r := newRig(t, strings.Replace(kernelTOML, "PORT", fmt.Sprint(port), 1), "web", func(f *fakeManager, o *Options) {
		o.Files = append(files, extra...)
		o.NotifyFiles = rec.store
		for i := 1; i <= n; i++ {
			f.set(units.Group{Name: "web"}.InstanceSocket(i), units.Active, "")
		}
	})
	r.s.loadSteer = func(adopt []*os.File, listeners int) (steering, error) { return load(adopt) }
	return r, rec
}

// storeRec records what went to the fd store.
type storeRec struct {
	mu    sync.Mutex
	names []string
}

func (s *storeRec) store(state string, files []*os.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = append(s.names, state)
	return nil
}

func (s *storeRec) stored() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.names)
}

func newFakeSteer(adopt []*os.File) *fakeSteer {
	p := &fakeSteer{slots: map[int]bool{}, id: 7}
	for _, f := range adopt {
		p.adopted = append(p.adopted, f.Name())
	}
	return p
}

// TestKernelTable: the table is rendezvous over the instances up whose
// sockets the supervisor holds; a stopped instance leaves it and its
// socket is released (slot cleared, socket unit stopped); one restarting
// keeps its buckets.
func TestKernelTable(t *testing.T) {
	var p *fakeSteer
	r, rec := kernelRig(t, 4, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil })
	r.run()
	r.waitAll()
	waitFor(t, r.n, "table of 4", func() bool { tb, _ := p.state(); return slices.Equal(tb, []int{1, 2, 3, 4}) })
	p.mu.Lock()
	attached := p.attached
	p.mu.Unlock()
	if _, slots := p.state(); !slices.Equal(slots, []int{1, 2, 3, 4}) || attached != 1 {
		t.Fatalf("slots %v, attached %d times", slots, attached)
	}
	if got := rec.stored(); len(got) != 1 || got[0] != "FDSTORE=1\nFDPOLL=0\nFDNAME=steer-prog-0" {
		t.Errorf("fd store: %q", got)
	}
	gs, err := r.client().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if gs.DispatchMode != "kernel" || gs.Kernel == nil || gs.Kernel.Steering != "sticky" || gs.Kernel.Adopted || gs.Dispatch != nil {
		t.Errorf("status: mode %q, kernel %+v, dispatch %+v", gs.DispatchMode, gs.Kernel, gs.Dispatch)
	}
	total := 0
	for _, is := range gs.Instances {
		total += is.Buckets
		if !is.InDispatch || is.Buckets == 0 {
			t.Errorf("instance %+v", is)
		}
	}
	if total != sticky.Buckets {
		t.Errorf("buckets add up to %d", total)
	}

	// A restart in progress (systemd's auto-restart: activating) keeps
	// the instance's buckets: its socket queues its connections.
	p.mu.Lock()
	tables := p.tables
	p.mu.Unlock()
	seen := func(a units.ActiveState) func() bool {
		return func() bool {
			r.s.mu.Lock()
			defer r.s.mu.Unlock()
			return r.s.state[2].ActiveState == a
		}
	}
	r.f.set(r.instance(2), units.Activating, "signal")
	waitFor(t, r.n, "the supervisor to see 2 activating", seen(units.Activating))
	r.f.set(r.instance(2), units.Active, "")
	waitFor(t, r.n, "the supervisor to see 2 active", seen(units.Active))
	p.mu.Lock()
	writes := p.tables
	p.mu.Unlock()
	if tb, _ := p.state(); !slices.Equal(tb, []int{1, 2, 3, 4}) || writes != tables {
		t.Errorf("a restart changed the table: %v (%d writes, %d before)", tb, writes, tables)
	}

	// Stopped: out of the table at once, its socket released and its
	// socket unit stopped.
	if err := r.f.Stop(context.Background(), r.instance(3)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r.n, "3 out", func() bool {
		tb, slots := p.state()
		return slices.Equal(tb, []int{1, 2, 4}) && slices.Equal(slots, []int{1, 2, 4})
	})
	waitFor(t, r.n, "socket unit of 3 stopped", func() bool {
		return slices.Contains(r.f.jobs(), "stop powerhouse-web@3.socket")
	})
	// The supervisor's copy is closed, or the socket would stay in the
	// reuseport group after systemd closed its own.
	if fd := r.s.o.Files[2].Fd(); fd != ^uintptr(0) {
		t.Errorf("instance 3's socket still open (fd %d)", fd)
	}
	waitFor(t, r.n, "STATUS= with 3 in the table", func() bool {
		return len(r.n.find("kernel steering over 3 instances")) > 0
	})
}

// TestKernelSocketUnitStopped: a socket unit that systemd stops (its
// instance still running, say) takes the supervisor's copy with it.
func TestKernelSocketUnitStopped(t *testing.T) {
	var p *fakeSteer
	r, _ := kernelRig(t, 2, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil })
	r.s.o.Config.Worker("web").Amount = 2
	r.s.amount = 2
	r.run()
	r.waitAll()
	r.f.set("powerhouse-web@2.socket", units.Inactive, "")
	waitFor(t, r.n, "2's socket released", func() bool {
		tb, slots := p.state()
		return slices.Equal(tb, []int{1}) && slices.Equal(slots, []int{1})
	})
}

// TestKernelSocketUnitRestarted: a socket unit restarted so fast that the
// watch sees it active again holds new sockets: the supervisor's copies
// are stale (in a slot, and in the group, with nobody accepting), so they
// go, and the supervisor restarts to take the new ones.
func TestKernelSocketUnitRestarted(t *testing.T) {
	var p *fakeSteer
	r, _ := kernelRig(t, 2, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil })
	r.s.amount = 2
	r.run()
	r.waitAll()
	waitFor(t, r.n, "table of 2", func() bool { tb, _ := p.state(); return slices.Equal(tb, []int{1, 2}) })
	r.f.mu.Lock()
	u := r.f.unit("powerhouse-web@2.socket")
	u.since = u.since.Add(time.Second)
	r.f.changed(u.st.Name)
	r.f.mu.Unlock()
	waitFor(t, r.n, "2's stale socket released", func() bool {
		tb, slots := p.state()
		return slices.Equal(tb, []int{1}) && slices.Equal(slots, []int{1})
	})
	if fd := r.s.o.Files[1].Fd(); fd != ^uintptr(0) {
		t.Errorf("instance 2's stale socket still open (fd %d)", fd)
	}
	waitFor(t, r.n, "a restart to take the new socket", func() bool {
		return slices.Contains(r.f.jobs(), "restart powerhouse@web.service")
	})
}

// TestKernelDegraded: a program that cannot be loaded leaves the group
// served by plain SO_REUSEPORT, and STATUS= and status say so and why.
func TestKernelDegraded(t *testing.T) {
	r, rec := kernelRig(t, 4, func([]*os.File) (steering, error) {
		return nil, fmt.Errorf("load program: %w", unix.EPERM)
	})
	var detached []string
	r.s.detachSteer = func(f *os.File) error { detached = append(detached, f.Name()); return unix.ENOENT }
	r.run()
	r.waitAll()
	want := "degraded: kernel steering off (the eBPF program cannot be loaded: load program: operation not permitted): plain SO_REUSEPORT, not sticky"
	waitFor(t, r.n, "STATUS= degraded", func() bool { return len(r.n.find(want)) > 0 })
	gs, err := r.client().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if gs.Kernel == nil || gs.Kernel.Steering != "degraded" || !strings.Contains(gs.Kernel.Degraded, "operation not permitted") {
		t.Errorf("status kernel %+v", gs.Kernel)
	}
	if len(rec.stored()) != 0 {
		t.Errorf("stored %v", rec.stored())
	}
	// Any program left attached by a supervisor before is taken off the
	// one listen address's group.
	if len(detached) != 1 {
		t.Errorf("detached through %v, want one socket", detached)
	}
}

// TestKernelAdopt: the program in the fd store is adopted, not loaded
// again, and not stored again; the instances running already are learnt
// before the table is written, which then never held only some of them
// (every client would have gone to the first instance seen).
func TestKernelAdopt(t *testing.T) {
	fd, err := unix.MemfdCreate("prog", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	var p *fakeSteer
	var loads [][]string
	r, rec := kernelRig(t, 4, func(adopt []*os.File) (steering, error) {
		p = newFakeSteer(adopt)
		loads = append(loads, p.adopted)
		return p, nil
	}, os.NewFile(uintptr(fd), "steer-prog-0"))
	for n := 1; n <= 4; n++ {
		r.f.set(r.instance(n), units.Active, "")
	}
	r.run()
	r.waitAll()
	if len(loads) != 1 || !slices.Equal(loads[0], []string{"steer-prog-0"}) {
		t.Errorf("loads %v", loads)
	}
	if len(rec.stored()) != 0 {
		t.Errorf("stored again: %v", rec.stored())
	}
	gs, err := r.client().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !gs.Kernel.Adopted || !slices.Equal(gs.Kernel.ProgramIDs, []uint32{7}) {
		t.Errorf("status kernel %+v", gs.Kernel)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, tb := range p.history {
		if !slices.Equal(tb, []int{1, 2, 3, 4}) {
			t.Errorf("tables written: %v, want only [1 2 3 4]", p.history)
			break
		}
	}
}

// TestKernelPickup: an instance started after the supervisor (a
// scale-up) has a socket the supervisor does not hold: it restarts itself
// to get it, once; a restart that did not bring it is not repeated.
func TestKernelPickup(t *testing.T) {
	var p *fakeSteer
	r, _ := kernelRig(t, 4, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil })
	r.run()
	r.waitAll()
	if _, err := r.client().Scale(context.Background(), 5, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r.n, "a restart of the supervisor", func() bool {
		return slices.Contains(r.f.jobs(), "restart powerhouse@web.service")
	})
	if tb, _ := p.state(); !slices.Equal(tb, []int{1, 2, 3, 4}) {
		t.Errorf("table %v: 5 has no socket of the supervisor's", tb)
	}
	b, err := os.ReadFile(r.s.pickupFile())
	if err != nil || string(b) != "[5]" {
		t.Errorf("pickup file %q, %v", b, err)
	}

	// The next supervisor did not get 5's socket either: it says so and
	// does not restart again.
	r2, _ := kernelRig(t, 4, func(adopt []*os.File) (steering, error) { return newFakeSteer(adopt), nil })
	if err := os.MkdirAll(r2.s.g.RuntimeDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r2.s.pickupFile(), b, 0o644); err != nil {
		t.Fatal(err)
	}
	r2.s.amount = 5
	r2.run()
	r2.waitAll()
	waitFor(t, r2.n, "five up", func() bool { up, _ := r2.s.upCount(); return up == 5 })
	if !r2.s.kern.gaveUp[5] {
		t.Error("5 not given up")
	}
	for i := range 3 {
		r2.s.kernelPickup(context.Background(), time.Now().Add(time.Duration(i)*2*pickupSettle))
	}
	if slices.Contains(r2.f.jobs(), "restart powerhouse@web.service") {
		t.Error("restarted again for a socket that does not come")
	}
}

// TestKernelStrayDescriptors: a descriptor the group cannot use (another
// name, a socket on an address the group does not have) is closed, and
// the group is steered with the others.
func TestKernelStrayDescriptors(t *testing.T) {
	_, other := reusePortSockets(t, 1) // another port: no listen address of the group
	sfd, err := unix.Dup(int(other[0].Fd()))
	other[0].Close()
	if err != nil {
		t.Fatal(err)
	}
	stray := os.NewFile(uintptr(sfd), "instance-4")
	fd, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	unknown := os.NewFile(uintptr(fd), "public")
	var p *fakeSteer
	r, _ := kernelRig(t, 3, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil }, stray, unknown)
	r.s.amount = 3
	r.run()
	r.waitAll()
	waitFor(t, r.n, "table of 3", func() bool { tb, _ := p.state(); return slices.Equal(tb, []int{1, 2, 3}) })
	if stray.Fd() != ^uintptr(0) || unknown.Fd() != ^uintptr(0) {
		t.Error("a stray descriptor was kept open")
	}
}

func TestInstanceOfFD(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		ok   bool
	}{
		{"instance-1", 1, true}, {"instance-1024", 1024, true}, {"instance-0", 0, false}, {"instance-01", 0, false},
		{"instance-1025", 0, false}, {"instance-", 0, false}, {"public", 0, false}, {"instance--1", 0, false},
	} {
		n, ok := instanceOfFD(tc.name)
		if n != tc.n || ok != tc.ok {
			t.Errorf("%q: %d %v", tc.name, n, ok)
		}
	}
}
