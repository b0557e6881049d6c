package handoff_test

import (
	"errors"
	"log"
	"net"
	"net/netip"
	"syscall"

	"github.com/powerhouse/powerhouse/handoff"
	"golang.org/x/sys/unix"
)

// The dispatcher's side: accept, hand the connection to a worker without
// ever blocking on it, close its own copy.
func ExampleSend() {
	ln, err := net.Listen("tcp", "0.0.0.0:9999")
	if err != nil {
		log.Fatal(err)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		log.Fatal(err)
	}
	unix.CloseOnExec(sock)
	h := handoff.Header{Name: "0.0.0.0:9999"}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		// With a PROXY header: h.Source, h.Destination = ...; h.Flags = handoff.FlagProxy
		rc, _ := c.(*net.TCPConn).SyscallConn()
		var serr error
		rc.Control(func(fd uintptr) {
			serr = handoff.Send(sock, "/run/powerhouse/web/2.sock", &h, int(fd))
		})
		if errors.Is(serr, syscall.EAGAIN) {
			log.Print("worker 2 is full: try another instance, or refuse") // never wait
		}
		c.Close()
	}
}

// The worker's side, for a loop that does its own polling; package
// activation wraps this in a net.Listener.
func ExampleReceiveFrom() {
	const handoffFD = 3 // LISTEN_FDS=1
	// The kernel then reports who sent each datagram.
	if err := unix.SetsockoptInt(handoffFD, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		log.Fatal(err)
	}
	const supervisorUID = 0 // $POWERHOUSE_SUPERVISOR_UID
	var h handoff.Header
	for {
		fd, cred, err := handoff.ReceiveFrom(handoffFD, &h)
		switch {
		case err == unix.EAGAIN:
			// wait until descriptor 3 is readable, then loop
			return
		case errors.Is(err, handoff.ErrMalformed), errors.Is(err, handoff.ErrNoCredentials):
			continue // already closed and consumed; count it
		case err != nil:
			log.Fatal(err)
		}
		if cred.Uid != supervisorUID {
			unix.Close(fd) // not the supervisor: refuse, count, log
			continue
		}
		log.Printf("connection %d from listener %s, client %v", fd, h.Name, h.Source)
		unix.Close(fd)
	}
}

func ExampleHeader_AppendBinary() {
	buf := make([]byte, 0, handoff.MaxHeaderLen) // reused: no allocation per connection
	h := handoff.Header{
		Name:        "0.0.0.0:9999",
		Source:      netip.MustParseAddrPort("203.0.113.7:51234"),
		Destination: netip.MustParseAddrPort("192.0.2.10:9999"),
		Flags:       handoff.FlagProxy,
	}
	b, err := h.AppendBinary(buf[:0])
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("% x", b)
}
