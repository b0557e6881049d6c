package pyworker

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/sockettest"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
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
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

// Shared socket helpers (internal/sockettest).
var (
	tcpPair = sockettest.TCPPair
	rawFD   = sockettest.RawFD
)

// sender is the dispatcher's side of the hand-off socket.
type sender struct {
	t  *testing.T
	uc *net.UnixConn
}

// send sends payload with fds, waiting in the poller while the worker's
// queue is full.
func (s *sender) send(payload []byte, fds ...int) {
	s.t.Helper()
	sockettest.SendDatagram(s.t, s.uc, payload, fds...)
}

// handOff hands over a fresh loopback TCP connection with header h, as the
// dispatcher does (handoff.Send, then closing its copy), and returns the
// client's end.
func (s *sender) handOff(h handoff.Header) net.Conn {
	s.t.Helper()
	client, server := tcpPair(s.t)
	defer server.Close()
	rc, _ := s.uc.SyscallConn()
	src, _ := server.SyscallConn()
	var serr error
	s.uc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err := rc.Write(func(sock uintptr) bool {
		src.Control(func(fd uintptr) { serr = handoff.Send(int(sock), "", &h, int(fd)) })
		return !errors.Is(serr, syscall.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		s.t.Fatalf("hand-off: %v", err)
	}
	return client
}

func get(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: py\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /: %d %q, %v", resp.StatusCode, b, err)
	}
	return string(b)
}

func expectEOF(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("%s: read %d, %v; want EOF (the worker closed the descriptor)", what, n, err)
	}
}

// TestPythonWorker runs worker.py as systemd runs a sticky instance, with
// the hand-off socket as descriptor 3, and hands it real TCP connections,
// plain and through PROXY protocol, between malformed datagrams.
func TestPythonWorker(t *testing.T) {
	py := testenv.Program(t, "python3")
	dir := t.TempDir()
	path := filepath.Join(dir, "1.sock")
	held, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	file, err := held.File()
	if err != nil {
		t.Fatal(err)
	}
	notifyPath := filepath.Join(dir, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	// LISTEN_PID must be the worker's pid: the shell sets it and execs.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, py, "worker.py")
	cmd.ExtraFiles = []*os.File{file}
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=handoff", "NOTIFY_SOCKET="+notifyPath,
		"POWERHOUSE_GROUP=py", "POWERHOUSE_INSTANCE=1")
	stderr := new(syncbuf.Buffer)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	file.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	}()

	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 256)
	if n, err := notify.Read(b); err != nil || string(b[:n]) != "READY=1" {
		t.Fatalf("notify: %q, %v; want READY=1 (worker: %s)", b[:n], err, stderr)
	}

	uc, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	s := &sender{t: t, uc: uc}

	// Malformed: wrong version, no descriptor, two descriptors.
	v2, _ := (&handoff.Header{Name: "x"}).MarshalBinary()
	v2[4] = 2
	c1, s1 := tcpPair(t)
	s.send(v2, rawFD(t, s1))
	s1.Close()
	good, _ := (&handoff.Header{Name: "x"}).MarshalBinary()
	s.send(good)
	c2, s2 := tcpPair(t)
	c3, s3 := tcpPair(t)
	s.send(good, rawFD(t, s2), rawFD(t, s3))
	s2.Close()
	s3.Close()

	// A hand-off from another user (nobody), its request already sent:
	// the worker must close it unanswered and go on.
	var stranger net.Conn
	if os.Geteuid() == 0 {
		stranger = handOffAs(t, py, path, 65534, good)
	} else {
		t.Log("not root: the hand-off from another user is not tried (run the tests as root)")
	}

	pid := cmd.Process.Pid
	plain := s.handOff(handoff.Header{Name: "0.0.0.0:9999"})
	if got, want := get(t, plain), fmt.Sprintf("instance=py@1 pid=%d remote=%s\n", pid, plain.LocalAddr()); got != want {
		t.Errorf("plain:\n got %q\nwant %q", got, want)
	}
	p4 := s.handOff(handoff.Header{
		Name:        "0.0.0.0:9999",
		Source:      netip.MustParseAddrPort("203.0.113.7:51234"),
		Destination: netip.MustParseAddrPort("192.0.2.10:9999"),
		Flags:       handoff.FlagProxy,
	})
	if got, want := get(t, p4), fmt.Sprintf("instance=py@1 pid=%d remote=203.0.113.7:51234\n", pid); got != want {
		t.Errorf("PROXY v4:\n got %q\nwant %q", got, want)
	}
	p6 := s.handOff(handoff.Header{
		Name:   "[::]:9999",
		Source: netip.MustParseAddrPort("[2001:db8::1]:40000"),
		Flags:  handoff.FlagProxy,
	})
	if got, want := get(t, p6), fmt.Sprintf("instance=py@1 pid=%d remote=[2001:db8::1]:40000\n", pid); got != want {
		t.Errorf("PROXY v6:\n got %q\nwant %q", got, want)
	}

	if stranger != nil {
		// Closed with the request unread: a reset rather than EOF.
		stranger.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := stranger.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("hand-off from uid 65534: read %d, %v; want the connection closed unanswered", n, err)
		}
		if !strings.Contains(stderr.String(), "rejected hand-off from uid 65534") {
			t.Errorf("the rejected hand-off is not reported (output: %s)", stderr)
		}
	}
	expectEOF(t, c1, "wrong version")
	expectEOF(t, c2, "two descriptors, first")
	expectEOF(t, c3, "two descriptors, second")
	drops := regexp.MustCompile(`dropped malformed hand-off \((\d+) so far\): ([^\n]*)`).FindAllStringSubmatch(stderr.String(), -1)
	var reasons []string
	for _, m := range drops {
		reasons = append(reasons, m[2])
	}
	if len(drops) != 3 || !strings.Contains(reasons[0], "version 2") || !strings.Contains(reasons[1], "0 descriptors") || !strings.Contains(reasons[2], "2 descriptors") {
		t.Errorf("malformed datagrams reported: %q; want version 2, 0 descriptors, 2 descriptors", reasons)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("worker exit after SIGTERM: %v (output: %s)", err, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("worker still running 10s after SIGTERM (output: %s)", stderr)
	}
}

// handOffAs hands off a fresh loopback connection to the hand-off socket
// at path as user uid: python3, started as root with a socket this process
// connected (descriptor 3) and the connection (descriptor 4), drops to uid
// and sends. The client's end is returned
// with a GET request already written, so that a worker serving it would
// answer.
func handOffAs(t *testing.T, py, path string, uid int, header []byte) net.Conn {
	t.Helper()
	client, server := tcpPair(t)
	defer server.Close()
	fmt.Fprintf(client, "GET / HTTP/1.1\r\nHost: py\r\n\r\n")
	sf, cf := sockettest.SenderFiles(t, path, server)
	defer sf.Close()
	defer cf.Close()
	const script = `import os, socket, sys
uid = int(sys.argv[1])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
socket.send_fds(socket.socket(fileno=3), [bytes.fromhex(sys.argv[2])], [4])`
	cmd := exec.Command(py, "-c", script, strconv.Itoa(uid), hex.EncodeToString(header))
	cmd.ExtraFiles = []*os.File{sf, cf}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("send as uid %d: %v: %s", uid, err, out)
	}
	return client
}
