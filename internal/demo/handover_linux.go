package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/internal/helloclient"
	"github.com/powerhouse/powerhouse/units"
)

// The reload screen's long-lived connections: examples/hello's line-echo
// (a hijacked connection, as a WebSocket is), one per address from
// clientAddr(longFrom), a line every linePeriod each.
const (
	longConns  = 24
	longFrom   = clients + 8 // after the stickiness table's and the load's addresses
	linePeriod = 100 * time.Millisecond
)

// side is one side of a slot: its unit and main process.
type side struct {
	unit  string
	pid   uint32
	state units.UnitState
}

// slot is an instance slot seen from systemd: the side serving, and the
// side draining (an old process after a handover), if any.
type slot struct {
	serving, draining side
}

// slotOf reads both sides of instance n.
func (d *demo) slotOf(ctx context.Context, n int) (slot, error) {
	var s slot
	for _, sd := range []units.Side{units.SideA, units.SideB} {
		u := units.Group{Name: group}.InstanceSide(n, sd)
		st, err := d.m.State(ctx, u)
		if err != nil {
			return s, err
		}
		pid, err := d.mainPID(ctx, u)
		if err != nil {
			return s, err
		}
		x := side{unit: u, pid: pid, state: st}
		switch {
		case pid == 0:
		case st.ActiveState == "deactivating":
			s.draining = x
		case s.serving.pid == 0:
			s.serving = x
		}
	}
	return s, nil
}

// slots reads every slot of the web group.
func (d *demo) slots(ctx context.Context, n int) (map[int]slot, error) {
	m := map[int]slot{}
	for i := 1; i <= n; i++ {
		s, err := d.slotOf(ctx, i)
		if err != nil {
			return nil, err
		}
		m[i] = s
	}
	return m, nil
}

// handoverLine shows each slot as "web@1 812 (640 draining)".
func handoverLine(ss map[int]slot) string {
	var parts []string
	for i := 1; i <= len(ss); i++ {
		s := ss[i]
		p := fmt.Sprintf("%s@%d %d", group, i, s.serving.pid)
		if s.draining.pid != 0 {
			p += fmt.Sprintf(" (%d draining)", s.draining.pid)
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "  ")
}

// longLived is one long-lived connection's story.
type longLived struct {
	addr, inst, pid string
	lines           int
	err             error // it ended before its client closed it
}

// holdLong opens a line-echo connection from each address and sends a
// line every linePeriod on each until end is closed; then each client
// closes its connection. up is done when every connection had its first
// echo (or failed).
type holdLong struct {
	conns []*longLived
	up    sync.WaitGroup
	wg    sync.WaitGroup
	end   chan struct{}
	once  sync.Once
	lines atomic.Int64
}

func startLong(ctx context.Context, addrs []string) *holdLong {
	h := &holdLong{end: make(chan struct{})}
	for i, a := range addrs {
		c := &longLived{addr: a}
		h.conns = append(h.conns, c)
		h.up.Add(1)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			first := true
			defer func() {
				if first {
					h.up.Done()
				}
			}()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			e, err := helloclient.DialEcho(dctx, a, webAddr)
			cancel()
			if err != nil {
				c.err = err
				return
			}
			defer e.Close()
			// Spread the connections' lines over the period.
			time.Sleep(time.Duration(i) * linePeriod / time.Duration(len(addrs)))
			tick := time.NewTicker(linePeriod)
			defer tick.Stop()
			for {
				r, err := e.Say(fmt.Sprintf("line %d", c.lines), 10*time.Second)
				if err != nil {
					if ctx.Err() == nil {
						c.err = fmt.Errorf("after %d lines: %w", c.lines, err)
					}
					return
				}
				if first {
					c.inst, c.pid = r.Instance, r.PID
					first = false
					h.up.Done()
				}
				c.lines++
				h.lines.Add(1)
				select {
				case <-h.end:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return h
}

// stop has every client close its connection, and waits for them.
func (h *holdLong) stop() {
	h.once.Do(func() { close(h.end) })
	h.wg.Wait()
}

// cut returns the connections that ended before their client closed them.
func (h *holdLong) cut() []string {
	var s []string
	for _, c := range h.conns {
		if c.err != nil {
			s = append(s, fmt.Sprintf("%s: %v", c.addr, c.err))
		}
	}
	return s
}

// perInstance counts the connections of each instance.
func (h *holdLong) perInstance() map[string]int {
	m := map[string]int{}
	for _, c := range h.conns {
		if c.inst != "" {
			m[c.inst]++
		}
	}
	return m
}

// waitReloadEvents waits (at most d) for the web group's worker.reload
// events of instances 1..n since since, the last of each instance.
func (d *demo) waitReloadEvents(ctx context.Context, n int, since time.Time, wait time.Duration) (map[int]events.Event, error) {
	deadline := time.Now().Add(wait)
	for {
		js, err := d.powerhouse(ctx, "events", "--json")
		if err != nil {
			return nil, fmt.Errorf("powerhouse events --json: %w: %s", err, js)
		}
		evs, err := parseEvents(js)
		if err != nil {
			return nil, err
		}
		got := map[int]events.Event{}
		for _, e := range evs {
			if e.Type == events.WorkerReload && e.Group == group && !e.Time.Before(since) {
				got[e.Instance] = e
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			return got, nil
		}
		select { // poll: journald has no "flushed" to wait for
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// atoiOr reads an event's numeric field, or -1.
func atoiOr(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

// countList shows a count per instance, in instance order: "web@1 6, web@2 5".
func countList(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
