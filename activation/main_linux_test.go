package activation_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/sockettest"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
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

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
)

// Shared socket helpers (internal/sockettest).
var (
	tcpPair = sockettest.TCPPair
	rawFD   = sockettest.RawFD
	openFDs = sockettest.OpenFDs
)

// The test binary doubles as the worker process of the tests that need
// socket activation for real: started again with ACTIVATION_TEST_CHILD set,
// ExtraFiles as descriptors 3, 4, … and LISTEN_FDS/LISTEN_PID, it runs the
// named child instead of the tests (as go-systemd's and tableflip's tests
// do).
const childEnv = "ACTIVATION_TEST_CHILD"

func TestMain(m *testing.M) {
	switch mode := os.Getenv(childEnv); mode {
	case "":
		os.Exit(m.Run())
	case "accept":
		os.Exit(childAccept())
	case "serve":
		os.Exit(childServe())
	case "send":
		os.Exit(childSend())
	case "fdlimit":
		os.Exit(childFDLimit())
	case "sendas":
		os.Exit(childSendAs())
	case "servecfg":
		os.Exit(childServeConfig())
	case "drain":
		os.Exit(childDrain())
	default:
		fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
		os.Exit(2)
	}
}

// describe is what the accept child writes on each connection it accepts.
func describe(c net.Conn) string {
	s := fmt.Sprintf("type=%T remote=%s local=%s", c, c.RemoteAddr(), c.LocalAddr())
	if pc, ok := c.(*activation.Conn); ok {
		s += fmt.Sprintf(" under=%T", pc.NetConn())
	}
	return s
}

// childAccept accepts $ACCEPT_N connections from Listen, writes describe()
// plus the hand-off name on each, then closes the listener and reports on
// stdout.
func childAccept() int {
	n, _ := strconv.Atoi(os.Getenv("ACCEPT_N"))
	l, err := activation.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("listener=%T\n", l)
	for i := 0; i < n; i++ {
		var c net.Conn
		name := "-"
		if hl, ok := l.(*activation.HandoffListener); ok {
			var h handoff.Header
			c, h, err = hl.AcceptHandoff()
			name = h.Name
		} else {
			c, err = l.Accept()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			return 1
		}
		fmt.Fprintf(c, "%s name=%s\n", describe(c), name)
		c.Close()
	}
	l.Close()
	_, err = l.Accept()
	count, last := activation.Malformed(l)
	fmt.Printf("closed=%v malformed=%d last=%v\n", errors.Is(err, net.ErrClosed), count, last)
	return 0
}

// childServe runs activation.Serve with handlers the lifecycle test drives.
func childServe() int {
	l, err := activation.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	reloads := make(chan struct{}, 10)
	activation.OnReconfigure(func() { reloads <- struct{}{} })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		var v struct{ Greeting string }
		if err := activation.Config(&v); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "greeting=%s reloads=%d\n", v.Greeting, len(reloads))
	})
	// /slow answers its headers at once, then the body when the client
	// has sent all of its own: a request in flight for as long as the test
	// wants.
	mux.HandleFunc("POST /slow", func(w http.ResponseWriter, r *http.Request) {
		// Without full duplex the server would read the whole body before
		// sending these headers.
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "done %d\n", len(b))
	})
	if err := activation.Serve(context.Background(), &http.Server{Handler: mux}, l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childSend sends $SEND_MSG as a worker.message.
func childSend() int {
	if err := activation.Send(context.Background(), os.Getenv("SEND_MSG")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// child is a running child process.
type child struct {
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr *syncbuf.Buffer
}

// startChild starts this test binary as the child mode, with files as the
// systemd-passed descriptors. LISTEN_PID must be the child's own pid,
// known only once it runs: a shell sets it and execs, keeping the pid.
func startChild(t *testing.T, mode string, files []*os.File, env ...string) *child {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	if len(files) > 0 {
		cmd.ExtraFiles = files
		cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)))
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdout: bufio.NewReader(out), stderr: new(syncbuf.Buffer)}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return c
}

func (c *child) line(t *testing.T) string {
	t.Helper()
	s, err := c.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("child stdout: %v (stderr: %s)", err, c.stderr)
	}
	return strings.TrimSuffix(s, "\n")
}

// wait waits for the child to exit, for at most d.
func (c *child) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("child did not exit within %v (stderr: %s)", d, c.stderr)
		return nil
	}
}

// handoffSocket makes what systemd makes for a sticky instance: a bound
// unix datagram socket. held is systemd's copy; file is the duplicate to
// pass to the worker.
func handoffSocket(t testing.TB) (path string, held *net.UnixConn, file *os.File) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "1.sock")
	held, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	file, err = held.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close(); file.Close() })
	return path, held, file
}

// dispatcher is the sending side of a hand-off socket, as the sticky
// dispatcher has it, but waiting (in the poller, bounded by a deadline)
// when the worker's queue is full rather than giving up.
type dispatcher struct {
	t  testing.TB
	uc *net.UnixConn
	rc syscall.RawConn
}

func dial(t testing.TB, path string) *dispatcher {
	t.Helper()
	uc, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	rc, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return &dispatcher{t: t, uc: uc, rc: rc}
}

// send hands over fd with h, waiting while the queue is full.
func (d *dispatcher) send(h handoff.Header, fd int) {
	d.t.Helper()
	d.uc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var serr error
	err := d.rc.Write(func(s uintptr) bool {
		serr = handoff.Send(int(s), "", &h, fd)
		// A connected datagram socket polls writable again when the
		// peer's queue has room, so waiting here is not a busy loop.
		return !errors.Is(serr, syscall.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		d.t.Fatalf("send hand-off: %v", err)
	}
}

// sendRaw sends any payload with any descriptors, for malformed cases.
func (d *dispatcher) sendRaw(payload []byte, fds ...int) {
	d.t.Helper()
	sockettest.SendDatagram(d.t, d.uc, payload, fds...)
}

// readLine reads one line from c with a deadline.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	s, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %q, %v", c.LocalAddr(), s, err)
	}
	return strings.TrimSuffix(s, "\n")
}
