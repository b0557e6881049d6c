// Package helloclient asks examples/hello who answered: the demo, the
// integration tests and the reload benchmark (bench/sdrow) use it to see
// which instance (and which process) a client address reaches, on a new
// connection, a kept-alive one, or a long-lived line-echo connection
// (DialEcho).
package helloclient

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Reply is hello's answer line: instance=<group>@<n> pid=<pid> remote=<ip:port>.
type Reply struct{ Instance, PID, Remote string }

// Parse reads hello's answer line; the fields may come in any order.
func Parse(line string) (Reply, error) {
	var r Reply
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "instance":
			r.Instance = v
		case "pid":
			r.PID = v
		case "remote":
			r.Remote = v
		}
	}
	if r.Instance == "" || r.PID == "" {
		return r, fmt.Errorf("unexpected answer %q", strings.TrimSpace(line))
	}
	return r, nil
}

// New returns an HTTP client whose connections come from the source
// address src (all of 127.0.0.0/8 can be bound on Linux): a new connection
// per request, or kept-alive ones.
func New(src string, keepAlive bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:         d.DialContext,
			DisableKeepAlives:   !keepAlive,
			MaxIdleConnsPerHost: 4,
		},
	}
}

// Get asks url with c and parses hello's answer.
func Get(ctx context.Context, c *http.Client, url string) (Reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Reply{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil && err != io.EOF {
		return Reply{}, err
	}
	_, _ = io.Copy(io.Discard, resp.Body) // so that a kept-alive connection is reused
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(line))
	}
	return Parse(line)
}
