package main

import (
	"bufio"
	"context"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/helloclient"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The demo house's addresses (testdata/demo.toml).
const (
	webAddr   = "127.0.0.1:9999" // group web, sticky
	proxyAddr = "127.0.0.1:9997" // group web, PROXY protocol listener
	apiAddr   = "127.0.0.1:9998" // group api, shared socket
	webURL    = "http://" + webAddr + "/"
)

// demoPorts are the listening addresses the demo house takes.
var demoPorts = []string{proxyAddr, apiAddr, webAddr}

// clientAddr is the i-th client source address: 127.0.0.2, 127.0.0.3, ...
// (all of 127.0.0.0/8 is local on Linux, and can be bound as a source).
func clientAddr(i int) string { return fmt.Sprintf("127.0.0.%d", i+2) }

// The demo asks examples/hello who answered, as the integration tests do.
type reply = helloclient.Reply

var (
	parseReply = helloclient.Parse
	newClient  = helloclient.New
	get        = helloclient.Get
)

// proxyGet connects from src to the PROXY protocol listener as a load
// balancer would, says in a PROXY v1 header that the request comes from
// client, and returns the answer.
func proxyGet(ctx context.Context, src, client string) (reply, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return reply{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	host, port, err := net.SplitHostPort(client)
	if err != nil {
		return reply{}, err
	}
	_, err = fmt.Fprintf(conn, "PROXY TCP4 %s 127.0.0.1 %s 9997\r\nGET / HTTP/1.0\r\nHost: demo\r\n\r\n", host, port)
	if err != nil {
		return reply{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return reply{}, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return parseReply(string(b))
}

// load keeps requests flowing to url, one at a time per client address,
// until stop: a stand-in for clients that do not care what the house is
// doing.
type load struct {
	ok, failed atomic.Int64

	mu       sync.Mutex
	failures map[string][]string       // addr -> errors
	seen     map[string]map[string]int // addr -> instance -> requests answered

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startLoad starts one client per address in addrs, each using new
// connections or kept-alive ones.
func startLoad(ctx context.Context, url string, addrs []string, keepAlive bool) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{failures: map[string][]string{}, seen: map[string]map[string]int{}, cancel: cancel}
	for _, a := range addrs {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := newClient(a, keepAlive)
			defer c.CloseIdleConnections()
			for ctx.Err() == nil {
				r, err := get(ctx, c, url)
				if ctx.Err() != nil {
					return // cancelled by stop: not a failure of the house
				}
				l.record(a, r, err)
			}
		}()
	}
	return l
}

func (l *load) record(addr string, r reply, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.failed.Add(1)
		l.failures[addr] = append(l.failures[addr], err.Error())
		return
	}
	l.ok.Add(1)
	if l.seen[addr] == nil {
		l.seen[addr] = map[string]int{}
	}
	l.seen[addr][r.Instance]++
}

// stop ends the load and waits for its clients.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// waitServed waits until n more requests have been answered, or d passed.
func (l *load) waitServed(ctx context.Context, n int64, d time.Duration) error {
	target := l.ok.Load() + n
	deadline := time.Now().Add(d)
	for l.ok.Load() < target {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d requests answered in %v (%d failed)", n-(target-l.ok.Load()), n, d, l.failed.Load())
		}
		time.Sleep(10 * time.Millisecond) // poll: counters have no wake-up
	}
	return nil
}

// instancesOf returns, for every address, the instances that answered it.
func (l *load) instancesOf() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for a, m := range l.seen {
		for inst := range m {
			out[a] = append(out[a], inst)
		}
	}
	return out
}

// failuresOf returns the failures per address.
func (l *load) failuresOf() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for a, f := range l.failures {
		out[a] = append([]string(nil), f...)
	}
	return out
}
