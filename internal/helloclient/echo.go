package helloclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Echo is one connection upgraded to examples/hello's line-echo protocol
// (GET /echo): a long-lived connection, hijacked in the worker, as a
// WebSocket would be.
type Echo struct {
	conn net.Conn
	br   *bufio.Reader
}

// DialEcho connects from the source address src to addr (host:port) and
// upgrades the connection to line-echo, within ctx's deadline.
func DialEcho(ctx context.Context, src, addr string) (*Echo, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	conn.SetDeadline(deadline)
	e := &Echo{conn: conn, br: bufio.NewReader(conn)}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/echo", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "line-echo")
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("echo upgrade: %w", err)
	}
	resp, err := http.ReadResponse(e.br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("echo upgrade: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("echo upgrade: status %d, want 101", resp.StatusCode)
	}
	conn.SetDeadline(time.Time{})
	return e, nil
}

// Say sends msg (one line, no newline) and reads its echo within timeout:
// it returns who answered, and an error if the answer is not msg's echo.
func (e *Echo) Say(msg string, timeout time.Duration) (Reply, error) {
	if strings.ContainsAny(msg, "\r\n") {
		return Reply{}, errors.New("echo: the message must be one line")
	}
	e.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := e.conn.Write([]byte(msg + "\n")); err != nil {
		return Reply{}, err
	}
	line, err := e.br.ReadString('\n')
	if err != nil {
		return Reply{}, err
	}
	head, got, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " echo=")
	if !ok || got != msg {
		return Reply{}, fmt.Errorf("echo of %q: got %q", msg, strings.TrimSpace(line))
	}
	return Parse(head)
}

// LocalAddr is the client's end of the connection.
func (e *Echo) LocalAddr() net.Addr { return e.conn.LocalAddr() }

// Close closes the connection.
func (e *Echo) Close() error { return e.conn.Close() }
