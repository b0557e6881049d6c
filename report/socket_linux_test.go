package report_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sockettest"
	"github.com/powerhouse/powerhouse/report"
)

// The test binary doubles as a worker of another user: started again with
// REPORT_TEST_CHILD=sendas, it becomes $SENDAS_UID:$SENDAS_GID and sends a
// Draining to the socket at $SENDAS_PATH.
func TestMain(m *testing.M) {
	if os.Getenv("REPORT_TEST_CHILD") == "sendas" {
		os.Exit(childSendAs())
	}
	os.Exit(m.Run())
}

func childSendAs() int {
	uid, _ := strconv.Atoi(os.Getenv("SENDAS_UID"))
	gid, _ := strconv.Atoi(os.Getenv("SENDAS_GID"))
	// The runtime applies these to every thread (Go's AllThreadsSyscall).
	if err := syscall.Setgroups(nil); err != nil {
		fmt.Fprintln(os.Stderr, "setgroups:", err)
		return 1
	}
	if err := syscall.Setgid(gid); err != nil {
		fmt.Fprintln(os.Stderr, "setgid:", err)
		return 1
	}
	if err := syscall.Setuid(uid); err != nil {
		fmt.Fprintln(os.Stderr, "setuid:", err)
		return 1
	}
	c, err := report.NewClient(os.Getenv("SENDAS_PATH"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := c.Send(report.Draining{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// listen binds a receiver in a fresh directory; the directory is 0755 so
// that another user can reach the socket, which only its own mode guards.
func listen(t *testing.T, perm os.FileMode, gid int) (*report.Receiver, string) {
	t.Helper()
	dir := t.TempDir()
	// t.TempDir's own parent is 0700 too.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "report.sock")
	r, err := report.Listen(path, perm, gid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, path
}

// recv calls Recv with a deadline, so a missing datagram fails the test
// rather than hanging it.
func recv(t *testing.T, r *report.Receiver) (report.Message, report.Sender, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, s, err := r.Recv(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("no datagram within 10s")
	}
	return m, s, err
}

func rawSender(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	uc, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

// TestSendReceive: every message goes through a real socket, arrives as
// sent, attributed to this process by the kernel's credentials.
func TestSendReceive(t *testing.T) {
	r, path := listen(t, 0o660, -1)
	c, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msgs := []report.Message{
		report.NewHello(report.FeatureReloadOnSIGHUP),
		report.Closed{Count: 3},
		report.Draining{},
		report.Closed{Count: 1 << 33},
		report.DrainResult{Drained: 200, Cut: 3},
	}
	for _, m := range msgs {
		if err := c.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	want := report.Sender{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	for _, m := range msgs {
		got, s, err := recv(t, r)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("received %#v, want %#v", got, m)
		}
		if s != want {
			t.Errorf("sender %+v, want %+v", s, want)
		}
	}
}

// TestRefused: datagrams that must not be served each give a
// DatagramError naming the sender, close the descriptors they carried, and
// leave the receiver working: the next datagram is received.
func TestRefused(t *testing.T) {
	r, path := listen(t, 0o660, -1)
	uc := rawSender(t, path)
	hello, _ := report.NewHello(0).AppendBinary(nil)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	w := int(pw.Fd())
	many := make([]int, 20) // more than the receiver has room for: MSG_CTRUNC
	for i := range many {
		many[i] = w
	}
	tests := []struct {
		name    string
		payload []byte
		fds     []int
		is      error
		want    string
	}{
		{name: "descriptor", payload: hello, fds: []int{w}, is: report.ErrDescriptors, want: "(1 received, all closed)"},
		{name: "20 descriptors", payload: hello, fds: many, is: report.ErrDescriptors, want: "all closed"},
		{name: "oversized", payload: append([]byte("PHRP\x01\x02"), make([]byte, report.MaxDatagramLen)...), is: report.ErrMalformed, want: "longer than 4096 bytes"},
		{name: "malformed", payload: []byte("PHRP\x01\x07"), is: report.ErrMalformed, want: "unknown message kind 7"},
		{name: "garbage", payload: []byte("GET / HTTP/1.1\r\n"), is: report.ErrMalformed, want: "bad magic"},
		{name: "newer version", payload: []byte("PHRP\x03\x01whatever v3 holds"), is: report.ErrMalformed, want: "report datagram of version 3; this receiver (powerhouse " + report.Release() + ") reads report versions 1 to 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sockettest.SendDatagram(t, uc, tt.payload, tt.fds...)
			m, s, err := recv(t, r)
			var de *report.DatagramError
			if !errors.As(err, &de) {
				t.Fatalf("Recv = %v, %v; want a *DatagramError", m, err)
			}
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want one matching %v and containing %q", err, tt.is, tt.want)
			}
			if s.PID != int32(os.Getpid()) || de.Sender != s {
				t.Errorf("sender %+v (error's %+v), want pid %d", s, de.Sender, os.Getpid())
			}
			if !strings.Contains(err.Error(), "from pid "+strconv.Itoa(os.Getpid())) {
				t.Errorf("error %q does not name the sender", err)
			}
		})
	}
	// Every copy of the pipe's write end that the receiver got is closed:
	// once ours is, the reader sees EOF.
	pw.Close()
	pr.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := pr.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("pipe read = %d, %v: the receiver kept a descriptor", n, err)
	}
	sockettest.SendDatagram(t, uc, hello)
	if m, _, err := recv(t, r); err != nil || m.Kind() != report.KindHello {
		t.Fatalf("after the refused datagrams: %v, %v", m, err)
	}
}

// TestRecvEnds: a done context or Close end a waiting Recv; a context
// that ended does not spoil the next Recv.
func TestRecvEnds(t *testing.T) {
	r, path := listen(t, 0o660, -1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := r.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Recv with an expiring context = %v", err)
	}
	c, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(report.Draining{}); err != nil {
		t.Fatal(err)
	}
	if m, _, err := recv(t, r); err != nil || m != (report.Draining{}) {
		t.Errorf("Recv after a context ended = %v, %v", m, err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, _, err := r.Recv(ctx); done <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Recv, cancelled = %v", err)
	}
	go func() { _, _, err := r.Recv(context.Background()); done <- err }()
	r.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Recv, closed = %v", err)
	}
}

// TestListenStale: a supervisor that restarts finds its old socket file
// and replaces it; a socket still read by a live process, or anything
// else at the path, is left alone.
func TestListenStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.sock")
	old, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := report.Listen(path, 0o660, -1); err == nil || !strings.Contains(err.Error(), "in use by a running process") {
		t.Fatalf("Listen over a live socket = %v", err)
	}
	old.Close() // the old supervisor is gone; its file stays
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	r, err := report.Listen(path, 0o660, -1)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	c, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(report.Draining{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := recv(t, r); err != nil {
		t.Fatal(err)
	}
	r.Close()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	if _, err := report.Listen(file, 0o660, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file = %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("the regular file was changed: %q", b)
	}
}

// TestClientNoSupervisor: with no receiver, Send fails at once (never
// blocks), and succeeds again once a supervisor binds the path: the
// client is not tied to one socket.
func TestClientNoSupervisor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.sock")
	c, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(report.Draining{}); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Send with no socket = %v, want ENOENT", err)
	}
	r, err := report.Listen(path, 0o660, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := c.Send(report.Closed{Count: 1}); err != nil {
		t.Fatalf("Send once the supervisor is there: %v", err)
	}
	if m, _, err := recv(t, r); err != nil || m != (report.Closed{Count: 1}) {
		t.Errorf("Recv = %v, %v", m, err)
	}
}

// TestClientQueueFull: Send never blocks on a supervisor that does not
// read; it returns EAGAIN.
func TestClientQueueFull(t *testing.T) {
	_, path := listen(t, 0o660, -1)
	c, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; ; i++ {
		err := c.Send(report.Closed{Count: 1})
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 100000 {
			t.Fatal("the queue never filled")
		}
	}
}

func TestClientErrors(t *testing.T) {
	if _, err := report.NewClient(""); err == nil {
		t.Error("NewClient(\"\") succeeded")
	}
	if _, err := report.NewClient("/" + strings.Repeat("a", 200)); err == nil {
		t.Error("NewClient with a 201-byte path succeeded")
	}
	c, err := report.NewClient("/nonexistent/report.sock")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(report.Closed{}); err == nil || !strings.Contains(err.Error(), "count 0") {
		t.Errorf("Send of an invalid message = %v", err)
	}
	c.Close()
	if err := c.Send(report.Draining{}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after Close = %v", err)
	}
}

// TestGroupCanSend: the socket's mode and group decide who may report. A
// process of the workers' group (not the owner) can send, and the
// receiver sees its real ids; a process of another group cannot.
func TestGroupCanSend(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to send as another user (nobody): run the tests as root")
	}
	const nobody, workers, others = 65534, 65533, 65532
	r, path := listen(t, 0o660, workers)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket || st.Gid != workers || st.Uid != 0 {
		t.Fatalf("socket file: mode %v, uid %d, gid %d; want a socket 0660 root:%d", fi.Mode(), st.Uid, st.Gid, workers)
	}
	sendAs := func(gid int) (int, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "REPORT_TEST_CHILD=sendas", "SENDAS_PATH="+path,
			"SENDAS_UID="+strconv.Itoa(nobody), "SENDAS_GID="+strconv.Itoa(gid))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := sendAs(workers); code != 0 {
		t.Fatalf("a worker of the group could not send: exit %d: %s", code, out)
	}
	m, s, err := recv(t, r)
	if err != nil || m != (report.Draining{}) {
		t.Fatalf("Recv = %v, %v", m, err)
	}
	if s.UID != nobody || s.GID != workers || s.PID <= 0 || s.PID == int32(os.Getpid()) {
		t.Errorf("sender %+v, want uid %d gid %d of the child", s, nobody, workers)
	}
	code, out := sendAs(others)
	if code != 3 || !strings.Contains(out, "permission denied") {
		t.Errorf("a process of another group: exit %d: %s; want a refused send", code, out)
	}
}

// TestClientWritesEncoding: a Client's datagram is exactly the encoding
// that TestGolden pins, nothing before or after it.
func TestClientWritesEncoding(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "raw.sock")
	raw, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := report.Hello{Release: "v0.3.0", HandoffVersions: []uint8{1}, Features: report.FeatureReloadOnSIGHUP}
	if err := c.Send(h); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := raw.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := h.AppendBinary(nil)
	if string(buf[:n]) != string(want) {
		t.Errorf("datagram % x, want % x", buf[:n], want)
	}
}
