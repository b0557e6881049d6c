package activation_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
)

// TestServeAnswersLateFirstRequest: a client that connected before the
// shutdown but sends its request after it began is answered, not dropped
// (net/http alone closes such a connection without a reply).
func TestServeAnswersLateFirstRequest(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted = make(chan struct{}, 1)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }),
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateNew {
				accepted <- struct{}{}
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&activation.ServeConfig{StopTimeout: 10 * time.Second}).Serve(ctx, srv, l) }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-accepted
	cancel() // shutdown begins while the connection is fresh
	// The listener closes when the shutdown starts: wait for that.
	deadline := time.Now().Add(5 * time.Second)
	for {
		probe, err := net.DialTimeout("tcp", l.Addr().String(), time.Second)
		if err != nil {
			break
		}
		probe.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still open after shutdown began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("late first request: %q, %v", line, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// lateListener stands for a hand-off listener at the moment of Close: the
// Accept in progress returns the connection whose datagram it was
// receiving, a moment after Close (its goroutine had not run yet).
type lateListener struct {
	addr    net.Addr
	conn    net.Conn
	closed  chan struct{}
	late    chan struct{} // closed once the late connection was returned
	entered chan struct{} // closed when the first Accept is under way
	once    sync.Once
}

func (l *lateListener) Accept() (net.Conn, error) {
	l.once.Do(func() { close(l.entered) })
	<-l.closed
	select {
	case <-l.late:
		return nil, net.ErrClosed
	default:
	}
	// The window the race needs: the accepting goroutine runs a little
	// after Close (a pause that stands for scheduling, not a wait).
	time.Sleep(50 * time.Millisecond)
	close(l.late)
	return l.conn, nil
}

func (l *lateListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *lateListener) Addr() net.Addr { return l.addr }

// TestServeWaitsForAcceptInProgress: a connection that the listener
// returns to an Accept that was under way when Serve closed it is served
// before Serve returns (after which the worker exits and would drop it).
func TestServeWaitsForAcceptInProgress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	l := &lateListener{addr: ln.Addr(), conn: server, closed: make(chan struct{}), late: make(chan struct{}), entered: make(chan struct{})}
	var answered atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answered.Add(1)
		w.Write([]byte("ok\n"))
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sc := &activation.ServeConfig{StopTimeout: 10 * time.Second}
	go func() { done <- sc.Serve(ctx, &http.Server{Handler: h}, l) }()
	<-l.entered
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if answered.Load() != 1 {
		t.Fatal("Serve returned before it answered the connection its listener returned after Close")
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(client).ReadString('\n')
	if !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Errorf("late connection: %q, %v", line, err)
	}
}
