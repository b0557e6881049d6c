package activation

import (
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/powerhouse/powerhouse/report"
)

// closedEvery is the coalescing period of Closed reports: a busy worker
// sends at most one every closedEvery, an idle one none.
const closedEvery = 100 * time.Millisecond

// reporter sends a serving worker's reports to its supervisor (package
// report): Hello when serving starts (and every report.HelloInterval
// after), Draining when it stops accepting, and Closed counts. Everything is best effort: a send never blocks
// (MSG_DONTWAIT) and never fails the worker; the first failure is logged,
// the others are not.
//
// A nil *reporter (no report socket) does nothing, so Serve calls it
// unconditionally.
type reporter struct {
	c *report.Client

	closed  atomic.Uint64 // connections closed so far: the only per-connection cost
	pending atomic.Bool   // a flush is due: set by connClosed, cleared by the flusher
	wake    chan struct{} // capacity 1: wakes the flusher

	mu   sync.Mutex // guards sent and the final flush against the flusher
	sent uint64     // closed count reported so far

	helloEvery time.Duration // report.HelloInterval; shorter in tests

	failed    atomic.Bool   // a send failed and was logged
	drainOnce sync.Once     // closes drainCh
	drainCh   chan struct{} // closed at Draining: Hellos stop
	done      chan struct{}
	wg        sync.WaitGroup
}

// newReporter returns the reporter of the report socket at path; nil
// when path is empty (not under PowerHouse, or a supervisor without one)
// or when the client socket cannot be made, which is logged.
func newReporter(path string) *reporter {
	if path == "" {
		return nil
	}
	c, err := report.NewClient(path)
	if err != nil {
		log.Printf("activation: not reporting to the supervisor: %v", err)
		return nil
	}
	r := &reporter{c: c, wake: make(chan struct{}, 1), done: make(chan struct{}), drainCh: make(chan struct{}), helloEvery: report.HelloInterval}
	r.wg.Add(1)
	go r.flusher()
	return r
}

// reportSocket is where Serve reports: sc.ReportSocket, else
// $POWERHOUSE_REPORT_SOCKET.
func (sc *ServeConfig) reportSocket() string {
	if sc.ReportSocket != "" {
		return sc.ReportSocket
	}
	return os.Getenv(report.SocketEnv)
}

func (r *reporter) send(m report.Message) bool {
	err := r.c.Send(m)
	if err != nil && r.failed.CompareAndSwap(false, true) {
		log.Printf("activation: reporting to the supervisor: %v (serving goes on; further report failures are not logged)", err)
	}
	return err == nil
}

// hello declares what this worker is and supports, now and then every
// report.HelloInterval: a supervisor that restarted meanwhile learns it
// too (workers outlive their supervisor's restarts).
func (r *reporter) hello(f report.Features) {
	if r == nil {
		return
	}
	h := report.NewHello(f)
	r.send(h)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.helloEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.send(h)
			case <-r.drainCh:
				// A draining worker no longer repeats its Hello: during
				// a handover the slot's new process declares itself, and
				// the old one's would only get in its way.
				return
			case <-r.done:
				return
			}
		}
	}()
}

// draining says the worker stopped accepting, once.
func (r *reporter) draining() {
	if r != nil {
		r.drainOnce.Do(func() {
			close(r.drainCh)
			r.send(report.Draining{})
		})
	}
}

// connClosed counts one closed connection: an atomic add, and on the
// first close after a flush a non-blocking channel send. No allocation,
// no system call.
func (r *reporter) connClosed() {
	if r == nil {
		return
	}
	r.closed.Add(1)
	if !r.pending.Load() && r.pending.CompareAndSwap(false, true) {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// flusher sends the closed count at most every closedEvery, and only when
// it changed: woken by the first close after a flush, it waits out the
// period so that the closes meanwhile go in the same report. When a send
// fails (the supervisor's queue is full, or it is restarting) it tries
// again by itself, waiting twice as long each time up to closedRetryMax,
// so that the last closes of a burst are not left unreported.
func (r *reporter) flusher() {
	defer r.wg.Done()
	t := time.NewTimer(0)
	<-t.C
	delay, retry := closedEvery, false
	for {
		if !retry {
			select {
			case <-r.wake:
			case <-r.done:
				return
			}
		}
		t.Reset(delay)
		select {
		case <-t.C:
		case <-r.done:
			t.Stop()
			return
		}
		// Cleared before reading the count: a close after this sets it
		// again and wakes the next round, so none is left unreported.
		r.pending.Store(false)
		if r.flushClosed() {
			delay, retry = closedEvery, false
		} else {
			delay, retry = min(2*delay, closedRetryMax), true
		}
	}
}

// closedRetryMax bounds the wait between retries of a failed Closed report.
const closedRetryMax = 5 * time.Second

// flushClosed reports the closes not reported yet, and says whether they
// are (true too when there was nothing to report). When the send fails
// the count stays for the next report: Closed counts since the last
// report that was sent.
func (r *reporter) flushClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.closed.Load()
	if n == r.sent {
		return true
	}
	if !r.send(report.Closed{Count: n - r.sent}) {
		return false
	}
	r.sent = n
	return true
}

// stop ends the flusher, reports the last closes and closes the socket.
func (r *reporter) stop() {
	if r == nil {
		return
	}
	close(r.done)
	r.wg.Wait()
	r.flushClosed()
	r.c.Close()
}

// drainResult reports the end of the drain.
func (r *reporter) drainResult(res DrainResult) {
	if r != nil {
		r.send(report.DrainResult{Drained: res.Drained, Cut: res.Cut})
	}
}
