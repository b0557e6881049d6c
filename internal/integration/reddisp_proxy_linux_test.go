package integration

import (
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redSupervisorFDs counts the open descriptors of web's supervisor.
func redSupervisorFDs(t *testing.T, h *house) int {
	t.Helper()
	pid := h.show("powerhouse@web.service", "MainPID")
	out, err := h.run("sh", "-c", "ls /proc/"+pid+"/fd | wc -l")
	if err != nil {
		t.Fatalf("fds of pid %s: %v\n%s", pid, err, out)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIntegrationRedProxySlowloris: on the demo's PROXY listener, trusted
// load balancer 127.0.0.2 opens 1,100 connections and never sends a
// header, while trusted 127.0.0.3 keeps being served at once; 127.0.0.3
// also sends garbage headers. The counters of `powerhouse status` say
// exactly that (proxy_busy: the 76 over the per-peer budget of 1,024;
// proxy_errors: the garbage, then the 1,024 once closed), and the
// supervisor ends with the descriptors it started with.
func TestIntegrationRedProxySlowloris(t *testing.T) {
	const held, perPeer, garbage = 1100, 1024, 10
	const proxied = "127.0.0.1:9997"
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")
	header := func(i int) string {
		return fmt.Sprintf("PROXY TCP4 198.51.100.%d 192.0.2.1 %d 80\r\n", 1+i%200, 1000+i)
	}
	waitFor(t, 30*time.Second, "the PROXY listener to serve", func() bool {
		_, err := redGet("127.0.0.3", proxied, header(0))
		return err == nil
	})
	// Every instance's hand-off socket dialled before the count.
	for i := range 50 {
		if _, err := redGet("127.0.0.3", proxied, header(i)); err != nil {
			t.Fatal(err)
		}
	}
	// dispatch.json is written once a second.
	waitFor(t, 5*time.Second, "the warm-up in the counters", func() bool { return redDispatchState(t, h).HandedOff >= 51 })
	fd0 := redSupervisorFDs(t, h)
	base := redDispatchState(t, h)

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 3 * time.Second}
	for range held {
		c, err := d.Dial("tcp", proxied)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	var lat []time.Duration
	for i := range 50 {
		start := time.Now()
		if _, err := redGet("127.0.0.3", proxied, header(i)); err != nil {
			t.Errorf("trusted 127.0.0.3 during the other's slowloris: %v", err)
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("127.0.0.3 beside 1,100 idle connections of 127.0.0.2: median %v, max %v", lat[len(lat)/2], lat[len(lat)-1])
	for range garbage {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", proxied)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "PROXY TCP4 not an address\r\nGET / HTTP/1.1\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); len(b) > 0 {
			t.Errorf("garbage header answered: %q %v", b, err)
		}
		c.Close()
	}
	waitFor(t, 5*time.Second, "the counters of the slowloris", func() bool {
		ds := redDispatchState(t, h)
		return ds.ProxyBusy-base.ProxyBusy == held-perPeer && ds.ProxyErrors-base.ProxyErrors == garbage
	})
	if fds := redSupervisorFDs(t, h); fds < fd0+perPeer {
		t.Errorf("supervisor holds %d descriptors with %d headers pending (%d before)", fds, perPeer, fd0)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, 10*time.Second, "the pending headers to end", func() bool {
		ds := redDispatchState(t, h)
		return ds.ProxyErrors-base.ProxyErrors == garbage+perPeer
	})
	var fds int
	waitFor(t, 10*time.Second, "the supervisor's descriptors to come back", func() bool { fds = redSupervisorFDs(t, h); return fds <= fd0 })
	t.Logf("supervisor descriptors: %d before, %d after", fd0, fds)
	ds := redDispatchState(t, h)
	if ds.ProxyUntrusted != base.ProxyUntrusted || ds.Dropped != base.Dropped || ds.HandedOff-base.HandedOff != 50 {
		t.Errorf("counters before %+v, after %+v", base, ds)
	}
}
