package activation_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/report"
)

// childDrain serves the handlers the drain tests drive, with
// activation.Serve (so SIGTERM is handled for real):
//
//   - /ws is a hijacked connection, as a WebSocket is: it answers 101,
//     then echoes each line the client sends until the client closes;
//     when $DRAIN_NOTIFY=1 it also writes "draining" once the Draining
//     channel of its request closes;
//   - /poll is a long-poll that answers "drained" when draining starts;
//   - / answers "ok".
//
// With $DRAIN_NOTIFY=1, OnDrain prints "ondrain" on stdout.
func childDrain() int {
	l, err := activation.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	notify := os.Getenv("DRAIN_NOTIFY") == "1"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		var mu sync.Mutex
		write := func(s string) {
			mu.Lock()
			defer mu.Unlock()
			c.Write([]byte(s))
		}
		write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: lines\r\nConnection: Upgrade\r\n\r\n")
		if notify {
			go func() {
				<-activation.Draining(r.Context())
				write("draining\n")
			}()
		}
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			write("echo " + line)
		}
	})
	mux.HandleFunc("GET /poll", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-activation.Draining(r.Context()):
			io.WriteString(w, "drained\n")
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	sc := &activation.ServeConfig{}
	if notify {
		sc.OnDrain = func() { fmt.Println("ondrain") }
	}
	if err := sc.Serve(context.Background(), &http.Server{Handler: mux}, l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// lineConn is a client connection that sends and reads lines.
type lineConn struct {
	net.Conn
	r *bufio.Reader
}

func dialLines(t *testing.T, addr, request string) *lineConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	return &lineConn{Conn: c, r: bufio.NewReader(c)}
}

// read returns the next line, or the error that ended the connection,
// within d.
func (c *lineConn) read(d time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(d))
	s, err := c.r.ReadString('\n')
	return strings.TrimRight(s, "\r\n"), err
}

// upgrade opens a hijacked connection to /ws and reads the 101 answer.
func upgrade(t *testing.T, addr string) *lineConn {
	t.Helper()
	c := dialLines(t, addr, "GET /ws HTTP/1.1\r\nHost: w\r\n\r\n")
	for {
		s, err := c.read(10 * time.Second)
		if err != nil {
			t.Fatalf("upgrade: %v", err)
		}
		if s == "" {
			return c
		}
	}
}

// echo sends one line and waits for its echo, skipping a "draining" line.
func (c *lineConn) echo(i int) error {
	want := fmt.Sprintf("echo line %d", i)
	if _, err := fmt.Fprintf(c, "line %d\n", i); err != nil {
		return err
	}
	for {
		s, err := c.read(5 * time.Second)
		if err != nil {
			return err
		}
		if s == want {
			return nil
		}
		if s != "draining" {
			return fmt.Errorf("got %q, want %q", s, want)
		}
	}
}

// drainResult waits for the worker's DrainResult report, skipping the
// others.
func drainResult(t *testing.T, r *report.Receiver) report.DrainResult {
	t.Helper()
	for {
		m, _ := next(t, r)
		if d, ok := m.(report.DrainResult); ok {
			return d
		}
	}
}

// startDrainChild starts a drain child on a listening socket that the
// test keeps too, as systemd and the slot's next process do.
func startDrainChild(t *testing.T, stop string, env ...string) (w *child, tcp *net.TCPListener, notify *notifySocket, rep *report.Receiver) {
	t.Helper()
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	lf, err := tcp.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	notify = newNotifySocket(t)
	rep, path := reportSocket(t)
	w = startChild(t, "drain", []*os.File{lf}, append(env,
		"NOTIFY_SOCKET="+notify.path, report.SocketEnv+"="+path,
		activation.EnvStopTimeout+"="+stop)...)
	notify.expect(t, "READY=1", "STOPPING=1")
	return w, tcp, notify, rep
}

// TestServeDrainsHijacked: on SIGTERM a worker process keeps its hijacked
// connections (WebSockets) working until they end on their own, up to
// 90% of its stop timeout: one that sends a line every 100 ms and closes
// a second after SIGTERM is echoed to its end and counted drained; one
// that goes on is cut at about 90% of the stop timeout and counted cut.
// Meanwhile the listening socket, which the test holds as the slot's
// next process does, keeps accepting: the worker close()d its copy and
// did not shut it down. Before, hijacked connections were cut the moment
// Shutdown returned, that is at once.
func TestServeDrainsHijacked(t *testing.T) {
	const stop = 3 * time.Second // drain deadline: 2.7 s
	w, tcp, notify, rep := startDrainChild(t, stop.String())
	addr := tcp.Addr().String()
	ends, goesOn := upgrade(t, addr), upgrade(t, addr)
	for i := range 3 {
		if err := ends.echo(i); err != nil {
			t.Fatal(err)
		}
		if err := goesOn.echo(i); err != nil {
			t.Fatal(err)
		}
	}

	w.cmd.Process.Signal(syscall.SIGTERM)
	sigterm := time.Now()
	notify.expect(t, "STOPPING=1")

	// The worker stopped accepting; the socket did not: the next
	// process (here the test) takes a new client, while the old one
	// drains.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("connecting while the old process drains: %v", err)
	}
	defer nc.Close()
	tcp.SetDeadline(time.Now().Add(10 * time.Second))
	sc, err := tcp.Accept()
	if err != nil {
		t.Fatalf("the next process cannot accept on the shared socket while the old one drains: %v", err)
	}
	sc.Close()

	var cutAt time.Duration
	goesOnDone := make(chan error, 1)
	go func() {
		// A line every 100 ms until the worker closes the connection.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 3; ; i++ {
			<-tick.C
			if err := goesOn.echo(i); err != nil {
				cutAt = time.Since(sigterm)
				goesOnDone <- err
				return
			}
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	for i := 3; time.Since(sigterm) < time.Second; i++ {
		<-tick.C
		if err := ends.echo(i); err != nil {
			t.Fatalf("hijacked connection, %v after SIGTERM: %v", time.Since(sigterm).Round(time.Millisecond), err)
		}
	}
	tick.Stop()
	ends.Close()

	select {
	case err := <-goesOnDone:
		// Cut at 2.7 s; the bounds leave room for a loaded machine.
		if cutAt < 2*time.Second || cutAt > 6*time.Second {
			t.Errorf("the connection that went on ended %v after SIGTERM (%v), want at about 2.7s (90%% of %v)", cutAt.Round(time.Millisecond), err, stop)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection that goes on was not cut at the drain deadline")
	}
	if got := drainResult(t, rep); got != (report.DrainResult{Drained: 1, Cut: 1}) {
		t.Errorf("drain result %+v, want 1 drained, 1 cut", got)
	}
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("worker exit: %v (stderr: %s)", err, w.stderr)
	}
	// And after it exited.
	nc2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	if sc, err = tcp.Accept(); err != nil {
		t.Fatalf("the shared socket does not accept after the old process exited: %v", err)
	}
	sc.Close()
}

// TestServeDraining: at SIGTERM the Draining channel of every request
// closes and OnDrain runs: a long-poll answers at once, a hijacked
// connection is told (and then ends on its own, counted drained); an idle
// keep-alive is closed promptly although the drain goes on; a new process
// is not needed for any of it.
func TestServeDraining(t *testing.T) {
	w, tcp, notify, rep := startDrainChild(t, "20s", "DRAIN_NOTIFY=1")
	addr := tcp.Addr().String()
	ws := upgrade(t, addr)
	if err := ws.echo(0); err != nil {
		t.Fatal(err)
	}
	poll := dialLines(t, addr, "GET /poll HTTP/1.1\r\nHost: w\r\n\r\n")
	idle := dialLines(t, addr, "GET / HTTP/1.1\r\nHost: w\r\n\r\n")
	resp, err := http.ReadResponse(idle.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	// The long-poll may reach its handler before or after SIGTERM: either
	// way it sees Draining closed (a request read before the drain is
	// waited for until it reaches the handler).

	w.cmd.Process.Signal(syscall.SIGTERM)
	sigterm := time.Now()
	if got := w.line(t); got != "ondrain" {
		t.Errorf("stdout %q, want ondrain", got)
	}
	notify.expect(t, "STOPPING=1")

	if s, err := ws.read(5 * time.Second); s != "draining" {
		t.Errorf("hijacked connection after SIGTERM: %q, %v; want draining", s, err)
	}
	resp, err = http.ReadResponse(poll.r, nil)
	if err != nil {
		t.Fatalf("long-poll in flight at SIGTERM: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "drained\n" {
		t.Errorf("long-poll answered %q, want drained", body)
	}
	// The idle keep-alive is closed at once, not at the end of the drain
	// (the hijacked connection keeps it going).
	if s, err := idle.read(5 * time.Second); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive after SIGTERM: %q, %v; want EOF", s, err)
	}
	if took := time.Since(sigterm); took > 2*time.Second {
		t.Errorf("idle keep-alive closed %v after SIGTERM, want promptly", took)
	}
	// Still working after that, until it closes.
	if err := ws.echo(1); err != nil {
		t.Fatalf("hijacked connection after the idle one closed: %v", err)
	}
	ws.Close()
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("worker exit: %v (stderr: %s)", err, w.stderr)
	}
	// The long-poll's, the idle keep-alive's and the hijacked connection
	// ended on their own.
	if got := drainResult(t, rep); got != (report.DrainResult{Drained: 3}) {
		t.Errorf("drain result %+v, want 3 drained, 0 cut", got)
	}
}

// TestServeReportsHijackedClosed: a hijacked connection (a WebSocket)
// leaves net/http's accounting at the hijack; when its handler closes it,
// the worker still reports it closed to the supervisor (within about a
// second), so that the dispatcher's count of the instance's open
// connections, which balance_factor and fallback = "spread" read, does
// not keep it for the life of the process.
func TestServeReportsHijackedClosed(t *testing.T) {
	w, tcp, _, rep := startDrainChild(t, "20s")
	c := upgrade(t, tcp.Addr().String())
	if err := c.echo(1); err != nil {
		t.Fatal(err)
	}
	c.Close() // the handler's read ends, and it closes its side
	for {
		m, from := next(t, rep)
		if from.PID != int32(w.cmd.Process.Pid) {
			continue
		}
		if cl, ok := m.(report.Closed); ok {
			if cl.Count != 1 {
				t.Errorf("closed %d, want the one hijacked connection", cl.Count)
			}
			break
		}
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("worker exit: %v (stderr: %s)", err, w.stderr)
	}
}
