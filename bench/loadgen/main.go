// Command loadgen is the HTTP/1.1 load generator of PowerHouse's benchmark
// (bench/run.sh, docs/BENCHMARKS.md).
//
// It exists because wrk sends everything from 127.0.0.1, which pins any
// client-address-hashing dispatcher to one worker. loadgen binds its
// connections to many loopback source addresses (127.0.0.2, 127.0.0.3, …,
// round-robin), so a sticky row spreads over its instances as it would with
// real clients, and it reports which instances answered and whether each
// source address always reached the same one.
//
// It is deliberately small and cheap, since it shares the machine's cores
// with the servers it measures: one goroutine per connection, a fixed
// request written with one write, a response parser that reads the status
// line, Content-Length (or chunks) and Connection, and no allocation per
// request on the keep-alive path.
//
// Workloads:
//
//	loadgen -addr 127.0.0.1:8080 -conns 16 -keepalive=false   # a new connection per request
//	loadgen -addr 127.0.0.1:8080 -conns 64                    # keep-alive
//	loadgen -addr 127.0.0.1:8080 -conns 10000 -hold 5s -watch-pid N   # open, hold, measure RSS
//	loadgen -addr 127.0.0.1:8080 -rate 10000 -conns 4096               # connection storm, open loop
//
// With -rate, new connections are offered at that rate whatever happens to
// the earlier ones (an open loop, unlike the closed loop of -conns
// clients): each carries one request with "Connection: close". At most
// -conns are in flight; an offer that finds them all busy is not made and
// is counted as "missed" (the client, not the server, fell behind; the
// achieved rate says what got through). Latency is measured from the
// offer's scheduled time, so a stalled server is not hidden by a client
// that waited for it (no coordinated omission).
//
// With -keepalive=false every request carries "Connection: close"; the client
// reads the response and then waits for the server's FIN before closing, so
// the server, not the client, is the active closer and keeps the TIME_WAIT
// state: the client's ephemeral ports are freed at once. The sockets are
// bound with IP_BIND_ADDRESS_NO_PORT, so a port is chosen at connect time
// for the full 4-tuple, and each source address has its own ~28,000 ports.
//
// The result is one line on stdout of key=value pairs (rps, p50_ms, p99_ms,
// errors, requests, instances, sticky_sources, spread, and with -watch-pid
// the CPU and memory of that process over the measured window), and a human
// summary on stderr.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type options struct {
	addr      string
	host      string
	path      string
	duration  time.Duration
	warmup    time.Duration
	conns     int
	sources   int
	srcBase   net.IP
	keepalive bool
	timeout   time.Duration
	hold      time.Duration
	rate      float64
	watchPID  int
	workers   []int // -watch-workers
	label     string
	queryKey  string // -query-key
}

func main() {
	var o options
	var rawURL, base string
	flag.StringVar(&o.addr, "addr", "", "server `host:port` (path /); or use -url")
	flag.StringVar(&rawURL, "url", "", "server URL, http://host:port/path")
	flag.DurationVar(&o.duration, "duration", 4*time.Second, "measured time (with -hold: how long to hold the connections)")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "load before measuring, discarded")
	flag.IntVar(&o.conns, "conns", 16, "concurrent connections")
	flag.IntVar(&o.sources, "sources", 64, "bind source addresses from -source-base on, N of them, round-robin (0: let the kernel choose, 127.0.0.1)")
	flag.StringVar(&base, "source-base", "127.0.0.2", "first source address")
	flag.BoolVar(&o.keepalive, "keepalive", true, "keep connections open (false: a new connection per request, \"Connection: close\")")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-request timeout (counted as an error)")
	flag.DurationVar(&o.hold, "hold", 0, "hold mode: open -conns keep-alive connections, one request on each, keep them open this long while -watch-pid is sampled")
	flag.Float64Var(&o.rate, "rate", 0, "open loop: offer new connections (one request each) at this rate per second, at most -conns in flight")
	flag.IntVar(&o.watchPID, "watch-pid", 0, "report CPU time (utime+stime, /proc/PID/stat) over the measured window and VmRSS/VmHWM of this `pid`")
	var workers string
	flag.StringVar(&workers, "watch-workers", "", "comma-separated `pids` whose CPU time (utime+stime) over the measured window is reported together (the row's workers)")
	flag.StringVar(&o.label, "label", "", "copied into the result line")
	flag.StringVar(&o.queryKey, "query-key", "", "add a query parameter `name` whose value is fixed per source address (name=k0 from the first, name=k1 from the second, ...) to every request target, for a row that routes by it (affinity = \"query:NAME\")")
	flag.Parse()
	if err := o.parseWorkers(workers); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}

	if err := o.resolve(rawURL, base); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case o.hold > 0 && o.rate > 0:
		err = errors.New("-hold and -rate exclude each other")
	case o.hold > 0:
		err = runHold(ctx, &o)
	case o.rate > 0:
		err = runRate(ctx, &o)
	default:
		err = runLoad(ctx, &o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func (o *options) resolve(rawURL, base string) error {
	o.path = "/"
	switch {
	case rawURL != "" && o.addr != "":
		return errors.New("give -url or -addr, not both")
	case rawURL != "":
		u, err := url.Parse(rawURL)
		if err != nil {
			return fmt.Errorf("-url: %w", err)
		}
		if u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("-url %q: want http://host:port/path", rawURL)
		}
		o.addr = u.Host
		if _, _, err := net.SplitHostPort(o.addr); err != nil {
			o.addr = net.JoinHostPort(u.Host, "80")
		}
		if u.RequestURI() != "" {
			o.path = u.RequestURI()
		}
	case o.addr == "":
		return errors.New("-addr or -url is required")
	}
	o.host = o.addr
	if o.conns < 1 {
		return errors.New("-conns must be at least 1")
	}
	if o.rate < 0 || o.rate > maxRate || math.IsNaN(o.rate) {
		return fmt.Errorf("-rate must be from 0 to %d", maxRate)
	}
	if o.sources < 0 || o.sources > 65000 {
		return errors.New("-sources must be from 0 to 65000")
	}
	ip := net.ParseIP(base).To4()
	if ip == nil {
		return fmt.Errorf("-source-base %q: want an IPv4 address", base)
	}
	o.srcBase = ip
	if o.queryKey != "" && (len(o.queryKey) > maxQueryKey || strings.Trim(o.queryKey, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != "") {
		return fmt.Errorf("-query-key %q: want 1 to %d of A-Z a-z 0-9 . _ -", o.queryKey, maxQueryKey)
	}
	// Go raises the soft RLIMIT_NOFILE to the hard limit at start; say so
	// plainly when that is still not enough rather than fail on EMFILE.
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && uint64(o.conns)+64 > rl.Cur {
		return fmt.Errorf("-conns %d needs more open files than RLIMIT_NOFILE %d allows", o.conns, rl.Cur)
	}
	return nil
}

// maxQueryKey bounds -query-key's name.
const maxQueryKey = 64

// maxWatched bounds -watch-workers.
const maxWatched = 1024

func (o *options) parseWorkers(list string) error {
	if list == "" {
		return nil
	}
	for _, f := range strings.Split(list, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || pid < 1 {
			return fmt.Errorf("-watch-workers: %q is not a pid", f)
		}
		o.workers = append(o.workers, pid)
	}
	if len(o.workers) > maxWatched {
		return fmt.Errorf("-watch-workers: %d pids, at most %d", len(o.workers), maxWatched)
	}
	return nil
}

// workersTicks sums the CPU time of the -watch-workers processes.
func (o *options) workersTicks() (uint64, error) {
	var t uint64
	for _, pid := range o.workers {
		s, err := sampleProc(pid)
		if err != nil {
			return 0, err
		}
		t += s.cpuTicks
	}
	return t, nil
}

// source returns the i-th source address (i from 0).
func (o *options) source(i int) *net.TCPAddr {
	if o.sources == 0 {
		return nil
	}
	v := uint32(o.srcBase[0])<<24 | uint32(o.srcBase[1])<<16 | uint32(o.srcBase[2])<<8 | uint32(o.srcBase[3])
	v += uint32(i % o.sources)
	return &net.TCPAddr{IP: net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v))}
}

// dialers holds one net.Dialer per source address, made once.
func (o *options) dialers() []*net.Dialer {
	n := max(o.sources, 1)
	ds := make([]*net.Dialer, n)
	for i := range ds {
		d := &net.Dialer{Timeout: o.timeout}
		if a := o.source(i); a != nil {
			d.LocalAddr = a
			// Choose the port at connect(), for the whole 4-tuple, instead of
			// at bind(), where a port in use towards any peer is excluded.
			d.Control = func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				})
				if err != nil {
					return err
				}
				return serr
			}
		}
		ds[i] = d
	}
	return ds
}

func (o *options) request(close bool) []byte {
	return o.requestTo(o.path, close)
}

func (o *options) requestTo(target string, close bool) []byte {
	r := "GET " + target + " HTTP/1.1\r\nHost: " + o.host + "\r\n"
	if close {
		r += "Connection: close\r\n"
	}
	return []byte(r + "\r\n")
}

// keyedRequests returns, with -query-key, the request of each source
// address: the path with NAME=kI added for source I, so that a row routing
// by that key sees a fixed key per source (a deterministic run, and the
// sticky_sources check still means what it says); nil without -query-key.
func (o *options) keyedRequests(close bool) [][]byte {
	if o.queryKey == "" {
		return nil
	}
	sep := "?"
	if strings.Contains(o.path, "?") {
		sep = "&"
	}
	rs := make([][]byte, max(o.sources, 1))
	for i := range rs {
		rs[i] = o.requestTo(o.path+sep+o.queryKey+"=k"+strconv.Itoa(i), close)
	}
	return rs
}

// errKind classifies failures for the result line.
type errKind int

const (
	errDial errKind = iota
	errIO
	errTimeout
	errStatus
	errParse
	nErrKinds
)

var errNames = [nErrKinds]string{"dial", "io", "timeout", "status", "parse"}

// worker is the state of one connection slot; only its goroutine touches it
// until the run ends.
type worker struct {
	o      *options
	dial   []*net.Dialer
	req    []byte   // what roundTrip writes
	keyed  [][]byte // with -query-key: the request of each source (use)
	buf    []byte
	lat    []uint32 // µs, requests completed inside the window
	errs   [nErrKinds]uint64
	opened uint64 // connections opened inside the window
	served uint64 // requests completed inside the window
	intern map[string]int
	names  []string
	bySrc  [][]uint64 // [source][instance] responses
}

func newWorker(o *options, dial []*net.Dialer, req []byte) *worker {
	return &worker{
		o: o, dial: dial, req: req, buf: make([]byte, 16<<10),
		lat: make([]uint32, 0, 1<<14), intern: map[string]int{},
		bySrc: make([][]uint64, max(o.sources, 1)),
	}
}

// use makes the next round trips carry source src's request (its key).
func (w *worker) use(src int) {
	if w.keyed != nil {
		w.req = w.keyed[src]
	}
}

// window is the measured interval; requests completing inside it count.
type window struct{ start, end time.Time }

func (w window) in(t time.Time) bool { return !t.Before(w.start) && t.Before(w.end) }

// note records which instance answered a source.
func (w *worker) note(src int, inst []byte) {
	i, ok := w.intern[string(inst)]
	if !ok {
		i = len(w.names)
		w.names = append(w.names, string(inst))
		w.intern[w.names[i]] = i
	}
	s := w.bySrc[src]
	for len(s) <= i {
		s = append(s, 0)
	}
	s[i]++
	w.bySrc[src] = s
}

// run issues requests until the window ends. next hands out source indexes
// for new connections round-robin across all workers.
func (w *worker) run(ctx context.Context, win window, next *atomic.Uint64) {
	var c net.Conn
	src := 0
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for ctx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(win.end) {
			return
		}
		if c == nil {
			src = int(next.Add(1)-1) % len(w.dial)
			nc, err := w.dial[src].DialContext(ctx, "tcp", w.o.addr)
			if err != nil {
				if win.in(time.Now()) {
					w.errs[classify(err, errDial)]++
				}
				time.Sleep(time.Millisecond) // a refusing server must not make us spin
				continue
			}
			c = nc
			w.use(src)
			if win.in(t0) {
				w.opened++
			}
		}
		c.SetDeadline(t0.Add(w.o.timeout))
		res, err := w.roundTrip(c)
		t1 := time.Now()
		counted := win.in(t1)
		if err != nil {
			if counted {
				w.errs[classify(err, errIO)]++
			}
			c.Close()
			c = nil
			continue
		}
		if counted {
			w.served++
			w.lat = append(w.lat, uint32(min(t1.Sub(t0).Microseconds(), 1<<32-1)))
			if res.status < 200 || res.status > 299 {
				w.errs[errStatus]++
			}
			w.note(src, res.instance)
		}
		if res.close {
			// Let the server close first (its side keeps TIME_WAIT), then close.
			c.SetDeadline(time.Now().Add(w.o.timeout))
			c.Read(w.buf[:1])
			c.Close()
			c = nil
		}
	}
}

func classify(err error, def errKind) errKind {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errTimeout
	}
	if errors.Is(err, errBadResponse) {
		return errParse
	}
	return def
}

var errBadResponse = errors.New("bad response")

type response struct {
	status   int
	close    bool
	instance []byte // aliases worker.buf until the next round trip
}

// roundTrip writes the request and reads one response into w.buf.
func (w *worker) roundTrip(c net.Conn) (response, error) {
	var r response
	if _, err := c.Write(w.req); err != nil {
		return r, err
	}
	n, hdrEnd := 0, -1
	for hdrEnd < 0 {
		if n == len(w.buf) {
			return r, fmt.Errorf("%w: header larger than %d bytes", errBadResponse, len(w.buf))
		}
		m, err := c.Read(w.buf[n:])
		if m == 0 && err != nil {
			return r, err
		}
		start := max(n-3, 0)
		n += m
		if i := bytes.Index(w.buf[start:n], []byte("\r\n\r\n")); i >= 0 {
			hdrEnd = start + i + 4
		}
	}
	head := w.buf[:hdrEnd]
	// Status line: "HTTP/1.1 200 OK".
	if len(head) < 12 || !bytes.HasPrefix(head, []byte("HTTP/1.")) {
		return r, fmt.Errorf("%w: status line %q", errBadResponse, firstLine(head))
	}
	st, err := strconv.Atoi(string(head[9:12]))
	if err != nil {
		return r, fmt.Errorf("%w: status line %q", errBadResponse, firstLine(head))
	}
	r.status = st
	r.close = head[7] == '0' // HTTP/1.0 closes unless told otherwise; we never ask
	clen, chunked := -1, false
	lines := head[bytes.IndexByte(head, '\n')+1:]
	for len(lines) > 2 {
		i := bytes.IndexByte(lines, '\n')
		line := bytes.TrimRight(lines[:i], "\r")
		lines = lines[i+1:]
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case asciiEqualFold(k, "content-length"):
			if clen, err = strconv.Atoi(string(v)); err != nil || clen < 0 {
				return r, fmt.Errorf("%w: Content-Length %q", errBadResponse, v)
			}
		case asciiEqualFold(k, "transfer-encoding"):
			chunked = asciiContainsFold(v, "chunked")
		case asciiEqualFold(k, "connection"):
			if asciiContainsFold(v, "close") {
				r.close = true
			}
		}
	}
	var body []byte
	switch {
	case chunked:
		body, _, err = w.readChunked(c, hdrEnd, n)
	case clen >= 0:
		for n-hdrEnd < clen {
			if n == len(w.buf) {
				return r, fmt.Errorf("%w: body larger than the buffer", errBadResponse)
			}
			m, err := c.Read(w.buf[n:])
			if m == 0 && err != nil {
				return r, err
			}
			n += m
		}
		body = w.buf[hdrEnd : hdrEnd+clen]
	default: // no length: the body ends with the connection
		for {
			if n == len(w.buf) {
				return r, fmt.Errorf("%w: body larger than the buffer", errBadResponse)
			}
			m, err := c.Read(w.buf[n:])
			n += m
			if err != nil {
				break
			}
		}
		body, r.close = w.buf[hdrEnd:n], true
	}
	if err != nil {
		return r, err
	}
	r.instance = instanceOf(body)
	return r, nil
}

// readChunked reads a chunked body that starts at w.buf[off:n] and returns
// it, de-chunked in place.
func (w *worker) readChunked(c net.Conn, off, n int) ([]byte, int, error) {
	out := off // de-chunked bytes are written from here, behind the reading position
	pos := off
	fill := func(need int) error {
		for n < need {
			if n == len(w.buf) {
				return fmt.Errorf("%w: chunked body larger than the buffer", errBadResponse)
			}
			m, err := c.Read(w.buf[n:])
			if m == 0 && err != nil {
				return err
			}
			n += m
		}
		return nil
	}
	for {
		var i int
		for {
			if i = bytes.Index(w.buf[pos:n], []byte("\r\n")); i >= 0 {
				break
			}
			if err := fill(n + 1); err != nil {
				return nil, n, err
			}
		}
		szText, _, _ := bytes.Cut(w.buf[pos:pos+i], []byte(";"))
		sz, err := strconv.ParseUint(string(bytes.TrimSpace(szText)), 16, 31)
		if err != nil {
			return nil, n, fmt.Errorf("%w: chunk size %q", errBadResponse, szText)
		}
		pos += i + 2
		if err := fill(pos + int(sz) + 2); err != nil {
			return nil, n, err
		}
		if sz == 0 {
			// No trailers are expected; the final CRLF has been read.
			return w.buf[off:out], n, nil
		}
		out += copy(w.buf[out:], w.buf[pos:pos+int(sz)])
		pos += int(sz) + 2
	}
}

// instanceOf returns the "instance=..." word of a body (examples/hello),
// or the whole body without surrounding space (the peers' "hello from
// worker N").
func instanceOf(body []byte) []byte {
	if i := bytes.Index(body, []byte("instance=")); i >= 0 {
		v := body[i+len("instance="):]
		if j := bytes.IndexAny(v, " \r\n"); j >= 0 {
			v = v[:j]
		}
		return v
	}
	return bytes.TrimSpace(body)
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return bytes.TrimRight(b, "\r")
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if lower(b[i]) != s[i] {
			return false
		}
	}
	return true
}

func asciiContainsFold(b []byte, s string) bool {
	for i := 0; i+len(s) <= len(b); i++ {
		if asciiEqualFold(b[i:i+len(s)], s) {
			return true
		}
	}
	return false
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// procSample is what /proc says about the watched process.
type procSample struct {
	cpuTicks    uint64 // utime+stime, all threads
	rss, hwmKiB uint64
}

func sampleProc(pid int) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return s, err
	}
	// The command name (field 2) may hold spaces: fields count from its ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	s.cpuTicks = ut + st
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		k, v, _ := strings.Cut(line, ":")
		kib, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			s.rss = kib
		case "VmHWM":
			s.hwmKiB = kib
		}
	}
	return s, nil
}

// clkTck is USER_HZ, 100 on every Linux architecture Go supports.
const clkTck = 100

// result is what one run measured.
type result struct {
	requests, opened uint64
	rps              float64
	p50, p99, p999   float64 // ms
	errs             [nErrKinds]uint64
	spread           map[string]uint64
	sourcesUsed      int
	sourcesSticky    int
}

func (r *result) errTotal() uint64 {
	var t uint64
	for _, e := range r.errs {
		t += e
	}
	return t
}

func merge(ws []*worker, o *options, secs float64) *result {
	r := &result{spread: map[string]uint64{}}
	var lat []uint32
	bySrc := make([]map[string]uint64, max(o.sources, 1))
	for _, w := range ws {
		r.requests += w.served
		r.opened += w.opened
		for k, e := range w.errs {
			r.errs[k] += e
		}
		lat = append(lat, w.lat...)
		for s, counts := range w.bySrc {
			for i, n := range counts {
				if n == 0 {
					continue
				}
				if bySrc[s] == nil {
					bySrc[s] = map[string]uint64{}
				}
				bySrc[s][w.names[i]] += n
				r.spread[w.names[i]] += n
			}
		}
	}
	for _, m := range bySrc {
		if len(m) > 0 {
			r.sourcesUsed++
		}
		if len(m) == 1 {
			r.sourcesSticky++
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(int(p*float64(len(lat))), len(lat)-1)]) / 1000
	}
	r.p50, r.p99, r.p999 = pct(0.50), pct(0.99), pct(0.999)
	if secs > 0 {
		r.rps = float64(r.requests) / secs
	}
	return r
}

func (r *result) spreadString() string {
	keys := make([]string, 0, len(r.spread))
	for k := range r.spread {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		// Keep the line one token per value: bodies may hold spaces.
		fmt.Fprintf(&b, "%s:%d", strings.ReplaceAll(k, " ", "_"), r.spread[k])
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

func (r *result) errString() string {
	var parts []string
	for k, e := range r.errs {
		if e > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", errNames[k], e))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func runLoad(ctx context.Context, o *options) error {
	dial := o.dialers()
	req, keyed := o.request(!o.keepalive), o.keyedRequests(!o.keepalive)
	start := time.Now()
	win := window{start: start.Add(o.warmup), end: start.Add(o.warmup + o.duration)}
	ws := make([]*worker, o.conns)
	var next atomic.Uint64
	var wg sync.WaitGroup
	for i := range ws {
		ws[i] = newWorker(o, dial, req)
		ws[i].keyed = keyed
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			w.run(ctx, win, &next)
		}(ws[i])
	}
	w0, w1, p0, p1, werr, perr := o.sampleWindow(ctx, win)
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	secs := o.duration.Seconds()
	r := merge(ws, o, secs)

	mode := "ka"
	if !o.keepalive {
		mode = "close"
	}
	var line strings.Builder
	fmt.Fprintf(&line, "loadgen mode=%s label=%s rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d err_kinds=%s requests=%d conns_opened=%d instances=%d sticky_sources=%d/%d spread=%s duration_s=%g conns=%d sources=%d",
		mode, orDash(o.label), r.rps, r.p50, r.p99, r.p999, r.errTotal(), r.errString(), r.requests, r.opened,
		len(r.spread), r.sourcesSticky, r.sourcesUsed, r.spreadString(), secs, o.conns, o.sources)
	if o.watchPID > 0 {
		if perr != nil {
			fmt.Fprintf(&line, " pid_error=%q", perr.Error())
		} else {
			cpuMS := float64(p1.cpuTicks-p0.cpuTicks) * 1000 / clkTck
			fmt.Fprintf(&line, " pid=%d pid_cpu_ms=%.0f pid_cpu_us_per_conn=%s pid_cpu_us_per_req=%s pid_rss_kib=%d pid_hwm_kib=%d",
				o.watchPID, cpuMS, perUnit(cpuMS*1000, r.opened), perUnit(cpuMS*1000, r.requests), p1.rss, p1.hwmKiB)
		}
	}
	o.appendWorkers(&line, w0, w1, werr, r)
	fmt.Println(line.String())
	fmt.Fprintf(os.Stderr, "%s %s, %d conns from %d source address(es), %v (+%v warm-up): %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors (%s); %d connections opened; instances answering: %s; sources that always reached the same instance: %d of %d\n",
		o.addr, map[bool]string{true: "keep-alive", false: "new connection per request"}[o.keepalive],
		o.conns, max(o.sources, 1), o.duration, o.warmup, r.rps, r.p50, r.p99, r.errTotal(), r.errString(),
		r.opened, r.spreadString(), r.sourcesSticky, r.sourcesUsed)
	return nil
}

// sampleWindow samples the watched process and workers at the window's
// edges.
func (o *options) sampleWindow(ctx context.Context, win window) (w0, w1 uint64, p0, p1 procSample, werr, perr error) {
	if o.watchPID == 0 && len(o.workers) == 0 {
		return
	}
	sample := func() (uint64, procSample, error, error) {
		var p procSample
		var perr error
		if o.watchPID > 0 {
			p, perr = sampleProc(o.watchPID)
		}
		w, werr := o.workersTicks()
		return w, p, werr, perr
	}
	select {
	case <-time.After(time.Until(win.start)):
	case <-ctx.Done():
	}
	w0, p0, werr, perr = sample()
	select {
	case <-time.After(time.Until(win.end)):
	case <-ctx.Done():
	}
	var werr1, perr1 error
	w1, p1, werr1, perr1 = sample()
	return w0, w1, p0, p1, errors.Join(werr, werr1), errors.Join(perr, perr1)
}

// appendWorkers adds the workers' CPU over the window to a result line.
func (o *options) appendWorkers(line *strings.Builder, w0, w1 uint64, werr error, r *result) {
	if len(o.workers) == 0 {
		return
	}
	if werr != nil {
		fmt.Fprintf(line, " workers_error=%q", werr.Error())
		return
	}
	cpuMS := float64(w1-w0) * 1000 / clkTck
	fmt.Fprintf(line, " workers=%d workers_cpu_ms=%.0f workers_cpu_us_per_conn=%s workers_cpu_us_per_req=%s",
		len(o.workers), cpuMS, perUnit(cpuMS*1000, r.opened), perUnit(cpuMS*1000, r.requests))
}

func perUnit(total float64, n uint64) string {
	if n == 0 {
		return "NA"
	}
	return strconv.FormatFloat(total/float64(n), 'f', 2, 64)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(s, " ", "_")
}

// runHold opens o.conns keep-alive connections, makes one request on each,
// keeps them all open for o.hold and samples o.watchPID meanwhile.
func runHold(ctx context.Context, o *options) error {
	dial := o.dialers()
	req, keyed := o.request(false), o.keyedRequests(false)
	const openers = 64 // parallel dials: fast, without a SYN flood on the backlog
	conns := make([]net.Conn, o.conns)
	ws := make([]*worker, openers)
	var next atomic.Uint64
	var wg sync.WaitGroup
	t0 := time.Now()
	for g := range ws {
		w := newWorker(o, dial, req)
		w.keyed = keyed
		ws[g] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < o.conns && ctx.Err() == nil; i += openers {
				src := int(next.Add(1)-1) % len(dial)
				c, err := dial[src].DialContext(ctx, "tcp", o.addr)
				if err != nil {
					w.errs[classify(err, errDial)]++
					continue
				}
				w.opened++
				w.use(src)
				c.SetDeadline(time.Now().Add(o.timeout))
				t := time.Now()
				res, err := w.roundTrip(c)
				if err != nil || res.close {
					if err != nil {
						w.errs[classify(err, errIO)]++
					}
					c.Close()
					continue
				}
				w.served++
				w.lat = append(w.lat, uint32(time.Since(t).Microseconds()))
				w.note(src, res.instance)
				c.SetDeadline(time.Time{})
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	openTime := time.Since(t0)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r := merge(ws, o, 0)
	held := 0
	for _, c := range conns {
		if c != nil {
			held++
		}
	}
	var s procSample
	var perr error
	if o.watchPID > 0 {
		// Let the dispatcher settle (GC, freed buffers) before reading it.
		select {
		case <-time.After(o.hold):
		case <-ctx.Done():
			return ctx.Err()
		}
		s, perr = sampleProc(o.watchPID)
	} else {
		select {
		case <-time.After(o.hold):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Every connection must still be usable: one more request on each.
	stale := 0
	var mu sync.Mutex
	for g := 0; g < openers; g++ {
		w := newWorker(o, dial, req)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < len(conns); i += openers {
				c := conns[i]
				if c == nil {
					continue
				}
				c.SetDeadline(time.Now().Add(o.timeout))
				if res, err := w.roundTrip(c); err != nil || res.status != 200 {
					mu.Lock()
					stale++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	var line strings.Builder
	fmt.Fprintf(&line, "loadgen mode=hold label=%s held=%d wanted=%d still_serving=%d errors=%d err_kinds=%s open_s=%.2f p50_ms=%.3f p99_ms=%.3f instances=%d sticky_sources=%d/%d spread=%s sources=%d",
		orDash(o.label), held, o.conns, held-stale, r.errTotal(), r.errString(), openTime.Seconds(), r.p50, r.p99,
		len(r.spread), r.sourcesSticky, r.sourcesUsed, r.spreadString(), o.sources)
	if o.watchPID > 0 {
		if perr != nil {
			fmt.Fprintf(&line, " pid_error=%q", perr.Error())
		} else {
			fmt.Fprintf(&line, " pid=%d pid_rss_kib=%d pid_hwm_kib=%d pid_cpu_ms=%d", o.watchPID, s.rss, s.hwmKiB, s.cpuTicks*1000/clkTck)
		}
	}
	fmt.Println(line.String())
	fmt.Fprintf(os.Stderr, "%s: %d of %d keep-alive connections open (opened in %.2f s) from %d source address(es), held %v, %d still serving after it; instances: %s\n",
		o.addr, held, o.conns, openTime.Seconds(), max(o.sources, 1), o.hold, held-stale, r.spreadString())
	return nil
}

// maxRate bounds -rate: beyond it the client's own scheduling is the limit.
const maxRate = 1_000_000

// runRate offers new connections at o.rate per second (open loop) for the
// warm-up and the window; each carries one request with "Connection:
// close". o.conns workers are the in-flight bound: an offer that finds none
// free is counted as missed. Offers scheduled inside the window count.
func runRate(ctx context.Context, o *options) error {
	rr, err := rate(ctx, o)
	if err != nil {
		return err
	}
	r, secs := rr.result, o.duration.Seconds()
	offered, missed := rr.offered, rr.missed
	w0, w1, p0, p1, werr, perr := rr.w0, rr.w1, rr.p0, rr.p1, rr.werr, rr.perr
	var line strings.Builder
	fmt.Fprintf(&line, "loadgen mode=rate label=%s offered_rps=%.1f rps=%.1f offered=%d missed=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d err_kinds=%s requests=%d conns_opened=%d instances=%d sticky_sources=%d/%d spread=%s duration_s=%g inflight_max=%d sources=%d",
		orDash(o.label), float64(offered)/secs, r.rps, offered, missed, r.p50, r.p99, r.p999, r.errTotal(), r.errString(), r.requests, r.opened,
		len(r.spread), r.sourcesSticky, r.sourcesUsed, r.spreadString(), secs, o.conns, o.sources)
	if o.watchPID > 0 {
		if perr != nil {
			fmt.Fprintf(&line, " pid_error=%q", perr.Error())
		} else {
			cpuMS := float64(p1.cpuTicks-p0.cpuTicks) * 1000 / clkTck
			fmt.Fprintf(&line, " pid=%d pid_cpu_ms=%.0f pid_cpu_us_per_conn=%s pid_rss_kib=%d pid_hwm_kib=%d",
				o.watchPID, cpuMS, perUnit(cpuMS*1000, r.opened), p1.rss, p1.hwmKiB)
		}
	}
	o.appendWorkers(&line, w0, w1, werr, r)
	fmt.Println(line.String())
	fmt.Fprintf(os.Stderr, "%s new connections offered at %.0f/s (open loop, at most %d in flight) from %d source address(es), %v (+%v warm-up): %.0f/s answered, %d offers missed (all in flight), p50 %.2f ms, p99 %.2f ms, %d errors (%s); instances answering: %s\n",
		o.addr, o.rate, o.conns, max(o.sources, 1), o.duration, o.warmup, r.rps, missed, r.p50, r.p99, r.errTotal(), r.errString(), r.spreadString())
	return nil
}

// rateResult is what rate measured.
type rateResult struct {
	*result
	offered, missed uint64
	w0, w1          uint64
	p0, p1          procSample
	werr, perr      error
}

// rate is runRate's measurement.
func rate(ctx context.Context, o *options) (*rateResult, error) {
	dial := o.dialers()
	req, keyed := o.request(true), o.keyedRequests(true)
	free := make(chan *worker, o.conns)
	ws := make([]*worker, o.conns)
	for i := range ws {
		ws[i] = &worker{o: o, dial: dial, req: req, keyed: keyed, buf: make([]byte, 4<<10), intern: map[string]int{},
			bySrc: make([][]uint64, max(o.sources, 1))}
		free <- ws[i]
	}
	start := time.Now()
	win := window{start: start.Add(o.warmup), end: start.Add(o.warmup + o.duration)}
	total := int64((o.warmup + o.duration).Seconds() * o.rate)
	interval := float64(time.Second) / o.rate
	var wg sync.WaitGroup
	var offered, missed uint64
	sampled := make(chan struct{})
	var w0, w1 uint64
	var p0, p1 procSample
	var werr, perr error
	go func() {
		defer close(sampled)
		w0, w1, p0, p1, werr, perr = o.sampleWindow(ctx, win)
	}()
	var src uint64
	for i := int64(0); i < total && ctx.Err() == nil; {
		now := time.Now()
		// Every offer due by now is made now; then sleep to the next one.
		for ; i < total; i++ {
			at := start.Add(time.Duration(float64(i) * interval))
			if at.After(now) {
				time.Sleep(at.Sub(now)) // the schedule is the clock: nothing else to wait on
				break
			}
			counted := win.in(at)
			if counted {
				offered++
			}
			var w *worker
			select {
			case w = <-free:
			default:
				if counted {
					missed++
				}
				continue
			}
			s := int(src % uint64(len(dial)))
			src++
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.offer(ctx, at, s, counted)
				free <- w
			}()
		}
	}
	wg.Wait()
	<-sampled
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return &rateResult{result: merge(ws, o, o.duration.Seconds()), offered: offered, missed: missed,
		w0: w0, w1: w1, p0: p0, p1: p1, werr: werr, perr: perr}, nil
}

// offer makes one scheduled connection: dial, one request, wait for the
// server's close. Latency counts from the scheduled time at.
func (w *worker) offer(ctx context.Context, at time.Time, src int, counted bool) {
	c, err := w.dial[src].DialContext(ctx, "tcp", w.o.addr)
	if err != nil {
		if counted {
			w.errs[classify(err, errDial)]++
		}
		return
	}
	defer c.Close()
	w.use(src)
	if counted {
		w.opened++
	}
	c.SetDeadline(time.Now().Add(w.o.timeout))
	res, err := w.roundTrip(c)
	t1 := time.Now()
	if err != nil {
		if counted {
			w.errs[classify(err, errIO)]++
		}
		return
	}
	if counted {
		w.served++
		w.lat = append(w.lat, uint32(min(t1.Sub(at).Microseconds(), 1<<32-1)))
		if res.status < 200 || res.status > 299 {
			w.errs[errStatus]++
		}
		w.note(src, res.instance)
	}
	// Let the server close first (its side keeps TIME_WAIT), then close.
	c.Read(w.buf[:1])
}
