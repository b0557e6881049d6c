package nodeworker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/syncbuf"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

// listener is a real listening socket, as systemd's socket unit makes it;
// the test keeps its copy, as systemd does, while node processes come and go.
type listener struct {
	ln   *net.TCPListener
	file *os.File // the descriptor the node processes inherit
	ino  string   // the socket's inode, to see whether a process holds it
}

func newListener(t *testing.T) *listener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return &listener{ln: ln, file: f, ino: strconv.FormatUint(st.Ino, 10)}
}

func (l *listener) addr() string { return l.ln.Addr().String() }

// worker is one node process running server.js.
type worker struct {
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	exited chan error
}

// startWorker runs server.js as systemd runs a kernel-mode instance: the
// socket on descriptor 3, LISTEN_FDS=1, LISTEN_PID its own pid (set by a
// shell that then execs node, as nothing else knows the pid before
// exec), POWERHOUSE_INSTANCE the instance number.
func startWorker(t *testing.T, l *listener, instance string) *worker {
	t.Helper()
	node := testenv.Program(t, "node")
	w := &worker{stderr: new(syncbuf.Buffer), exited: make(chan error, 1)}
	w.cmd = exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$1"`, node, "server.js")
	w.cmd.Env = []string{"PATH=/usr/bin:/bin", "LISTEN_FDS=1", "LISTEN_FDNAMES=instance-" + instance, "POWERHOUSE_INSTANCE=" + instance}
	w.cmd.ExtraFiles = []*os.File{l.file}
	w.cmd.Stderr = w.stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.exited <- w.cmd.Wait() }()
	t.Cleanup(func() {
		if w.cmd.ProcessState == nil {
			w.cmd.Process.Kill()
			<-w.exited
		}
	})
	return w
}

// wait returns how the process ended, failing after d.
func (w *worker) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-w.exited:
		return err
	case <-time.After(d):
		t.Fatalf("node still running after %v (stderr: %s)", d, w.stderr)
		return nil
	}
}

// holds reports whether the process has the socket among its descriptors.
func (w *worker) holds(l *listener) bool {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", w.cmd.Process.Pid))
	for _, fd := range fds {
		if link, _ := os.Readlink(fd); link == "socket:["+l.ino+"]" {
			return true
		}
	}
	return false
}

// unread returns the bytes the server side of the connection from local
// to server has received but no process has read (rx_queue of
// /proc/net/tcp), and whether that socket exists.
func unread(t *testing.T, server, local string) (int64, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	hex := func(a string) string {
		ap, err := net.ResolveTCPAddr("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		ip := ap.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port) // little-endian words
	}
	want, peer := hex(server), hex(local)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || f[1] != want || f[2] != peer {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, err := strconv.ParseInt(rx, 16, 64)
		if err != nil {
			t.Fatalf("/proc/net/tcp: %q", line)
		}
		return n, true
	}
	return 0, false
}

// poll waits until cond holds, failing after d.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// request writes a GET on c and reads the response.
func request(t *testing.T, c net.Conn, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: node\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return response(t, br)
}

func response(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// TestServer: server.js answers on the socket it inherits, like the
// benchmark peers' Node workers, with its instance number.
func TestServer(t *testing.T) {
	l := newListener(t)
	w := startWorker(t, l, "3")
	c, br := dial(t, l.addr())
	resp, body := request(t, c, br)
	if resp.StatusCode != 200 || body != "hello from worker 3\n" || resp.ContentLength != int64(len(body)) {
		t.Errorf("answer %d %q (Content-Length %d), want 200 %q", resp.StatusCode, body, resp.ContentLength, "hello from worker 3\n")
	}
	if resp.Close {
		t.Error("Connection: close while not draining")
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Errorf("after SIGTERM: %v, want exit 0 (stderr: %s)", err, w.stderr)
	}
}

// TestDrainKeepsTheSocket: on SIGTERM server.js stops accepting, closes
// its idle kept-alive connections at once (not after Node's 5 s
// keep-alive timeout), finishes the request it is reading and tells that
// client to close, and exits 0. The socket outlives it (systemd's copy,
// here the test's): a connection queued while no process runs is served
// by the next process, as when a kernel-mode instance restarts.
func TestDrainKeepsTheSocket(t *testing.T) {
	l := newListener(t)
	w := startWorker(t, l, "1")

	idle, idleR := dial(t, l.addr())
	request(t, idle, idleR) // now an idle kept-alive connection

	// A request in flight: its first line read by node, the end of its
	// headers not sent yet.
	busy, busyR := dial(t, l.addr())
	request(t, busy, busyR)
	busy.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(busy, "GET / HTTP/1.1\r\nHost: node\r\n")
	poll(t, 10*time.Second, "node to read the partial request", func() bool {
		n, ok := unread(t, l.addr(), busy.LocalAddr().String())
		return ok && n == 0
	})

	began := time.Now()
	w.cmd.Process.Signal(syscall.SIGTERM)
	poll(t, 10*time.Second, "node to close its copy of the socket", func() bool { return !w.holds(l) })

	idle.SetReadDeadline(time.Now().Add(4 * time.Second)) // under Node's 5 s keepAliveTimeout
	if n, err := idleR.Read(make([]byte, 1)); n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("idle kept-alive connection after SIGTERM: read %d bytes, %v; want it closed at once", n, err)
	}

	io.WriteString(busy, "\r\n")
	resp, body := response(t, busyR)
	if resp.StatusCode != 200 || body != "hello from worker 1\n" {
		t.Errorf("request in flight at SIGTERM: %d %q", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("request in flight at SIGTERM answered without Connection: close (%v)", resp.Header)
	}
	if err := w.wait(t, 4*time.Second); err != nil {
		t.Errorf("after SIGTERM: %v, want exit 0 (stderr: %s)", err, w.stderr)
	}
	t.Logf("drained and exited in %v", time.Since(began).Round(time.Millisecond))

	// No process: the connection waits in the socket's queue.
	queued, queuedR := dial(t, l.addr())
	queued.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(queued, "GET / HTTP/1.1\r\nHost: node\r\n\r\n")
	next := startWorker(t, l, "1")
	resp, body = response(t, queuedR)
	if resp.StatusCode != 200 || body != "hello from worker 1\n" {
		t.Errorf("connection queued between two processes: %d %q", resp.StatusCode, body)
	}
	next.cmd.Process.Signal(syscall.SIGTERM)
	if err := next.wait(t, 10*time.Second); err != nil {
		t.Errorf("second process after SIGTERM: %v (stderr: %s)", err, next.stderr)
	}
}

// TestOutsideSystemd: without a socket of its own (no LISTEN_FDS, or
// LISTEN_PID naming another process) it exits 1 and says why.
func TestOutsideSystemd(t *testing.T) {
	node := testenv.Program(t, "node")
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{name: "no LISTEN_FDS", env: nil},
		{name: "another process's descriptors", env: []string{"LISTEN_FDS=1", "LISTEN_PID=1"}},
		{name: "too many", env: []string{"LISTEN_FDS=1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", `[ -n "$LISTEN_FDS" ] && [ -z "$LISTEN_PID" ] && export LISTEN_PID=$$; exec "$0" "$1"`, node, "server.js")
			cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, tc.env...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "no listening socket from systemd") {
				t.Errorf("%v, %q: want exit status 1 and a message", err, out)
			}
		})
	}
}
