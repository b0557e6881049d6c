package activation

import (
	"log"
	"net"
	"sync/atomic"
	"time"
)

// fdGate keeps a HandoffListener from reading a hand-off while the process
// is short of descriptors.
//
// Receiving a hand-off installs its descriptor in this process. When the
// process is at its RLIMIT_NOFILE, recvmsg cannot, and the kernel drops
// the descriptor (MSG_CTRUNC): the client's connection is lost. Peeking
// (MSG_PEEK) installs the descriptors too, so the only safe course is not
// to read: the datagram stays queued in the socket systemd holds, the
// dispatcher sees the queue fill and falls back to another instance, and
// the gate opens again when the worker has closed enough connections.
//
// Counting open descriptors means listing /proc/self/fd, whose cost grows
// with their number, so the gate does not count on every Accept. After a
// count it knows how many descriptors are free beyond the margin, and each
// hand-off adds at most one: it counts again when that budget is spent,
// or when the count is older than recountEvery (the application opens and
// closes descriptors of its own, which the margin absorbs meanwhile). A
// worker far from its limit thus counts about once a second; one near it
// counts more often, which is when it matters. Wrapping the returned
// connections to see their Close was the other way to keep track; it
// would hide the *net.TCPConn that Accept returns, and still miss the
// application's other descriptors.
//
// It is used by one Accept at a time (under HandoffListener.mu).
type fdGate struct {
	budget   int       // hand-offs that may be read before counting again
	counted  time.Time // when the last count was made
	buf      []byte    // getdents buffer, kept so that counting does not allocate
	disabled bool      // counting is impossible here (no /proc): read as before
	logged   time.Time // when a pause was last logged
	pauses   atomic.Uint64
}

const (
	// recountEvery bounds the age of the count the gate relies on.
	recountEvery = time.Second
	// While paused the gate counts again after pauseMin, doubling up to
	// pauseMax: a freed descriptor is noticed within pauseMax, and a
	// worker that stays full spends little on counting.
	pauseMin = time.Millisecond
	pauseMax = 100 * time.Millisecond
	// pauseLogEvery: pauses closer together than this are one burst,
	// logged once.
	pauseLogEvery = 10 * time.Second
)

// fdMargin is how many descriptors the gate keeps free below the limit:
// a hand-off needs two for a moment (the one recvmsg installs and
// net.FileConn's duplicate), and the application needs some for its own
// work (files, outgoing connections, the runtime) between two counts.
// 1/64 of the limit, at least 8 and at most 256.
func fdMargin(limit int) int { return min(max(limit/64, 8), 256) }

// headroom returns how many hand-offs may be read now without eating into
// the margin, and the counts behind it.
func (g *fdGate) headroom() (free, open, limit int, err error) {
	if g.buf == nil {
		g.buf = make([]byte, 8192)
	}
	open, limit, err = fdUsage(g.buf)
	if err != nil {
		return 0, 0, 0, err
	}
	return limit - fdMargin(limit) - open, open, limit, nil
}

// wait returns once a hand-off may be read, or false when done is closed
// first. addr names the socket in the log lines: one when the gate closes
// and one when it opens again, once per burst of pauses.
func (g *fdGate) wait(done <-chan struct{}, addr net.Addr) bool {
	if g.disabled {
		return true
	}
	now := time.Now()
	if g.budget > 0 && now.Sub(g.counted) < recountEvery {
		g.budget--
		return true
	}
	free, open, limit, err := g.headroom()
	if err != nil {
		g.disabled = true
		log.Printf("activation: hand-off socket %s: cannot count open descriptors (%v): receiving without a guard against running out of them", addr, err)
		return true
	}
	g.counted = now
	if free > 0 {
		g.budget = free - 1
		return true
	}
	n := g.pauses.Add(1)
	// A worker that stays near its limit pauses and resumes again and
	// again; one pair of lines per burst is enough.
	logged := g.logged.IsZero() || now.Sub(g.logged) >= pauseLogEvery
	if logged {
		g.logged = now
		log.Printf("activation: hand-off socket %s: %d of %d descriptors open (RLIMIT_NOFILE, keeping %d free): not receiving hand-offs until connections are closed; they wait in the socket (pause %d)", addr, open, limit, fdMargin(limit), n)
	}
	start := now
	delay := pauseMin
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-done:
			return false
		case <-t.C:
		}
		free, open, limit, err = g.headroom()
		if err == nil && free > 0 {
			g.counted = time.Now()
			g.budget = free - 1
			if logged {
				log.Printf("activation: hand-off socket %s: receiving hand-offs again after %v (%d of %d descriptors open); further pauses within %v are not logged", addr, g.counted.Sub(start).Round(time.Millisecond), open, limit, pauseLogEvery)
			}
			return true
		}
		delay = min(2*delay, pauseMax)
		t.Reset(delay)
	}
}
