package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/sockettest"
)

// TestIntegrationFDLimit: a sticky worker (examples/hello) runs under
// systemd with LimitNOFILE=64 and its hand-off socket held by a socket
// unit; the test is its dispatcher. It hands over 60 connections that the
// worker holds (a POST whose body never comes) and then 500 requests. The
// worker cannot hold 60: it stops receiving while it is short of
// descriptors, the rest wait in the socket systemd holds (the test waits
// on the full queue, as the dispatcher does before falling back), and once
// the 60 are closed every one of the 500 is answered. A worker that kept
// reading would have the kernel drop the connections it has no descriptor
// for (MSG_CTRUNC). The worker does not get PassCredentials=yes: it sets
// SO_PASSCRED itself.
func TestIntegrationFDLimit(t *testing.T) {
	const holds, requests = 60, 500
	h := bootHouse(t, sdboxOptions())
	// Abstract: the box shares the host's network namespace, so the test
	// reaches the socket by name.
	addr := fmt.Sprintf("@powerhouse-fdlimit-%d", os.Getpid())
	socket := fmt.Sprintf("[Socket]\nListenDatagram=%s\nFileDescriptorName=handoff\n", addr)
	service := fmt.Sprintf(`[Unit]
Requires=fdlimit.socket
After=fdlimit.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=%s
Sockets=fdlimit.socket
LimitNOFILE=64
Environment=POWERHOUSE_GROUP=fd POWERHOUSE_INSTANCE=1
`, filepath.Join(boxBin, "hello"))
	for name, text := range map[string]string{"fdlimit.socket": socket, "fdlimit.service": service} {
		if err := h.box.WriteFile("/run/systemd/system/"+name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.systemctl("daemon-reload")
	h.systemctl("start", "fdlimit.service")

	uc, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()

	var holdClients, reqClients []net.Conn
	var servers []*net.TCPConn
	for i := 0; i < holds+requests; i++ {
		c, s := sockettest.TCPPair(t)
		req := "GET / HTTP/1.1\r\nHost: fd\r\nConnection: close\r\n\r\n"
		if i < holds {
			req = "POST /message HTTP/1.1\r\nHost: fd\r\nContent-Length: 4096\r\n\r\n"
			holdClients = append(holdClients, c)
		} else {
			reqClients = append(reqClients, c)
		}
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
	}

	// A held connection closed before the test closes it was dropped.
	held := sockettest.WatchHeld(holdClients, 2*time.Minute, func(c net.Conn) bool {
		c.Read(make([]byte, 1)) // the worker answers nothing before the body
		return false
	})
	hdr := handoff.Header{Name: "0.0.0.0:9999"}
	blocked, sent := sockettest.SendAll(uc, servers, 2*time.Minute, func(sock, fd int) error { return handoff.Send(sock, "", &hdr, fd) })

	// The worker fills up: the queue behind it fills (with the guard), or
	// it drops connections (without), or, unexpectedly, takes them all.
	var sendErr error
	senderDone := false
	select {
	case <-blocked:
	case <-held.Lost:
	case sendErr = <-sent:
		senderDone = true
	case <-time.After(time.Minute):
		t.Fatalf("the dispatcher neither blocked nor finished in a minute\njournal:\n%s", h.journal())
	}
	if n := held.Dropped(); n > 0 {
		t.Errorf("%d of %d held connections were closed by the worker at its descriptor limit", n, holds)
	}
	held.Release()

	var failed []string
	for i, c := range reqClients {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		b, err := io.ReadAll(c)
		if !strings.HasPrefix(string(b), "HTTP/1.1 200 ") || !strings.Contains(string(b), "instance=fd@1") {
			failed = append(failed, fmt.Sprintf("#%d: %q, %v", i, b, err))
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d requests not answered, first: %s", len(failed), requests, failed[0])
	}
	if !senderDone {
		sendErr = <-sent
	}
	if sendErr != nil {
		t.Errorf("dispatcher: %v", sendErr)
	}
	// journald stores lines asynchronously: the resume line may be
	// written after the last request was answered.
	var journal string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		journal, _ = h.run("journalctl", "--no-pager", "-u", "fdlimit.service", "-o", "cat")
		if strings.Contains(journal, "not receiving hand-offs") && strings.Contains(journal, "receiving hand-offs again") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the worker did not log its pause and resume:\n%s", journal)
			break
		}
	}
	if t.Failed() {
		t.Logf("journal:\n%s", h.journal())
	}
}
