package activation_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
)

// notifySocket is a stand-in for systemd's $NOTIFY_SOCKET: it collects the
// states a worker sends.
type notifySocket struct {
	path   string
	states chan string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{path: path, states: make(chan string, 1000)}
	go func() {
		b := make([]byte, 4096)
		for {
			k, err := c.Read(b)
			if err != nil {
				return
			}
			for _, s := range strings.Split(string(b[:k]), "\n") {
				n.states <- s
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

// expect waits for state, failing on any state in unexpected first.
func (n *notifySocket) expect(t *testing.T, state string, unexpected ...string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-n.states:
			if s == state {
				return
			}
			for _, u := range unexpected {
				if s == u {
					t.Fatalf("got %s before %s", s, state)
				}
			}
		case <-deadline:
			t.Fatalf("no %s from the worker", state)
		}
	}
}

// poll retries f until it returns "" or the deadline passes.
func poll(t *testing.T, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func get(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestServeChild drives a worker's whole life through activation.Serve in a
// child process started as systemd would: READY=1, watchdog pings, config
// reload on SIGHUP, and on SIGTERM STOPPING=1, a request in flight served
// to its end, connections not yet accepted left to the next instance, and
// exit status 0.
func TestServeChild(t *testing.T) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	lf, err := tcp.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	notify := newNotifySocket(t)
	cfg := filepath.Join(t.TempDir(), "web.json")
	writeFile(t, cfg, `{"Greeting": "a"}`)

	w := startChild(t, "serve", []*os.File{lf},
		"NOTIFY_SOCKET="+notify.path,
		"WATCHDOG_USEC=100000",
		activation.EnvConfig+"="+cfg,
		activation.EnvStopTimeout+"=20s",
	)
	notify.expect(t, "READY=1", "STOPPING=1")
	notify.expect(t, "WATCHDOG=1")
	notify.expect(t, "WATCHDOG=1")

	url := "http://" + tcp.Addr().String()
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	if got := get(t, client, url+"/config"); got != "greeting=a reloads=0" {
		t.Fatalf("config: %s", got)
	}
	writeFile(t, cfg, `{"Greeting": "b"}`)
	if got := get(t, client, url+"/config"); got != "greeting=a reloads=0" {
		t.Errorf("config changed before SIGHUP: %s", got)
	}
	w.cmd.Process.Signal(syscall.SIGHUP)
	poll(t, "reload on SIGHUP", func() string {
		if got := get(t, client, url+"/config"); got != "greeting=b reloads=1" {
			return got
		}
		return ""
	})
	writeFile(t, cfg, `{"Greeting": `)
	w.cmd.Process.Signal(syscall.SIGHUP)
	poll(t, "bad config on SIGHUP", func() string {
		if !strings.Contains(w.stderr.String(), "keeping the previous configuration") {
			return "no log line; stderr: " + w.stderr.String()
		}
		return ""
	})
	if got := get(t, client, url+"/config"); got != "greeting=b reloads=1" {
		t.Errorf("config after a bad reload: %s", got)
	}

	// A request in flight: headers received, body still being sent.
	pr, pw := io.Pipe()
	defer pw.Close()
	resp, err := client.Post(url+"/slow", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	w.cmd.Process.Signal(syscall.SIGTERM)
	notify.expect(t, "STOPPING=1")
	// Connecting still works (the socket is systemd's, here the test's),
	// but the stopping worker must not take the connection.
	late, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()

	pw.Write([]byte("xyz"))
	pw.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "done 3\n" {
		t.Fatalf("in-flight request: %q, %v; want it finished", body, err)
	}
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("worker exit: %v (stderr: %s)", err, w.stderr)
	}
	tcp.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := tcp.Accept()
	if err != nil {
		t.Fatalf("the connection made during shutdown is not left in the socket: %v", err)
	}
	c.Close()
}

func startServe(t *testing.T, sc *activation.ServeConfig, h http.Handler) (ctx context.Context, cancel context.CancelFunc, url string, done <-chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan error, 1)
	go func() { ch <- sc.Serve(ctx, &http.Server{Handler: h}, l) }()
	return ctx, cancel, "http://" + l.Addr().String(), ch
}

func TestServeCancel(t *testing.T) {
	notify := newNotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", notify.path)
	t.Setenv("WATCHDOG_USEC", "")
	_, cancel, url, done := startServe(t, &activation.ServeConfig{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	notify.expect(t, "READY=1", "STOPPING=1")
	client := &http.Client{Timeout: 10 * time.Second}
	if got := get(t, client, url); got != "ok" {
		t.Fatalf("GET: %q", got)
	}
	client.CloseIdleConnections()
	cancel()
	notify.expect(t, "STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// TestServeStopTimeout: a request that outlives the stop timeout is cut,
// and Serve says so, in time for systemd not to kill the process.
func TestServeStopTimeout(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	entered := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	_, cancel, url, done := startServe(t, &activation.ServeConfig{StopTimeout: 300 * time.Millisecond},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-release
		}))
	reqErr := make(chan error, 1)
	go func() {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		reqErr <- err
	}()
	<-entered
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		took := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Serve = %v, want context.DeadlineExceeded", err)
		}
		if took < 250*time.Millisecond || took > 5*time.Second {
			t.Errorf("Serve returned after %v, want about 270ms (90%% of 300ms)", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if err := <-reqErr; err == nil {
		t.Error("the request cut at the timeout succeeded")
	}
}

func TestServeBadStopTimeout(t *testing.T) {
	for _, v := range []string{"soon", "-5s", "0"} {
		t.Run(v, func(t *testing.T) {
			t.Setenv(activation.EnvStopTimeout, v)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			err = (&activation.ServeConfig{}).Serve(context.Background(), &http.Server{}, l)
			if err == nil || !strings.Contains(err.Error(), "stop timeout") && !strings.Contains(err.Error(), activation.EnvStopTimeout) {
				t.Errorf("Serve with %s=%q: %v, want an error", activation.EnvStopTimeout, v, err)
			}
		})
	}
}

// TestServeHandoffLinger: a sticky worker told to stop keeps taking
// hand-offs until the dispatcher has stopped sending (a short quiet
// spell), because a stopped instance's hand-off socket is stopped next and
// whatever it still queued would be lost with it. The dispatcher learns
// of the stop some milliseconds after the worker does; the test sends for
// 10 ms after STOPPING=1, as it would, and every one of those clients must
// be answered before the worker exits.
func TestServeHandoffLinger(t *testing.T) {
	path, held, file := handoffSocket(t)
	notify := newNotifySocket(t)
	w := startChild(t, "serve", []*os.File{file}, "LISTEN_FDNAMES=handoff",
		"NOTIFY_SOCKET="+notify.path, activation.EnvStopTimeout+"=20s")
	file.Close()
	notify.expect(t, "READY=1", "STOPPING=1")
	d := dial(t, path)

	w.cmd.Process.Signal(syscall.SIGTERM)
	notify.expect(t, "STOPPING=1")
	var clients []net.Conn
	for i := 0; i < 5; i++ {
		client, server := tcpPair(t)
		if _, err := client.Write([]byte("GET /config HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		d.send(handoff.Header{Name: "public"}, rawFD(t, server))
		server.Close()
		clients = append(clients, client)
		time.Sleep(2 * time.Millisecond) // the dispatcher's pace, not a wait for an event
	}
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("worker exit: %v (stderr: %s)", err, w.stderr)
	}
	// What the worker left queued goes with the socket, as when systemd
	// stops a stopped instance's hand-off socket.
	held.Close()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if !strings.HasPrefix(string(b), "HTTP/1.1 ") {
			t.Errorf("client %d, sent after STOPPING=1: %q, %v; want an answer", i, b, err)
		}
		c.Close()
	}
}
