package activation_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/sockettest"
)

// childFDLimit is a worker whose RLIMIT_NOFILE is $FD_LIMIT, as with
// LimitNOFILE= in its unit. On each connection it reads one byte: 'h'
// means hold the connection (it answers "H" and keeps it until the client
// closes it), 'e' means answer "ok" and close.
func childFDLimit() int {
	n, _ := strconv.ParseUint(os.Getenv("FD_LIMIT"), 10, 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		return 1
	}
	l, err := activation.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// SIGUSR1 closes the listener, even while Accept is paused.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		<-usr1
		l.Close()
	}()
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			fmt.Printf("closed paused=%d\n", l.(*activation.HandoffListener).Paused())
			return 0
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			return 1
		}
		go func() {
			defer c.Close()
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			switch b[0] {
			case 'h':
				c.Write([]byte("H"))
				io.Copy(io.Discard, c)
			case 'e':
				c.Write([]byte("ok\n"))
			}
		}()
	}
}

// TestFDLimit: a worker with LimitNOFILE=64 is sent 60 connections it holds
// open, then 500 more. It cannot hold 60: it stops receiving while it is
// short of descriptors, so the rest wait in the hand-off socket (the
// sender waits on the full queue, as the dispatcher would before falling
// back), and once the 60 are closed every one of the 500 is served. A
// worker that kept reading would have the kernel drop the descriptors it
// has no room for (MSG_CTRUNC): those clients see their connection closed.
func TestFDLimit(t *testing.T) {
	const limit, holds, echoes = 64, 60, 500
	path, _, file := handoffSocket(t)
	ch := startChild(t, "fdlimit", []*os.File{file}, "FD_LIMIT="+strconv.Itoa(limit))
	file.Close()
	if got := ch.line(t); got != "ready" {
		t.Fatalf("child: %q", got)
	}
	d := dial(t, path)

	// Every connection is made up front, its first byte already written.
	var holdClients, echoClients []net.Conn
	var servers []*net.TCPConn
	for i := 0; i < holds+echoes; i++ {
		c, s := tcpPair(t)
		cmd := "e"
		if i < holds {
			cmd = "h"
			holdClients = append(holdClients, c)
		} else {
			echoClients = append(echoClients, c)
		}
		if _, err := c.Write([]byte(cmd)); err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
	}

	// A hold connection closed before the test releases them was dropped.
	held := sockettest.WatchHeld(holdClients, 60*time.Second, func(c net.Conn) bool {
		b := make([]byte, 1)
		_, err := c.Read(b)
		return err == nil && b[0] == 'H' // held by the worker
	})

	// The dispatcher: sends every connection in order, waiting in the
	// poller while the worker's queue is full, and closes its copy.
	h := handoff.Header{Name: "0.0.0.0:9999"}
	blocked, sent := sockettest.SendAll(d.uc, servers, 60*time.Second, func(sock, fd int) error { return handoff.Send(sock, "", &h, fd) })

	// The worker runs short of descriptors: it says so, or (without the
	// guard) drops hold connections.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(ch.stderr.String(), "not receiving hand-offs") && held.Dropped() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the worker neither paused nor dropped a connection in 30s (stderr: %s)", ch.stderr)
		}
		select {
		case <-held.Lost:
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Then the queue fills (or, without the guard, everything is sent and
	// dropped).
	var sendErr error
	senderDone := false
	select {
	case <-blocked:
	case sendErr = <-sent:
		senderDone = true
	case <-time.After(30 * time.Second):
		t.Fatal("the dispatcher neither blocked on a full queue nor finished in 30s")
	}
	if n := held.Dropped(); n > 0 {
		t.Errorf("%d of %d held connections were closed by the worker at its descriptor limit", n, holds)
	}
	held.Release()

	var failed []string
	for i, c := range echoClients {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		if string(b) != "ok\n" {
			failed = append(failed, fmt.Sprintf("#%d: %q, %v", i, b, err))
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d connections not served, first: %s (worker stderr: %s)", len(failed), echoes, failed[0], ch.stderr)
	}
	if !senderDone {
		sendErr = <-sent
	}
	if sendErr != nil {
		t.Errorf("dispatcher: %v", sendErr)
	}
	if !strings.Contains(ch.stderr.String(), "receiving hand-offs again") {
		t.Errorf("the worker did not log that it resumed (stderr: %s)", ch.stderr)
	}
	t.Logf("worker log: %s", ch.stderr)
}

// TestFDLimitClose: Close ends an Accept that is paused for descriptors.
func TestFDLimitClose(t *testing.T) {
	path, _, file := handoffSocket(t)
	ch := startChild(t, "fdlimit", []*os.File{file}, "FD_LIMIT=64")
	file.Close()
	if got := ch.line(t); got != "ready" {
		t.Fatalf("child: %q", got)
	}
	d := dial(t, path)
	// More held connections than the worker has room for; the queue
	// takes the rest (10 on a default kernel, so 64 always fit).
	// A full queue means either that the worker has not read yet or that
	// it paused: poll (with a deadline) until there is room or it says it
	// paused. A waiting send would wait forever for a paused worker.
	paused := func() bool { return strings.Contains(ch.stderr.String(), "not receiving hand-offs") }
	deadline := time.Now().Add(10 * time.Second)
send:
	for i := 0; i < 64 && !paused(); i++ {
		c, s := tcpPair(t)
		c.Write([]byte("h"))
		fd := rawFD(t, s)
		for {
			var serr error
			d.rc.Control(func(sock uintptr) { serr = handoff.Send(int(sock), "", &handoff.Header{Name: "x"}, fd) })
			if serr == nil {
				break
			}
			if !errors.Is(serr, syscall.EAGAIN) {
				t.Fatal(serr)
			}
			if paused() || time.Now().After(deadline) {
				s.Close()
				c.Close()
				break send
			}
			time.Sleep(time.Millisecond)
		}
		s.Close()
	}
	for !paused() {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not pause (stderr: %s)", ch.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ch.cmd.Process.Signal(syscall.SIGUSR1)
	if got := ch.line(t); got != "closed paused=1" {
		t.Errorf("child after Close: %q, want closed paused=1", got)
	}
	if err := ch.wait(t, 10*time.Second); err != nil {
		t.Errorf("child: %v (stderr: %s)", err, ch.stderr)
	}
}
