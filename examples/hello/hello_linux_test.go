package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

// build compiles hello into a directory of the test's own, out of the
// source tree (internal/testenv), as `make build` does into bin/hello.
func build(t *testing.T) string {
	t.Helper()
	return filepath.Join(testenv.Build(t, "./examples/hello"), "hello")
}

// start runs cmd with a clean PowerHouse environment plus env, and stops
// it with SIGTERM at the end of the test, which must make it exit 0.
func start(t *testing.T, cmd *exec.Cmd, env ...string) {
	t.Helper()
	cmd.Env = append(cleanEnv(), env...)
	stderr := new(syncWriter)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("after SIGTERM: %v, want exit status 0 (stderr: %s)", err, stderr)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Errorf("still running 10s after SIGTERM (stderr: %s)", stderr)
		}
	})
}

// cleanEnv is the test's environment without anything that would change
// how hello starts.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
			"POWERHOUSE_LISTEN", "POWERHOUSE_GROUP", "POWERHOUSE_INSTANCE", "POWERHOUSE_CONFIG":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// syncWriter collects a child's stderr while exec's goroutine writes it.
type syncWriter struct {
	mu sync.Mutex
	b  []byte
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}

var lineRE = regexp.MustCompile(`^instance=([^ ]+) pid=(\d+) remote=(\S+)\n$`)

// request sends GET path on c and returns the status and body.
func request(t *testing.T, c net.Conn, path string) (int, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b []byte
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			break
		}
	}
	return resp.StatusCode, string(b)
}

// checkLine checks hello's answer: instance, pid and remote as expected.
func checkLine(t *testing.T, body, instance string, pid int, remote string) {
	t.Helper()
	m := lineRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("GET /: %q, want one line instance=… pid=… remote=…", body)
	}
	if m[1] != instance || m[2] != strconv.Itoa(pid) || m[3] != remote {
		t.Errorf("GET /: %q, want instance=%s pid=%d remote=%s", body, instance, pid, remote)
	}
}

// dialUntil connects to addr, retrying until the server is up.
func dialUntil(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort returns a loopback port nobody listens on just now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestListenEnv: bin/hello alone serves on $POWERHOUSE_LISTEN.
func TestListenEnv(t *testing.T) {
	bin := build(t)
	tests := []struct {
		name    string
		network string
		addr    func(t *testing.T) string
		env     []string
		inst    string
	}{
		{name: "tcp", network: "tcp", addr: func(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }, inst: "dev@0"},
		{name: "unix", network: "unix", addr: func(t *testing.T) string { return filepath.Join(t.TempDir(), "hello.sock") }, inst: "dev@0"},
		{name: "as a worker", network: "tcp", addr: func(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) },
			env: []string{"POWERHOUSE_GROUP=web", "POWERHOUSE_INSTANCE=3"}, inst: "web@3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			cmd := exec.Command(bin)
			start(t, cmd, append(tt.env, "POWERHOUSE_LISTEN="+addr)...)
			c := dialUntil(t, tt.network, addr)
			defer c.Close()
			code, body := request(t, c, "/")
			if code != 200 {
				t.Fatalf("GET /: status %d", code)
			}
			remote := c.LocalAddr().String()
			if tt.network == "unix" {
				remote = "@" // an unnamed unix client, as net/http prints it
			}
			checkLine(t, body, tt.inst, cmd.Process.Pid, remote)

			c2 := dialUntil(t, tt.network, addr)
			defer c2.Close()
			if code, _ := request(t, c2, "/other"); code != 404 {
				t.Errorf("GET /other: status %d, want 404", code)
			}
		})
	}
}

func TestNoAddress(t *testing.T) {
	bin := build(t)
	cmd := exec.Command(bin)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("hello without socket or address exited 0")
	}
	if !regexp.MustCompile(`POWERHOUSE_LISTEN`).Match(out) {
		t.Errorf("output %q does not say to set POWERHOUSE_LISTEN", out)
	}
}

// socketActivate finds systemd-socket-activate, or skips the test (fails
// it in CI) saying how to install it.
func socketActivate(t *testing.T) string {
	t.Helper()
	return testenv.Program(t, "systemd-socket-activate")
}

// TestSystemdSocketActivate: `systemd-socket-activate -l 127.0.0.1:PORT
// bin/hello` serves, hello getting the listening socket as systemd passes
// it to a shared group's instance.
func TestSystemdSocketActivate(t *testing.T) {
	sa := socketActivate(t)
	bin := build(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(sa, "-l", addr, bin)
	start(t, cmd)
	c := dialUntil(t, "tcp", addr)
	defer c.Close()
	code, body := request(t, c, "/")
	if code != 200 {
		t.Fatalf("GET /: status %d", code)
	}
	// systemd-socket-activate execs hello in its own process: same pid.
	checkLine(t, body, "dev@0", cmd.Process.Pid, c.LocalAddr().String())
}

// TestSystemdSocketActivateSticky runs hello as a sticky instance: with
// -d, systemd-socket-activate passes a unix datagram socket, the hand-off
// socket, and the test hands a client connection over it as the dispatcher
// does, PROXY-protocol client address included.
func TestSystemdSocketActivateSticky(t *testing.T) {
	sa := socketActivate(t)
	bin := build(t)
	path := filepath.Join(t.TempDir(), "1.sock")
	cmd := exec.Command(sa, "-d", "-l", path, "--fdname=handoff",
		"-E", "POWERHOUSE_GROUP=web", "-E", "POWERHOUSE_INSTANCE=1", bin)
	start(t, cmd)
	snd := dialUntil(t, "unixgram", path).(*net.UnixConn)
	defer snd.Close()

	send := func(h handoff.Header) net.Conn {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close() // the dispatcher's copy
		rc, _ := server.(*net.TCPConn).SyscallConn()
		src, _ := snd.SyscallConn()
		var serr error
		rc.Control(func(fd uintptr) {
			src.Control(func(s uintptr) { serr = handoff.Send(int(s), "", &h, int(fd)) })
		})
		if serr != nil {
			t.Fatal(serr)
		}
		return client
	}

	// The first datagram starts hello, so it was sent before the library
	// set SO_PASSCRED on the socket (systemd-socket-activate has no
	// PassCredentials=): it carries no credentials and is refused, its
	// connection closed. Once the client sees that, every later datagram
	// carries them.
	primer := send(handoff.Header{Name: "0.0.0.0:9999"})
	primer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := primer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a hand-off without credentials: read %d bytes, %v; want it closed (EOF)", n, err)
	}
	primer.Close()

	c := send(handoff.Header{
		Name:        "0.0.0.0:9999",
		Source:      netip.MustParseAddrPort("203.0.113.7:51234"),
		Destination: netip.MustParseAddrPort("192.0.2.10:9999"),
		Flags:       handoff.FlagProxy,
	})
	defer c.Close()
	_, body := request(t, c, "/")
	checkLine(t, body, "web@1", cmd.Process.Pid, "203.0.113.7:51234")

	c2 := send(handoff.Header{Name: "0.0.0.0:9999"})
	defer c2.Close()
	_, body = request(t, c2, "/")
	checkLine(t, body, "web@1", cmd.Process.Pid, c2.LocalAddr().String())
}
