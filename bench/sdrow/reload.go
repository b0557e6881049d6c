package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/powerhouse/powerhouse/internal/helloclient"
	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// reloadOptions are the reload mode's: the load held across the reload.
type reloadOptions struct {
	long    int           // long-lived connections (hello's line-echo)
	sources int           // sources of the stream of new connections
	period  time.Duration // a request per source, a line per long-lived connection
	steady  time.Duration // the steady-state window before the reload
	hold    time.Duration // how long the long-lived connections stay open after the reload returned
}

func (r *reloadOptions) check() error {
	switch {
	case r.long < 0 || r.long > 10000:
		return fmt.Errorf("-long %d: want 0..10000", r.long)
	case r.sources < 1 || r.sources > 250:
		return fmt.Errorf("-sources %d: want 1..250", r.sources)
	case r.period < 10*time.Millisecond || r.period > 10*time.Second:
		return fmt.Errorf("-period %v: want 10ms..10s", r.period)
	case r.steady < time.Second || r.steady > 5*time.Minute:
		return fmt.Errorf("-steady %v: want 1s..5m", r.steady)
	case r.hold < 0 || r.hold > 5*time.Minute:
		return fmt.Errorf("-hold %v: want 0..5m", r.hold)
	}
	return nil
}

// streamSrc and longSrc are the source addresses: the stream's
// 127.0.0.2 and up, the long-lived connections' 127.0.1.2 and up (then
// 127.0.2.2, ...). All of 127/8 is local on Linux.
func streamSrc(i int) string { return fmt.Sprintf("127.0.0.%d", 2+i) }
func longSrc(i int) string   { return fmt.Sprintf("127.0.%d.%d", 1+i/250, 2+i%250) }

// reloadResult is what the reload mode measures; line() prints it.
type reloadResult struct {
	dispatch                 string
	slots, long              int
	cut, drained, eventCut   int
	failed, requests         int
	p99Steady, p99Reload     time.Duration
	reload, drains           time.Duration
	readyMS                  []string
	missingEvents, fieldless int
}

func (r reloadResult) line() string {
	// The drain counts come from every slot's event, or they are NA.
	eventCut, drained := strconv.Itoa(r.eventCut), strconv.Itoa(r.drained)
	if r.fieldless > 0 || r.missingEvents > 0 {
		eventCut, drained = "NA", "NA"
	}
	return fmt.Sprintf("reload dispatch=%s slots=%d long=%d cut=%d event_cut=%s drained=%s failed=%d requests=%d p99_steady_ms=%.2f p99_reload_ms=%.2f reload_s=%.2f drains_s=%.2f ready_ms=%s missing_events=%d events_without_counts=%d",
		r.dispatch, r.slots, r.long, r.cut, eventCut, drained, r.failed, r.requests,
		ms(r.p99Steady), ms(r.p99Reload), r.reload.Seconds(), r.drains.Seconds(), strings.Join(r.readyMS, ","), r.missingEvents, r.fieldless)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// reloadUnderLoad measures `systemctl reload` of the house's sticky group
// under load: a stream of new connections from r.sources addresses (a
// GET / every r.period from each: open loop per source, so that latency
// is not hidden by a slower pace) and r.long long-lived connections (a
// line every r.period each). The steady state is the r.steady before the
// reload; "during" runs from the reload's start until every old process
// has drained and exited. The long-lived connections close r.hold after
// the reload returned: those the house closed before are cut.
func reloadUnderLoad(ctx context.Context, box *sdbox.Box, port int, group units.Group, slots int, dispatch string, r reloadOptions) (reloadResult, error) {
	res := reloadResult{dispatch: dispatch, slots: slots, long: r.long}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	stream := startStream(addr, r.sources, r.period)
	defer stream.stop()
	long, err := holdLong(ctx, addr, r.long, r.period)
	if err != nil {
		return res, err
	}
	defer long.stop()

	steadyFrom := time.Now()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(r.steady): // the measurement window
	}
	start := time.Now()
	if out, err := box.Systemctl(ctx, "reload", group.SupervisorUnit()); err != nil {
		return res, fmt.Errorf("systemctl reload: %w: %s", err, out)
	}
	res.reload = time.Since(start)
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(r.hold): // the long-lived connections' remaining life
	}
	long.stop()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		busy, err := draining(ctx, box, group, slots)
		if err != nil {
			return res, err
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			return res, errors.New("old processes still draining after 2 minutes")
		}
		time.Sleep(50 * time.Millisecond) // poll: the state is systemd's
	}
	drainsEnd := time.Now()
	res.drains = drainsEnd.Sub(start)
	stream.stop()

	steady, during := stream.window(steadyFrom, start), stream.window(start, drainsEnd)
	res.p99Steady, res.p99Reload = p99(steady), p99(during)
	res.failed, res.requests = stream.failed(), stream.count()
	res.cut = long.cut()

	evs, err := reloadEvents(ctx, box, group, slots)
	if err != nil {
		return res, err
	}
	for n := 1; n <= slots; n++ {
		e, ok := evs[n]
		if !ok {
			res.missingEvents++
			res.readyMS = append(res.readyMS, "NA")
			continue
		}
		res.readyMS = append(res.readyMS, cmp.Or(e["ready_ms"], "NA"))
		d, derr := strconv.Atoi(e["drained"])
		c, cerr := strconv.Atoi(e["cut"])
		if derr != nil || cerr != nil {
			res.fieldless++
			continue
		}
		res.drained += d
		res.eventCut += c
	}
	return res, nil
}

// draining tells whether a side of any slot is still stopping or starting.
func draining(ctx context.Context, box *sdbox.Box, group units.Group, slots int) (bool, error) {
	var names []string
	for n := 1; n <= slots; n++ {
		names = append(names, group.InstanceSide(n, units.SideA), group.InstanceSide(n, units.SideB))
	}
	out, err := box.Systemctl(ctx, append([]string{"show", "-p", "ActiveState", "--value"}, names...)...)
	if err != nil {
		return false, fmt.Errorf("systemctl show: %w: %s", err, out)
	}
	for _, st := range strings.Fields(string(out)) {
		if st == "deactivating" || st == "activating" {
			return true, nil
		}
	}
	return false, nil
}

// reloadEvents returns the group's last worker.reload event of each slot
// (POWERHOUSE_ fields, lower-cased without the prefix), waiting up to 10 s
// for journald to have them all.
func reloadEvents(ctx context.Context, box *sdbox.Box, group units.Group, slots int) (map[int]map[string]string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := box.Run(ctx, "journalctl", "--no-pager", "-o", "json", "POWERHOUSE_EVENT=worker.reload", "POWERHOUSE_GROUP="+group.Name)
		if err != nil {
			return nil, fmt.Errorf("journalctl: %w: %s", err, out)
		}
		evs := map[int]map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var raw map[string]any
			if json.Unmarshal(sc.Bytes(), &raw) != nil {
				continue
			}
			e := map[string]string{}
			for k, v := range raw {
				if s, ok := v.(string); ok && strings.HasPrefix(k, "POWERHOUSE_") {
					e[strings.ToLower(strings.TrimPrefix(k, "POWERHOUSE_"))] = s
				}
			}
			if n, err := strconv.Atoi(e["instance"]); err == nil {
				evs[n] = e
			}
		}
		if len(evs) >= slots || time.Now().After(deadline) {
			return evs, nil
		}
		time.Sleep(100 * time.Millisecond) // poll: journald has no "flushed" to wait for
	}
}

// sample is one request of the stream.
type sample struct {
	at   time.Time
	took time.Duration
	err  error
}

type stream struct {
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []sample
}

func startStream(addr string, sources int, period time.Duration) *stream {
	s := &stream{done: make(chan struct{})}
	url := "http://" + addr + "/"
	for i := range sources {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c := helloclient.New(streamSrc(i), false)
			time.Sleep(time.Duration(i) * period / time.Duration(sources)) // spread the sources over the period
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				at := time.Now()
				_, err := get(c, url)
				s.mu.Lock()
				s.samples = append(s.samples, sample{at: at, took: time.Since(at), err: err})
				s.mu.Unlock()
				select {
				case <-s.done:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return s
}

func get(c *http.Client, url string) (helloclient.Reply, error) {
	return helloclient.Get(context.Background(), c, url)
}

func (s *stream) stop() { s.once.Do(func() { close(s.done) }); s.wg.Wait() }

func (s *stream) window(from, to time.Time) []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w []sample
	for _, x := range s.samples {
		if !x.at.Before(from) && x.at.Before(to) {
			w = append(w, x)
		}
	}
	return w
}

func (s *stream) failed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, x := range s.samples {
		if x.err != nil {
			n++
		}
	}
	return n
}

func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.samples)
}

func p99(ss []sample) time.Duration {
	if len(ss) == 0 {
		return 0
	}
	d := make([]time.Duration, 0, len(ss))
	for _, s := range ss {
		d = append(d, s.took)
	}
	slices.Sort(d)
	return d[(len(d)*99+99)/100-1]
}

// longLived holds the long-lived connections.
type longLived struct {
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
	cuts  atomic.Int64
	lines atomic.Int64
}

// holdLong opens n line-echo connections and keeps a line going on each
// every period until stop; it returns once every one has had its first
// echo.
func holdLong(ctx context.Context, addr string, n int, period time.Duration) (*longLived, error) {
	l := &longLived{done: make(chan struct{})}
	errs := make(chan error, n)
	for i := range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			e, err := helloclient.DialEcho(dctx, longSrc(i), addr)
			cancel()
			if err == nil {
				_, err = e.Say("first", 10*time.Second)
			}
			errs <- err
			if err != nil {
				return
			}
			defer e.Close()
			time.Sleep(time.Duration(i) * period / time.Duration(n)) // spread the lines over the period
			tick := time.NewTicker(period)
			defer tick.Stop()
			for k := 0; ; k++ {
				select {
				case <-l.done:
					return
				case <-tick.C:
				}
				if _, err := e.Say("line "+strconv.Itoa(k), 10*time.Second); err != nil {
					l.cuts.Add(1)
					return
				}
				l.lines.Add(1)
			}
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			l.stop()
			return nil, fmt.Errorf("long-lived connection: %w", err)
		}
	}
	return l, nil
}

func (l *longLived) stop() { l.once.Do(func() { close(l.done) }); l.wg.Wait() }

func (l *longLived) cut() int { return int(l.cuts.Load()) }
