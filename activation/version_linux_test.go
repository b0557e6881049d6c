package activation_test

import (
	"errors"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
	"github.com/powerhouse/powerhouse/report"
)

// captureLog sends the standard logger to a buffer for the test. The
// package's tests do not run in parallel, so nothing else logs meanwhile.
func captureLog(t *testing.T) *syncbuf.Buffer {
	t.Helper()
	buf := new(syncbuf.Buffer)
	prev, flags := log.Writer(), log.Flags()
	log.SetOutput(buf)
	log.SetFlags(0)
	t.Cleanup(func() { log.SetOutput(prev); log.SetFlags(flags) })
	return buf
}

// TestHandoffFutureVersion runs this release's worker against a newer
// supervisor's hand-off format: a datagram whose header has a version the
// worker does not know, over a real hand-off socket with a real
// connection in SCM_RIGHTS. The worker must fail loudly (one log line
// naming both versions and its release), close the connection (the client
// sees EOF rather than a hang) and serve the next, valid hand-off. A
// future header may be longer than today's largest or carry other
// descriptors: the version decides before anything else.
func TestHandoffFutureVersion(t *testing.T) {
	v2 := func(rest string) []byte { return append([]byte("PHHO\x02"), rest...) }
	tests := []struct {
		name    string
		payload []byte
		conns   int // connections passed with it
		version string
	}{
		{name: "v2 like v1", payload: v2("\x00\x00\x00\x01a"), conns: 1, version: "version 2"},
		{name: "v2 longer than any v1 header", payload: v2(strings.Repeat("x", 1000)), conns: 1, version: "version 2"},
		{name: "v2 with two descriptors", payload: v2("\x00"), conns: 2, version: "version 2"},
		{name: "v2 header only", payload: v2(""), conns: 1, version: "version 2"},
		{name: "v255", payload: []byte("PHHO\xff\x00\x00\x00\x01a"), conns: 1, version: "version 255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := captureLog(t)
			path, _, file := handoffSocket(t)
			l, err := activation.NewHandoffListener(file)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			d := dial(t, path)

			// Twice: the second is closed and counted too, but not logged
			// again (a flood of them must not flood the journal).
			var clients []net.Conn
			for range 2 {
				var fds []int
				var servers []*net.TCPConn
				for range tt.conns {
					c, s := tcpPair(t)
					clients = append(clients, c)
					servers = append(servers, s)
					fds = append(fds, rawFD(t, s))
				}
				d.sendRaw(tt.payload, fds...)
				for _, s := range servers {
					s.Close() // the kernel holds the datagram's copy: the worker's alone is left
				}
			}
			good, s := tcpPair(t)
			d.send(handoff.Header{Name: "after"}, rawFD(t, s))
			s.Close()

			acc := make(chan error, 1)
			go func() {
				c, h, err := l.AcceptHandoff()
				if err == nil {
					if h.Name != "after" {
						err = errors.New("accepted " + h.Name + ", want the valid hand-off")
					}
					c.Close()
				}
				acc <- err
			}()
			select {
			case err := <-acc:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Accept did not return the valid hand-off after the future one")
			}
			good.Close()

			for i, c := range clients {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
					t.Errorf("client %d: read %d, %v; want EOF (the worker closes what it cannot serve)", i, n, err)
				}
			}
			if n, last := l.Malformed(); n != 2 {
				t.Errorf("Malformed = %d, %v; want 2", n, last)
			}
			out := logs.String()
			for _, want := range []string{
				"hand-off header of " + tt.version,
				"this worker's library (powerhouse " + report.Release() + ") understands hand-off header versions [1]",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("log %q does not contain %q", out, want)
				}
			}
			if n := strings.Count(out, "hand-off header of version"); n != 1 {
				t.Errorf("%d log lines about the version, want 1 (rate-limited):\n%s", n, out)
			}
		})
	}
}
