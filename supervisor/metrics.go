package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/sticky"
	"github.com/powerhouse/powerhouse/units"
)

// Metrics: each supervisor has a registry of its own (never the global
// default one) whose collectors read the live state when a scraper asks:
// the dispatcher's counters (sticky.Stats), the slots' states and
// systemd's NRestarts, the kernel's queues of the hand-off and listening
// sockets. Nothing is counted twice; the one thing kept here is the
// histogram of handover times, which nothing else records.

// Bounds of the metrics socket (0660: only root and the workers' group
// may connect, but a scrape must still never hold the supervisor up).
const (
	// metricsScrapeTimeout bounds one scrape, its D-Bus calls included.
	metricsScrapeTimeout = 5 * time.Second
	// metricsInFlight bounds the scrapes served at once; more get 503.
	metricsInFlight = 4
)

// statMetric is how one field of sticky.Stats is exposed. Fields of kind
// uint64 are counters, int gauges; a map keyed by instance gives a
// series per instance (label instance); a map keyed by string, or a
// struct of counters, a series per key (label Key, the struct's field
// names in snake case). Const labels let fields share a family (the
// PROXY rejects by reason).
type statMetric struct {
	Name, Help string
	Key        string            // label of a string-keyed map or a struct's fields
	Const      prometheus.Labels // fixed labels of this field's series
	Gauge      bool              // a uint64 that goes down too (open connections)
}

// statsMetrics maps every field of sticky.Stats to its metric. A test
// fails when a field is missing: a new counter in the dispatcher needs a
// line here, nothing else.
var statsMetrics = map[string]statMetric{
	"HandedOff":      {Name: "powerhouse_handed_off_total", Help: "Connections handed to a worker instance."},
	"PerInstance":    {Name: "powerhouse_instance_handed_off_total", Help: "Connections handed to this instance."},
	"StickyMiss":     {Name: "powerhouse_sticky_misses_total", Help: "Connections handed to another instance than their preferred one (its queue stayed full)."},
	"Dropped":        {Name: "powerhouse_dropped_total", Help: "Connections closed: no instance up, or none made room within the wait bound."},
	"ProxyErrors":    {Name: "powerhouse_proxy_rejects_total", Help: "PROXY protocol connections closed, by reason.", Const: prometheus.Labels{"reason": "bad_header"}},
	"ProxyUntrusted": {Name: "powerhouse_proxy_rejects_total", Help: "PROXY protocol connections closed, by reason.", Const: prometheus.Labels{"reason": "untrusted_peer"}},
	"ProxyBusy":      {Name: "powerhouse_proxy_rejects_total", Help: "PROXY protocol connections closed, by reason.", Const: prometheus.Labels{"reason": "busy"}},
	"Queued":         {Name: "powerhouse_instance_waiting_connections", Help: "Connections the dispatcher holds now, waiting for room in this instance's hand-off queue."},
	"QueueFull":      {Name: "powerhouse_queue_full_total", Help: "Times a connection found its instance's hand-off queue full."},
	"SendErrors":     {Name: "powerhouse_send_errors_total", Help: "Connections closed because their own hand-off failed."},
	"Redials":        {Name: "powerhouse_handoff_redials_total", Help: "Hand-off sockets re-connected because the instance's socket went away."},
	"AcceptErrors":   {Name: "powerhouse_accept_errors_total", Help: "Failed accept calls (each is retried)."},
	"AcceptPauses":   {Name: "powerhouse_accept_pauses_total", Help: "Times an accept loop stopped accepting until an instance had room (backpressure)."},
	"Held":           {Name: "powerhouse_held_connections", Help: "Connections held now by paused accept loops."},
	// Key affinity (affinity = "header:…", "cookie:…", "query:…").
	"KeyRouted":   {Name: "powerhouse_key_routed_total", Help: "Connections placed by the hash of their affinity key."},
	"TagRouted":   {Name: "powerhouse_tag_routed_total", Help: "Connections placed by the instance tag of a minted session id."},
	"Fallbacks":   {Name: "powerhouse_affinity_fallbacks_total", Help: "Connections without an affinity key, placed by the group's fallback."},
	"Spills":      {Name: "powerhouse_spills_total", Help: "Connections moved off their instance by balance_factor (bounded loads)."},
	"XFFIgnored":  {Name: "powerhouse_xff_ignored_total", Help: "X-Forwarded-For headers ignored: the peer is not in trusted_proxies."},
	"PeekRejects": {Name: "powerhouse_peek_rejects_total", Help: "Connections whose request head gave no key, by reason; they go by the fallback.", Key: "reason"},
	"Peeking":     {Name: "powerhouse_peeking_connections", Help: "Connections waiting now for their request head (bounded by the dispatcher's MaxPeeking)."},
	"Open":        {Name: "powerhouse_instance_open_connections", Help: "Connections handed to this instance and not yet reported closed by its worker.", Gauge: true},
	"Closed":      {Name: "powerhouse_instance_closed_total", Help: "Connections this instance's worker reported closed (report socket)."},
}

// statDesc is a statsMetrics entry made ready: its descriptor and how to
// read its field.
type statDesc struct {
	field string
	desc  *prometheus.Desc
	key   string
	gauge bool
}

func statDescs() []statDesc {
	t := reflect.TypeOf(sticky.Stats{})
	var out []statDesc
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		m, ok := statsMetrics[f.Name]
		if !ok {
			continue // TestStatsMetricsCoverEveryField says so
		}
		var labels []string
		switch f.Type.Kind() {
		case reflect.Map:
			if f.Type.Key().Kind() == reflect.Int {
				labels = []string{"instance"}
			} else {
				labels = []string{m.Key}
			}
		case reflect.Struct:
			labels = []string{m.Key}
		}
		out = append(out, statDesc{field: f.Name, key: m.Key, gauge: m.Gauge, desc: prometheus.NewDesc(m.Name, m.Help, labels, m.Const)})
	}
	return out
}

// collectStat sends the series of one Stats field.
func collectStat(ch chan<- prometheus.Metric, d statDesc, v reflect.Value) {
	one := func(x reflect.Value, labels ...string) {
		switch x.Kind() {
		case reflect.Uint64, reflect.Uint32, reflect.Uint:
			kind := prometheus.CounterValue
			if d.gauge {
				kind = prometheus.GaugeValue
			}
			ch <- prometheus.MustNewConstMetric(d.desc, kind, float64(x.Uint()), labels...)
		case reflect.Int, reflect.Int64, reflect.Int32:
			ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, float64(x.Int()), labels...)
		}
	}
	switch v.Kind() {
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			k := it.Key()
			var label string
			if k.Kind() == reflect.Int {
				label = strconv.FormatInt(k.Int(), 10)
			} else {
				label = fmt.Sprint(k.Interface())
			}
			one(it.Value(), label)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			one(v.Field(i), snake(v.Type().Field(i).Name))
		}
	default:
		one(v)
	}
}

// snake turns a Go field name into a label value: TooLarge → too_large.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

var (
	descWanted         = prometheus.NewDesc("powerhouse_instances_wanted", "Instances the group should run (amount).", nil, nil)
	descUp             = prometheus.NewDesc("powerhouse_instance_up", "1 when the instance's serving side runs (active or reloading).", []string{"instance", "unit"}, nil)
	descInDispatch     = prometheus.NewDesc("powerhouse_instance_in_dispatch", "1 when the dispatcher hands new connections to the instance.", []string{"instance"}, nil)
	descDraining       = prometheus.NewDesc("powerhouse_instance_draining", "1 while the instance's old side drains after a handover.", []string{"instance", "unit"}, nil)
	descRestarts       = prometheus.NewDesc("powerhouse_instance_restarts_total", "Automatic restarts of the instance's services, both sides (systemd's NRestarts).", []string{"instance"}, nil)
	descPID            = prometheus.NewDesc("powerhouse_instance_pid", "Main PID of the instance's serving side.", []string{"instance", "unit"}, nil)
	descQBytes         = prometheus.NewDesc("powerhouse_instance_handoff_queue_bytes", "Bytes (kernel accounting, per datagram overhead included) of hand-offs sent to the instance and not yet received by it: the dispatcher's socket's SIOCOUTQ.", []string{"instance"}, nil)
	descQLen           = prometheus.NewDesc("powerhouse_instance_handoff_queue_length", "Hand-offs (datagrams, each with one descriptor) sent to the instance and not yet received: handoff_queue_bytes over the bytes one hand-off costs (an estimate: Linux counts no datagrams for the sender).", []string{"instance"}, nil)
	descQLimit         = prometheus.NewDesc("powerhouse_handoff_queue_limit", "Datagrams a hand-off socket queues before a send blocks (net.unix.max_dgram_qlen).", nil, nil)
	descFDs            = prometheus.NewDesc("powerhouse_handoff_fds_in_flight", "Descriptors in flight over the hand-off sockets (sent, not received): the sum of handoff_queue_length.", nil, nil)
	descFDLimit        = prometheus.NewDesc("powerhouse_handoff_fds_in_flight_limit", "Descriptors a non-root sender's user may have in flight over unix sockets: the supervisor's RLIMIT_NOFILE (not enforced for root).", nil, nil)
	descBacklog        = prometheus.NewDesc("powerhouse_listener_backlog", "Connections in the listening socket's accept queue now.", []string{"listener"}, nil)
	descBacklogMax     = prometheus.NewDesc("powerhouse_listener_backlog_limit", "The listening socket's accept queue bound (Backlog=, capped by net.core.somaxconn).", []string{"listener"}, nil)
	descInstBacklog    = prometheus.NewDesc("powerhouse_instance_listener_backlog", "Kernel mode: connections in the accept queue of the instance's own listening socket now.", []string{"instance", "listener"}, nil)
	descInstBacklogMax = prometheus.NewDesc("powerhouse_instance_listener_backlog_limit", "Kernel mode: the accept queue bound of the instance's own listening socket (Backlog=).", []string{"instance", "listener"}, nil)
)

// metrics is a supervisor's registry and the one value it keeps.
type metrics struct {
	reg      *prometheus.Registry
	handover prometheus.Histogram
	stats    []statDesc
	// perDgram is what one hand-off costs in the sender's SIOCOUTQ
	// (probed once; 0 until then or when the probe failed).
	probe    sync.Once
	perDgram int
}

func newMetrics(s *Supervisor) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), stats: statDescs()}
	m.handover = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "powerhouse_handover_seconds",
		Help:    "Time from a handover's start of an instance's new side to that side being ready (reload, set).",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120},
	})
	r := prometheus.WrapRegistererWith(prometheus.Labels{"group": s.o.Group}, m.reg)
	// CPU seconds and open descriptors of the supervisor:
	// process_cpu_seconds_total over powerhouse_handed_off_total is
	// its CPU per connection.
	r.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.handover, supervisorCollector{s, m})
	return m
}

// Handler serves the registry: the Prometheus text format, or
// OpenMetrics to a scraper that asks for it.
func (m *metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		EnableOpenMetrics:   true,
		Timeout:             metricsScrapeTimeout,
		MaxRequestsInFlight: metricsInFlight,
		ErrorHandling:       promhttp.ContinueOnError,
	})
}

// Gatherer returns the registry (tests, powerhouse run).
func (s *Supervisor) Gatherer() prometheus.Gatherer { return s.m.reg }

// supervisorCollector reads the supervisor's state at scrape time.
type supervisorCollector struct {
	s *Supervisor
	m *metrics
}

func (c supervisorCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.m.stats {
		ch <- d.desc
	}
	for _, d := range []*prometheus.Desc{descWanted, descUp, descInDispatch, descDraining, descRestarts, descPID,
		descQBytes, descQLen, descQLimit, descFDs, descFDLimit, descBacklog, descBacklogMax, descInstBacklog, descInstBacklogMax} {
		ch <- d
	}
}

func (c supervisorCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	ctx, cancel := context.WithTimeout(context.Background(), metricsScrapeTimeout)
	defer cancel()
	s.mu.Lock()
	amount := s.amount
	type slot struct {
		st      units.UnitState
		pid     uint32
		sides   []string
		drained []string
	}
	slots := map[int]*slot{}
	for k, st := range s.sides {
		sl := slots[k.n]
		if sl == nil {
			sl = &slot{}
			slots[k.n] = sl
		}
		sl.sides = append(sl.sides, st.Name)
		if _, ok := s.draining[k]; ok {
			sl.drained = append(sl.drained, st.Name)
		}
	}
	for n, sl := range slots {
		sl.st, sl.pid = s.state[n], s.pids[n]
	}
	s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descWanted, prometheus.GaugeValue, float64(amount))
	for n, sl := range slots {
		in := strconv.Itoa(n)
		up := 0.0
		if sl.st.ActiveState.Running() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, in, sl.st.Name)
		if sl.pid != 0 {
			ch <- prometheus.MustNewConstMetric(descPID, prometheus.GaugeValue, float64(sl.pid), in, sl.st.Name)
		}
		for _, u := range sl.drained {
			ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, 1, in, u)
		}
		var restarts uint32
		for _, u := range sl.sides {
			if r, err := s.o.Manager.Restarts(ctx, u); err == nil {
				restarts += r
			}
		}
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(restarts), in)
	}
	if s.disp != nil {
		st := reflect.ValueOf(s.disp.Stats())
		for _, d := range s.m.stats {
			collectStat(ch, d, st.FieldByName(d.field))
		}
		for _, n := range s.disp.Up.Snapshot().IDs() {
			ch <- prometheus.MustNewConstMetric(descInDispatch, prometheus.GaugeValue, 1, strconv.Itoa(n))
		}
		s.collectHandoffQueues(ch)
	}
	s.collectBacklogs(ch)
	s.collectKernelBacklogs(ch)
}

// collectKernelBacklogs reports, in kernel mode, the accept queue of
// each instance's own socket (the supervisor holds a copy of each): the
// kernel picks the socket, so each instance has a queue of its own.
func (s *Supervisor) collectKernelBacklogs(ch chan<- prometheus.Metric) {
	k := s.kern
	if k == nil {
		return
	}
	w := s.worker()
	k.mu.Lock()
	defer k.mu.Unlock() // the copies are closed under it too
	for n, byAddr := range k.socks {
		for j, f := range byAddr {
			name := strconv.Itoa(j)
			if j < len(w.Listen) {
				name = w.Listen[j].Name
			}
			rc, err := f.SyscallConn()
			if err != nil {
				continue
			}
			var ti *unix.TCPInfo
			var terr error
			if err := rc.Control(func(fd uintptr) { ti, terr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) }); err != nil || terr != nil {
				continue
			}
			in := strconv.Itoa(n)
			ch <- prometheus.MustNewConstMetric(descInstBacklog, prometheus.GaugeValue, float64(ti.Unacked), in, name)
			ch <- prometheus.MustNewConstMetric(descInstBacklogMax, prometheus.GaugeValue, float64(ti.Sacked), in, name)
		}
	}
}

// collectHandoffQueues reports, per instance, what the dispatcher sent to
// its hand-off socket and the worker has not received yet. Linux gives no
// one a datagram count of a unix datagram socket's receive queue (the
// receiver's SIOCINQ is the size of the next datagram; sock_diag's
// queue figures are the same); the sender's SIOCOUTQ is the memory of
// its datagrams still queued at the receiver, which, divided by the cost
// of one hand-off, is their number. The dispatcher's sockets are the
// supervisor's own descriptors, found by their peer's path.
func (s *Supervisor) collectHandoffQueues(ch chan<- prometheus.Metric) {
	if qlen, err := readInt("/proc/sys/net/unix/max_dgram_qlen"); err == nil {
		ch <- prometheus.MustNewConstMetric(descQLimit, prometheus.GaugeValue, float64(qlen))
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
		ch <- prometheus.MustNewConstMetric(descFDLimit, prometheus.GaugeValue, float64(rl.Cur))
	}
	s.m.probe.Do(func() { s.m.perDgram = probeDatagramCost(s.worker()) })
	queues := handoffQueues(s.g)
	total := 0.0
	for n, b := range queues {
		in := strconv.Itoa(n)
		ch <- prometheus.MustNewConstMetric(descQBytes, prometheus.GaugeValue, float64(b), in)
		if s.m.perDgram > 0 {
			q := float64((b + s.m.perDgram/2) / s.m.perDgram)
			total += q
			ch <- prometheus.MustNewConstMetric(descQLen, prometheus.GaugeValue, q, in)
		}
	}
	if s.m.perDgram > 0 {
		ch <- prometheus.MustNewConstMetric(descFDs, prometheus.GaugeValue, total)
	}
}

// maxScanFDs bounds the descriptors looked at per scrape.
const maxScanFDs = 1 << 20

// handoffQueues returns, by instance, the SIOCOUTQ of each of this
// process's datagram sockets connected to a hand-off socket of g.
func handoffQueues(g units.Group) map[int]int {
	out := map[int]int{}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return out
	}
	defer d.Close()
	names, err := d.Readdirnames(maxScanFDs)
	if err != nil && len(names) == 0 {
		return out
	}
	dir := g.RuntimeDir()
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + name); err != nil || !strings.HasPrefix(l, "socket:") {
			continue
		}
		if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_DGRAM {
			continue
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			continue
		}
		ua, ok := sa.(*unix.SockaddrUnix)
		if !ok || filepath.Dir(ua.Name) != dir {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(ua.Name), ".sock"))
		if err != nil || g.HandoffPath(n) != ua.Name {
			continue
		}
		if q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err == nil {
			out[n] += q
		}
	}
	return out
}

// probeDatagramCost measures what one hand-off of w's first listener
// costs in the sender's SIOCOUTQ: a datagram of the same size, with one
// descriptor, sent over a socket pair. 0 when it cannot be measured.
func probeDatagramCost(w *config.Worker) int {
	name := "x"
	if len(w.Listen) > 0 {
		name = w.Listen[0].Name
	}
	hdr, err := (&handoff.Header{Name: name}).MarshalBinary()
	if err != nil {
		hdr = make([]byte, 16)
	}
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := unix.Sendmsg(p[0], hdr, unix.UnixRights(p[1]), nil, 0); err != nil {
		return 0
	}
	q, err := unix.IoctlGetInt(p[0], unix.SIOCOUTQ)
	if err != nil {
		return 0
	}
	return q
}

// collectBacklogs reports each TCP listener's accept queue and its bound
// (TCP_INFO of a listening socket: tcpi_unacked is the queue,
// tcpi_sacked the bound), on the duplicates watchListeners kept. Unix
// stream listeners are not reported: the kernel shows their queue only
// through sock_diag.
func (s *Supervisor) collectBacklogs(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock() // the descriptors stay open meanwhile
	for _, l := range s.watched {
		ti, err := unix.GetsockoptTCPInfo(l.fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, float64(ti.Unacked), l.name)
		ch <- prometheus.MustNewConstMetric(descBacklogMax, prometheus.GaugeValue, float64(ti.Sacked), l.name)
	}
}

// watchedListener is a duplicate of a TCP listener the dispatcher
// accepts on (which closes the inherited descriptor once it has its
// own), kept to read its accept queue.
type watchedListener struct {
	name string
	fd   int
}

// watchListeners keeps a duplicate of each TCP listener of ls.
func (s *Supervisor) watchListeners(ls []sticky.Listener) {
	for _, l := range ls {
		a, err := sockName(l.File)
		if err != nil {
			continue
		}
		if _, ok := a.(*net.TCPAddr); !ok {
			continue
		}
		rc, err := l.File.SyscallConn()
		if err != nil {
			continue
		}
		fd, derr := -1, error(nil)
		if err := rc.Control(func(x uintptr) { fd, derr = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
			continue
		}
		s.mu.Lock()
		s.watched = append(s.watched, watchedListener{name: l.Name, fd: fd})
		s.mu.Unlock()
	}
}

// unwatchListeners closes the duplicates.
func (s *Supervisor) unwatchListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.watched {
		unix.Close(l.fd)
	}
	s.watched = nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// listenMetrics binds the metrics socket, units.Group.MetricsPath, mode
// 0660, group-owned by the workers' default group (DefaultWorkerGroup,
// which the house-level metrics service joins) when the system has it:
// operators in that group read it without root, other users cannot
// connect. It is bound under a temporary name and renamed into place once
// its mode and owner are set, so that it is never reachable with
// looser ones.
func (s *Supervisor) listenMetrics() (*net.UnixListener, string, error) {
	p := s.g.MetricsPath()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, "", fmt.Errorf("metrics socket: %w", err)
	}
	tmp := p + ".new"
	for _, f := range []string{tmp, p} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("metrics socket: remove the stale %s: %w", f, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, "", fmt.Errorf("metrics socket: %w", err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, string, error) {
		l.Close()
		os.Remove(tmp)
		return nil, "", fmt.Errorf("metrics socket %s: %w", p, err)
	}
	readers := "this user only"
	if s.uid == 0 {
		readers = "root only (no group " + DefaultWorkerGroup + " on this system)"
		if gid, name, err := WorkerGroup(config.Service{}); err == nil {
			// Without CAP_CHOWN the supervisor gives the socket to a
			// group only as a member of it (SupplementaryGroups= lists
			// the workers' groups): otherwise it stays root's.
			if err := os.Chown(tmp, 0, gid); err == nil {
				readers = fmt.Sprintf("root and group %s (gid %d)", name, gid)
			} else {
				readers = fmt.Sprintf("root only (not a member of group %s: %v)", name, err)
			}
		}
	}
	if err := os.Chmod(tmp, 0o660); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fail(err)
	}
	return l, readers, nil
}

// serveMetrics serves the registry on l until ctx ends. A client gets a
// bounded time to send its request and to read the answer.
func (s *Supervisor) serveMetrics(ctx context.Context, l *net.UnixListener) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.m.Handler())
	mux.Handle("/", s.m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second,
		WriteTimeout: 2 * metricsScrapeTimeout, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8 << 10}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("metrics socket failed", "err", err)
	}
	os.Remove(s.g.MetricsPath())
}
