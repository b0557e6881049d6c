package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/helloclient"
)

// TestEcho: GET /echo upgrades the connection to line-echo, which answers
// each line with hello's answer line and the line, on the one connection,
// until the client closes it; bad requests and long lines get clear
// answers.
func TestEcho(t *testing.T) {
	bin := build(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin)
	start(t, cmd, "POWERHOUSE_LISTEN="+addr, "POWERHOUSE_GROUP=web", "POWERHOUSE_INSTANCE=3")
	dialUntil(t, "tcp", addr).Close()

	t.Run("lines come back on one connection", func(t *testing.T) {
		e, err := helloclient.DialEcho(context.Background(), "127.0.0.2", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		for i := range 20 {
			r, err := e.Say(fmt.Sprintf("message %d", i), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Instance != "web@3" || r.PID != strconv.Itoa(cmd.Process.Pid) || r.Remote != e.LocalAddr().String() {
				t.Fatalf("echo %d: %+v, want web@3, pid %d, remote %s", i, r, cmd.Process.Pid, e.LocalAddr())
			}
		}
	})

	tests := []struct {
		name, send, want string
	}{
		{"no upgrade", "GET /echo HTTP/1.1\r\nHost: hello\r\n\r\n", "HTTP/1.1 426 "},
		{"another protocol", "GET /echo HTTP/1.1\r\nHost: hello\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "HTTP/1.1 426 "},
		{"a line too long", "GET /echo HTTP/1.1\r\nHost: hello\r\nConnection: keep-alive, Upgrade\r\nUpgrade: line-echo\r\n\r\n" + strings.Repeat("x", 1025) + "\n",
			"error: line longer than 1024 bytes"},
		{"a line that fills the buffer", "GET /echo HTTP/1.1\r\nHost: hello\r\nConnection: Upgrade\r\nUpgrade: LINE-ECHO\r\n\r\n" + strings.Repeat("x", 5000) + "\n",
			"error: line longer than 1024 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte(tt.send)); err != nil {
				t.Fatal(err)
			}
			// Everything until the server closes (the error cases) or
			// the status line (426, on a kept-alive connection).
			var got strings.Builder
			br := bufio.NewReader(c)
			for !strings.Contains(got.String(), tt.want) {
				line, err := br.ReadString('\n')
				got.WriteString(line)
				if err != nil {
					break
				}
			}
			if !strings.Contains(got.String(), tt.want) {
				t.Errorf("got %q, want %q in it", got.String(), tt.want)
			}
		})
	}
}

// TestEchoDrains: after SIGTERM hello stops taking connections but its
// line-echo connections (hijacked) go on until their clients close them,
// within the drain timeout; then it exits 0. This is what a handover
// reload relies on: the old process lets its long-lived connections end.
func TestEchoDrains(t *testing.T) {
	bin := build(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin)
	cmd.Env = append(cleanEnv(), "POWERHOUSE_LISTEN="+addr, "POWERHOUSE_STOP_TIMEOUT=20s")
	stderr := new(syncWriter)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	dialUntil(t, "tcp", addr).Close()

	var conns []*helloclient.Echo
	for i := range 3 {
		e, err := helloclient.DialEcho(context.Background(), fmt.Sprintf("127.0.0.%d", 2+i), addr)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		conns = append(conns, e)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The listener closes: new connections are refused (the port is
	// hello's own here; under PowerHouse the next process takes them).
	waitRefused := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(waitRefused) {
			t.Fatal("hello still accepts 10s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond) // poll: nothing tells the client the listener closed
	}
	// The long-lived connections go on, for longer than a drain that
	// ignored them would take.
	for round := range 10 {
		for i, e := range conns {
			if _, err := e.Say(fmt.Sprintf("draining %d", round), 5*time.Second); err != nil {
				t.Fatalf("connection %d, line %d after SIGTERM: %v (stderr: %s)", i, round, err, stderr)
			}
		}
		time.Sleep(100 * time.Millisecond) // the clients' pace
	}
	select {
	case err := <-exited:
		t.Fatalf("hello exited (%v) with long-lived connections open", err)
	default:
	}
	for _, e := range conns {
		e.Close()
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("hello: %v, want exit status 0 (stderr: %s)", err, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("hello still runs 10s after its last connection closed (stderr: %s)", stderr)
	}
}
