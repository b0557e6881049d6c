package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/supervisor"
)

// scripted arrivals: at[i] new connections on the i-th call after the
// baseline; none once the script ends, or always when forever is set.
type scripted struct {
	at      []uint64
	i       int
	forever uint64
	err     error
}

func (s *scripted) New() (uint64, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.i == 0 {
		s.i++
		return 0, nil // the baseline
	}
	s.i++
	if s.i-2 < len(s.at) {
		return s.at[s.i-2], nil
	}
	return s.forever, nil
}

// TestQuietWait drives quietWait with a clock that its sleep advances
// (the seam the brief asks for: the real clock would make the test as
// slow as the periods it checks).
func TestQuietWait(t *testing.T) {
	busy := func(polls int) []uint64 {
		out := make([]uint64, polls)
		for i := range out {
			out[i] = 2
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		arr      *scripted
		timeout  time.Duration
		cancelAt time.Duration
		want     string // "quiet", "timeout", "canceled", "error"
		at       time.Duration
		recent   uint64
	}{
		{name: "no traffic: one quiet period", arr: &scripted{}, want: "quiet", at: 5 * time.Second},
		{name: "traffic for 3s, then none", arr: &scripted{at: busy(30)}, want: "quiet", at: 8 * time.Second},
		{name: "one late connection restarts the period", arr: &scripted{at: append(make([]uint64, 39), 1)}, want: "quiet", at: 9 * time.Second},
		{name: "never quiet: timeout", arr: &scripted{forever: 1}, timeout: 30 * time.Second, want: "timeout", at: 30 * time.Second, recent: 50},
		{name: "no timeout: waits past 30s", arr: &scripted{at: busy(400)}, want: "quiet", at: 45 * time.Second},
		{name: "interrupted", arr: &scripted{forever: 1}, cancelAt: 2 * time.Second, want: "canceled", at: 2 * time.Second},
		{name: "source fails", arr: &scripted{err: errors.New("sock_diag: EPERM")}, want: "error", at: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC)
			now := t0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var lines []string
			q := quietWait{quiet: 5 * time.Second, timeout: tc.timeout, poll: 100 * time.Millisecond, arrivals: tc.arr,
				now: func() time.Time { return now },
				sleep: func(ctx context.Context, d time.Duration) error {
					if tc.cancelAt > 0 && now.Sub(t0) >= tc.cancelAt {
						cancel()
					}
					if ctx.Err() != nil {
						return ctx.Err()
					}
					now = now.Add(d)
					return nil
				},
				progress: func(s string) { lines = append(lines, s) }}
			err := q.run(ctx)
			var te *quietTimeout
			got := "quiet"
			switch {
			case errors.As(err, &te):
				got = "timeout"
				if te.recent != tc.recent {
					t.Errorf("recent = %d, want %d", te.recent, tc.recent)
				}
			case errors.Is(err, context.Canceled):
				got = "canceled"
			case err != nil:
				got = "error"
			}
			if got != tc.want {
				t.Fatalf("run = %v (%s), want %s", err, got, tc.want)
			}
			if d := now.Sub(t0); d != tc.at {
				t.Errorf("ended at %v, want %v", d, tc.at)
			}
			if got == "quiet" && (len(lines) == 0 || lines[len(lines)-1] != "no new connection for 5s") {
				t.Errorf("progress = %q", lines)
			}
			// A line a second at most, none missing.
			if max := int(now.Sub(t0)/time.Second) + 1; len(lines) > max || tc.at >= 2*time.Second && len(lines) < max-2 {
				t.Errorf("%d progress lines in %v: %q", len(lines), now.Sub(t0), lines)
			}
		})
	}
}

// TestCookieArrivals counts real loopback connections through the
// kernel's socket table: new ones once, whatever their state later
// (TIME_WAIT after the server closes first keeps the cookie), not those
// to another port.
func TestCookieArrivals(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	a := &cookieArrivals{list: tcpConns, ports: map[uint16]bool{}}
	a.add(config.Listener{Network: "tcp", Address: l.Addr().String()})
	// want adds up what New says until it reaches n or a second has
	// passed (the server's half of a loopback connection appears when
	// the client's last ACK has been processed, a moment after Dial).
	want := func(what string, n uint64) {
		t.Helper()
		var got uint64
		for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
			m, err := a.New()
			if err != nil {
				t.Fatal(err)
			}
			if got += m; got >= n && (n > 0 || time.Now().After(deadline.Add(-900*time.Millisecond))) || time.Now().After(deadline) {
				break
			}
		}
		if got != n {
			t.Errorf("%s: %d new, want %d", what, got, n)
		}
	}
	want("baseline", 0)
	var served []net.Conn
	dial := func(addr string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for i := 0; i < 3; i++ {
		dial(l.Addr().String())
	}
	want("three dialled, in the accept queue", 3)
	for i := 0; i < 3; i++ {
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		served = append(served, s)
	}
	want("the same three, accepted", 0)
	dial(other.Addr().String())
	want("one to another port", 0)
	served[0].Close() // the server closes first: TIME_WAIT on its side
	want("one closed", 0)
	dial(l.Addr().String())
	want("one more", 1)
}

func TestCookieArrivalsMatch(t *testing.T) {
	a := &cookieArrivals{ports: map[uint16]bool{}}
	a.add(config.Listener{Network: "tcp", Address: "127.0.0.1:80"})
	a.add(config.Listener{Network: "tcp", Address: ":81"})
	a.add(config.Listener{Network: "tcp", Address: "[::]:82"})
	for _, tc := range []struct {
		local string
		want  bool
	}{
		{"127.0.0.1:80", true}, {"127.0.0.2:80", false}, {"10.0.0.1:81", true}, {"[::1]:81", true},
		{"[2001:db8::1]:82", true}, {"127.0.0.1:83", false},
	} {
		if got := a.match(netip.MustParseAddrPort(tc.local)); got != tc.want {
			t.Errorf("match(%s) = %v, want %v", tc.local, got, tc.want)
		}
	}
}

// TestDispatchArrivals reads a hand-off supervisor's counters: deltas,
// a restart's fresh counters, a missing file.
func TestDispatchArrivals(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dispatch.json")
	a := &dispatchArrivals{path: p}
	publish := func(handed, dropped uint64) {
		var ds supervisor.DispatchState
		ds.HandedOff, ds.Dropped = handed, dropped
		b, _ := json.Marshal(ds)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name string
		do   func()
		want uint64
	}{
		{"no supervisor yet", func() {}, 0},
		{"baseline", func() { publish(100, 1) }, 0},
		{"more", func() { publish(110, 2) }, 11},
		{"same", func() {}, 0},
		{"restarted", func() { publish(4, 0) }, 4},
	} {
		step.do()
		n, err := a.New()
		if err != nil || n != step.want {
			t.Errorf("%s: %d, %v; want %d", step.name, n, err, step.want)
		}
	}
}

// TestDrainVerb: drain, again, undo, again, in a runtime directory of
// the test's; flags anywhere; misuse refused.
func TestDrainVerb(t *testing.T) {
	root := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "ph.toml")
	if err := os.WriteFile(cfg, []byte("health = \"127.0.0.1:9990\"\n[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(root, "drain.json")
	for _, step := range []struct {
		args     []string
		code     int
		out      string
		draining bool
	}{
		{[]string{"drain", "--user", "--config", cfg}, 0, "drain: draining since", true},
		{[]string{"--user", "drain", "--config=" + cfg}, 0, "drain: already draining since", true},
		{[]string{"drain", "--undo", "--user", "--config", cfg}, 0, "drain: ended (draining since", false},
		{[]string{"drain", "--config", cfg, "--undo", "--user"}, 0, "drain: not draining: nothing to undo", false},
		{[]string{"drain", "--user", "--undo", "--wait"}, ExitUsage, "--undo and --wait: choose one", false},
		{[]string{"drain", "--user", "--quiet", "2s"}, ExitUsage, "--quiet and --timeout go with --wait", false},
		{[]string{"drain", "--user", "--wait", "--quiet", "1ms"}, ExitUsage, "want 100ms to 1h", false},
		{[]string{"drain", "--user", "now"}, ExitUsage, "takes no arguments", false},
	} {
		code, stdout, stderr := runIn(t, root, step.args...)
		out := stdout + stderr
		if code != step.code || !strings.Contains(out, step.out) {
			t.Errorf("%s: exit %d %q; want %d and %q", strings.Join(step.args, " "), code, out, step.code, step.out)
		}
		if step.code == 0 && strings.Contains(out, "health endpoint 127.0.0.1:9990") != (step.out != "drain: not draining: nothing to undo") {
			t.Errorf("%s: %q does not name the endpoint", strings.Join(step.args, " "), out)
		}
		_, err := os.Stat(state)
		if (err == nil) != step.draining {
			t.Errorf("%s: state file there: %v, want %v", strings.Join(step.args, " "), err == nil, step.draining)
		}
	}
}

// TestDrainState: the state file is written whole, readable by all, and
// holds when the drain began.
func TestDrainState(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run", "drain.json")
	since := time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC)
	if err := writeDrain(p, drainState{Since: since}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("%v %v", fi.Mode(), err)
	}
	st, ok, err := readDrain(p)
	if err != nil || !ok || !st.Since.Equal(since) {
		t.Errorf("readDrain = %v %v %v", st, ok, err)
	}
	os.WriteFile(p, []byte("{"), 0o644)
	if _, ok, err := readDrain(p); !ok || err == nil {
		t.Errorf("a broken file: draining %v, err %v; want draining with an error", ok, err)
	}
}

// TestMaxArrivals: two sources that see the same connections count them
// once; either one's activity counts.
func TestMaxArrivals(t *testing.T) {
	a := maxArrivals{&scripted{at: []uint64{3, 0, 0}}, &scripted{at: []uint64{0, 0, 2}}}
	for i, want := range []uint64{0, 3, 0, 2, 0} {
		if n, err := a.New(); err != nil || n != want {
			t.Errorf("poll %d: %d %v, want %d", i, n, err, want)
		}
	}
}

// TestHouseArrivals: every group's addresses go to the socket tables
// (TCP and unix), hand-off groups' counters too; a child group has none.
func TestHouseArrivals(t *testing.T) {
	c, err := config.Parse("/x.toml", []byte(`
[[worker]]
name = "web"
exec = "/w"
sticky = true
listen = ["127.0.0.1:8080", "/run/web.sock"]
[[worker]]
name = "api"
exec = "/a"
listen = [8081, "/run/api.sock"]
[[worker]]
name = "bg"
type = "child"
exec = "/b"
`))
	if err != nil {
		t.Fatal(err)
	}
	m := houseArrivals(c, false, "/r").(maxArrivals)
	if len(m) != 3 {
		t.Fatalf("%d sources, want dispatch counters and the TCP and unix tables", len(m))
	}
	if d, ok := m[0].(*dispatchArrivals); !ok || d.path != "/r/web/dispatch.json" {
		t.Errorf("first source %#v", m[0])
	}
	if ca, ok := m[1].(*cookieArrivals); !ok || !ca.ports[8080] || !ca.ports[8081] || len(ca.ports) != 2 {
		t.Errorf("TCP source %#v", m[1])
	}
	if ua, ok := m[2].(*unixArrivals); !ok || !ua.paths["/run/web.sock"] || !ua.paths["/run/api.sock"] || len(ua.paths) != 2 {
		t.Errorf("unix source %#v", m[2])
	}
}

// TestUnixArrivals counts real connections to a unix listener through
// the kernel's unix socket table: queued and accepted ones once, not
// those to another listener.
func TestUnixArrivals(t *testing.T) {
	dir := t.TempDir()
	p, q := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := net.Listen("unix", q)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	a := &unixArrivals{list: unixConns, paths: map[string]bool{p: true}}
	want := func(what string, n uint64) {
		t.Helper()
		got, err := a.New()
		if err != nil {
			t.Fatal(err)
		}
		if got != n {
			t.Errorf("%s: %d new, want %d", what, got, n)
		}
	}
	dial := func(path string) net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	want("baseline", 0)
	first := dial(p)
	dial(p)
	want("two dialled, in the accept queue", 2)
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want("one of them accepted", 0)
	first.Close()
	want("its client gone, the server's end still open", 0)
	dial(q)
	want("one to another listener", 0)
	dial(p)
	want("one more", 1)
}

// TestDrainWaitInterrupted: Ctrl-C during --wait exits 130 and says the
// house is still draining and serving; the drain stays.
func TestDrainWaitInterrupted(t *testing.T) {
	root := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "ph.toml")
	if err := os.WriteFile(cfg, []byte("health = \"127.0.0.1:9990\"\n[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\nlisten = [\"127.0.0.1:9991\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var o, e strings.Builder
	code := (&env{ctx: ctx, stdout: &o, stderr: &e, argv0: "powerhouse", runtimeRoot: root}).run([]string{"powerhouse", "drain", "--user", "--config", cfg, "--wait"})
	if code != ExitInterrupted || !strings.Contains(e.String(), "interrupted: the house stays draining and keeps serving; it is not stopped") {
		t.Errorf("exit %d\n%s", code, e.String())
	}
	if _, err := os.Stat(filepath.Join(root, "drain.json")); err != nil {
		t.Errorf("the drain did not stay: %v", err)
	}
}
