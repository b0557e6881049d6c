package supervisor

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/sticky"
)

// TestStatsMetricsCoverEveryField: every field of sticky.Stats has a
// metric (a new dispatcher counter needs its line in statsMetrics), and
// every line names a field that exists.
func TestStatsMetricsCoverEveryField(t *testing.T) {
	tp := reflect.TypeOf(sticky.Stats{})
	for i := 0; i < tp.NumField(); i++ {
		f := tp.Field(i)
		m, ok := statsMetrics[f.Name]
		if !ok {
			t.Errorf("sticky.Stats.%s has no metric in statsMetrics", f.Name)
			continue
		}
		if (f.Type.Kind() == reflect.Struct || f.Type.Kind() == reflect.Map && f.Type.Key().Kind() != reflect.Int) && m.Key == "" {
			t.Errorf("sticky.Stats.%s: a map or struct needs the Key of its label", f.Name)
		}
		counter := f.Type.Kind() == reflect.Uint64 || f.Type.Kind() == reflect.Map && f.Type.Elem().Kind() == reflect.Uint64 ||
			f.Type.Kind() == reflect.Struct
		counter = counter && !m.Gauge
		if counter != strings.HasSuffix(m.Name, "_total") {
			t.Errorf("sticky.Stats.%s: %s: counters, and only they, end in _total", f.Name, m.Name)
		}
	}
	for name := range statsMetrics {
		if _, ok := tp.FieldByName(name); !ok {
			t.Errorf("statsMetrics names %s, which sticky.Stats does not have", name)
		}
	}
}

func TestHumanRate(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want string
	}{{0, "0"}, {0.4, "0"}, {12.3, "12"}, {999, "999"}, {1234, "1.2k"}, {9940, "9.9k"}, {45_600, "46k"}, {1_300_000, "1.3M"}} {
		if got := FormatRate(tc.in); got != tc.want {
			t.Errorf("FormatRate(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// scrape gets the exposition of the metrics socket at path and parses it
// with Prometheus' own text parser.
func scrape(t *testing.T, path string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
	resp, err := c.Get("http://metrics/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape: parse: %v", err)
	}
	return fams
}

// value returns the value of the series of family name whose labels
// include want, and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
series:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestMetricsEndpoint: a sticky group over a real TCP listener and a real
// hand-off socket whose worker does not read yet. The load generator's
// N connections are, per the scrape parsed with expfmt: handed off (N),
// to instance 1 (N), and in flight in its hand-off queue (N datagrams, N
// descriptors); once the worker received them the queue reads 0. The
// socket is 0660, root's and the workers' group's; STATUS= is one line
// in the new format.
func TestMetricsEndpoint(t *testing.T) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // f keeps it listening
	toml := strings.Replace(strings.Replace(apiTOML, `listen = ["127.0.0.1:9"]`, `sticky = true
listen = ["`+addr+`"]`, 1), "amount = 3", "amount = 1", 1)
	r := newRig(t, toml, "api", func(fm *fakeManager, o *Options) { o.Files = append(o.Files, f) })
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

	// The load generator: N connections from one source, counted.
	const n = 8 // within net.unix.max_dgram_qlen (10 by default): all queue in the kernel
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams = scrape(t, r.s.g.MetricsPath())
		if v, _ := value(fams, "powerhouse_handed_off_total", nil); v == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling a counter with a deadline
	}
	g := map[string]string{"group": "api"}
	in1 := map[string]string{"group": "api", "instance": "1"}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"powerhouse_handed_off_total", g, n},
		{"powerhouse_instance_handed_off_total", in1, n},
		{"powerhouse_instance_handoff_queue_length", in1, n},
		{"powerhouse_handoff_fds_in_flight", g, n},
		{"powerhouse_dropped_total", g, 0},
		{"powerhouse_proxy_rejects_total", map[string]string{"group": "api", "reason": "untrusted_peer"}, 0},
		{"powerhouse_instance_up", in1, 1},
		{"powerhouse_instance_in_dispatch", in1, 1},
		{"powerhouse_instances_wanted", g, 1},
		{"powerhouse_instance_restarts_total", in1, 0},
		{"powerhouse_listener_backlog", map[string]string{"group": "api", "listener": addr}, 0},
	} {
		if v, ok := value(fams, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	for _, name := range []string{"powerhouse_handoff_queue_limit", "powerhouse_handoff_fds_in_flight_limit", "powerhouse_listener_backlog_limit", "process_open_fds"} {
		if v, ok := value(fams, name, g); !ok || v <= 0 {
			t.Errorf("%s = %v (present %v), want > 0", name, v, ok)
		}
	}
	if b, _ := value(fams, "powerhouse_instance_handoff_queue_bytes", in1); b <= 0 {
		t.Errorf("queue bytes %v", b)
	}
	if fams["powerhouse_handover_seconds"] == nil {
		t.Error("no powerhouse_handover_seconds")
	}

	// The worker takes every connection: the queue empties.
	rc, _ := h.SyscallConn()
	for i := 0; i < n; i++ {
		var fd int
		var rerr error
		var hdr handoff.Header
		h.SetReadDeadline(time.Now().Add(10 * time.Second))
		rc.Read(func(s uintptr) bool {
			fd, rerr = handoff.Receive(int(s), &hdr)
			return rerr == nil || !strings.Contains(rerr.Error(), "resource temporarily unavailable")
		})
		if rerr != nil {
			t.Fatalf("hand-off %d: %v", i, rerr)
		}
		syscall.Close(fd)
	}
	fams = scrape(t, r.s.g.MetricsPath())
	if v, ok := value(fams, "powerhouse_instance_handoff_queue_length", in1); !ok || v != 0 {
		t.Errorf("queue after the worker received all: %v (present %v)", v, ok)
	}
	if v, _ := value(fams, "powerhouse_handoff_fds_in_flight", g); v != 0 {
		t.Errorf("fds in flight after the worker received all: %v", v)
	}

	// The socket: 0660, the supervisor's and the workers' group's.
	fi, err := os.Stat(r.s.g.MetricsPath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("metrics socket mode %v, want socket 0660", fi.Mode())
	}
	st := fi.Sys().(*syscall.Stat_t)
	wantGID := os.Getegid()
	if os.Geteuid() == 0 {
		wantGID = 0
		if gid, _, err := WorkerGroup(r.s.w.Service); err == nil && r.s.w.Service.Group == "" && r.s.w.Service.User == "" {
			wantGID = gid
		}
	}
	if int(st.Uid) != os.Geteuid() || int(st.Gid) != wantGID {
		t.Errorf("metrics socket owned by %d:%d, want %d:%d", st.Uid, st.Gid, os.Geteuid(), wantGID)
	}

	// STATUS=: one line, "1/1 up · R conn/s · 0 misses".
	re := regexp.MustCompile(`^STATUS=1/1 up · [0-9.]+[kM]? conn/s · 0 misses$`)
	waitFor(t, r.n, "STATUS= in the new format", func() bool {
		for _, s := range r.n.find("STATUS=1/1 up") {
			if re.MatchString(s) {
				return true
			}
		}
		return false
	})
}

// TestKernelBacklogMetrics: in kernel mode each instance's own listening
// socket has its accept queue; connections nobody accepts yet show there,
// per instance, and add up to what the client opened.
func TestKernelBacklogMetrics(t *testing.T) {
	var p *fakeSteer
	r, _ := kernelRig(t, 4, func(adopt []*os.File) (steering, error) { p = newFakeSteer(adopt); return p, nil })
	r.run()
	r.waitAll()
	a, err := sockName(r.s.o.Files[0])
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", a.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	var total, limit float64
	waitFor(t, r.n, "every connection in an accept queue", func() bool {
		fams, err := r.s.Gatherer().Gather()
		if err != nil {
			t.Fatal(err)
		}
		total, limit = 0, 0
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				switch f.GetName() {
				case "powerhouse_instance_listener_backlog":
					total += m.GetGauge().GetValue()
				case "powerhouse_instance_listener_backlog_limit":
					limit = max(limit, m.GetGauge().GetValue())
				}
			}
		}
		return total == n
	})
	if limit <= 0 {
		t.Errorf("backlog limit %v", limit)
	}
}

// gathered returns what the supervisor's registry gathers now, by name.
func gathered(t *testing.T, s *Supervisor) map[string]*dto.MetricFamily {
	t.Helper()
	list, err := s.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range list {
		out[f.GetName()] = f
	}
	return out
}
