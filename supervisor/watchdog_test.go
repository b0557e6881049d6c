package supervisor

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/units"
)

func TestLiveness(t *testing.T) {
	const period = time.Second
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name  string
		steps []struct {
			at    time.Duration // since t0
			main  time.Duration // main loop's last check-in, since t0
			beats []uint64
		}
		want string // of the last step
	}{
		{name: "idle", want: "", steps: []struct {
			at, main time.Duration
			beats    []uint64
		}{{0, 0, []uint64{4}}, {400 * time.Millisecond, 300 * time.Millisecond, []uint64{4}}, {800 * time.Millisecond, 700 * time.Millisecond, []uint64{4}}}},
		{name: "busy dispatching", want: "", steps: []struct {
			at, main time.Duration
			beats    []uint64
		}{{0, 0, []uint64{5}}, {400 * time.Millisecond, 300 * time.Millisecond, []uint64{7}}, {800 * time.Millisecond, 700 * time.Millisecond, []uint64{9}}}},
		{name: "main loop wedged", want: "main loop last went round 600ms ago", steps: []struct {
			at, main time.Duration
			beats    []uint64
		}{{0, 0, []uint64{4}}, {600 * time.Millisecond, 0, []uint64{6}}}},
		{name: "dispatch wedged", want: "dispatch loop 1 inside one dispatch for 600ms", steps: []struct {
			at, main time.Duration
			beats    []uint64
		}{{0, 0, []uint64{2, 5}}, {300 * time.Millisecond, 300 * time.Millisecond, []uint64{4, 5}}, {900 * time.Millisecond, 900 * time.Millisecond, []uint64{6, 5}}}},
		{name: "dispatch wedged, not yet long", want: "", steps: []struct {
			at, main time.Duration
			beats    []uint64
		}{{0, 0, []uint64{5}}, {300 * time.Millisecond, 300 * time.Millisecond, []uint64{5}}, {700 * time.Millisecond, 700 * time.Millisecond, []uint64{5}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lv liveness
			var got string
			for _, s := range tc.steps {
				got = lv.check(t0.Add(s.at), period, t0.Add(s.main), s.beats)
			}
			if got != tc.want {
				t.Errorf("check = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWatchdogGating: WATCHDOG=1 goes out while both loops live, and
// stops when the dispatch loop is wedged or when the main loop is stuck
// in a call systemd does not answer.
func TestWatchdogGating(t *testing.T) {
	r := newRig(t, apiTOML, "api", func(f *fakeManager, o *Options) { o.Watchdog = 200 * time.Millisecond })
	var beat atomic.Uint64
	r.s.beats = func() []uint64 { return []uint64{beat.Load()} }
	r.run()
	r.waitAll()
	pings := func() int { return len(r.n.find("WATCHDOG=1")) }
	waitFor(t, r.n, "WATCHDOG=1", func() bool { return pings() >= 3 })
	// A dispatch loop inside one dispatch for good.
	beat.Store(7)
	// The watchdog needs to see the same odd beat for half a period,
	// at checks a third of a period apart: at most a period.
	time.Sleep(250 * time.Millisecond)
	n := pings()
	time.Sleep(400 * time.Millisecond)
	if got := pings(); got != n {
		t.Errorf("%d WATCHDOG=1 sent while the dispatch loop was wedged", got-n)
	}
	beat.Store(8)
	waitFor(t, r.n, "WATCHDOG=1 again", func() bool { return pings() > n })
	// The main loop stuck in a call: systemd does not answer.
	r.f.mu.Lock()
	r.f.stall = make(chan struct{})
	r.f.mu.Unlock()
	r.f.set(r.instance(1), units.Active, "") // wakes the main loop: State stalls
	time.Sleep(250 * time.Millisecond)
	n = pings()
	time.Sleep(400 * time.Millisecond)
	if got := pings(); got != n {
		t.Errorf("%d WATCHDOG=1 sent while the main loop was stuck", got-n)
	}
	close(r.f.stall)
	waitFor(t, r.n, "WATCHDOG=1 once the call returned", func() bool { return pings() > n })
}

// TestStickyGroup: a sticky group's supervisor takes the public socket,
// says ready once an instance is up, hands a connection to it, and
// reports the dispatch counters in Status.
func TestStickyGroup(t *testing.T) {
	dir, err := os.MkdirTemp("", "pub")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	pub := filepath.Join(dir, "pub.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: pub, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // f keeps it listening
	toml := strings.Replace(strings.Replace(apiTOML, `listen = ["127.0.0.1:9"]`, `sticky = true
listen = ["`+pub+`"]`, 1), "amount = 3", "amount = 1", 1)
	r := newRig(t, toml, "api", func(fm *fakeManager, o *Options) { o.Files = append(o.Files, f) })
	// The instance's hand-off socket, as systemd would hold it.
	if err := os.MkdirAll(r.s.g.RuntimeDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: r.s.g.HandoffPath(1), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r.run()
	r.waitAll()
	c, err := net.Dial("unix", pub)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h.SetReadDeadline(time.Now().Add(10 * time.Second))
	rc, _ := h.SyscallConn()
	var fd int
	var rerr error
	var hdr handoff.Header
	rc.Read(func(s uintptr) bool {
		fd, rerr = handoff.Receive(int(s), &hdr)
		return rerr == nil || !strings.Contains(rerr.Error(), "resource temporarily unavailable")
	})
	if rerr != nil {
		t.Fatalf("no hand-off: %v", rerr)
	}
	os.NewFile(uintptr(fd), "conn").Close()
	var gs GroupStatus
	waitFor(t, r.n, "the hand-off counted", func() bool {
		gs, err = r.client().Status(context.Background())
		return err == nil && gs.Dispatch != nil && gs.Dispatch.HandedOff == 1
	})
	if !gs.Sticky || len(gs.Instances) != 1 || !gs.Instances[0].InDispatch || gs.Instances[0].HandedOff != 1 {
		t.Errorf("status %+v", gs)
	}
	waitFor(t, r.n, "dispatch.json", func() bool {
		b, err := os.ReadFile(r.s.g.DispatchStatePath())
		return err == nil && strings.Contains(string(b), `"handed_off":1`)
	})
}
