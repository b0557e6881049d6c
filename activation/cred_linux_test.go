package activation_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/sockettest"
)

// childSendAs becomes user $SENDAS_UID and hands off descriptor 4 on
// descriptor 3, a unix datagram socket connected to a worker's hand-off
// socket: a local user who can write to the socket.
func childSendAs() int {
	uid, _ := strconv.Atoi(os.Getenv("SENDAS_UID"))
	if err := syscall.Setgroups(nil); err != nil {
		fmt.Fprintln(os.Stderr, "setgroups:", err)
		return 1
	}
	if err := syscall.Setgid(uid); err != nil {
		fmt.Fprintln(os.Stderr, "setgid:", err)
		return 1
	}
	if err := syscall.Setuid(uid); err != nil {
		fmt.Fprintln(os.Stderr, "setuid:", err)
		return 1
	}
	h := handoff.Header{Name: "from-" + strconv.Itoa(uid)}
	if err := handoff.Send(3, "", &h, 4); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// sendAs hands off a fresh connection to the listener at path as user
// uid (this process when uid is its own) and returns the client's end.
func sendAs(t *testing.T, path string, d *dispatcher, uid int) net.Conn {
	t.Helper()
	client, server := tcpPair(t)
	defer server.Close()
	if uid == os.Geteuid() {
		d.send(handoff.Header{Name: "from-" + strconv.Itoa(uid)}, rawFD(t, server))
		return client
	}
	sf, cf := sockettest.SenderFiles(t, path, server)
	defer sf.Close()
	defer cf.Close()
	ch := startChild(t, "sendas", []*os.File{sf, cf}, "SENDAS_UID="+strconv.Itoa(uid))
	if err := ch.wait(t, 10*time.Second); err != nil {
		t.Fatalf("sender as uid %d: %v (stderr: %s)", uid, err, ch.stderr)
	}
	return client
}

// TestHandoffSender: only the supervisor's uid may hand off. A datagram
// from another user is dropped, counted and its connection closed; the
// next one, from the supervisor, is served.
func TestHandoffSender(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to send a hand-off as another user (nobody): run the tests as root")
	}
	const nobody = 65534
	for _, tt := range []struct {
		name             string
		env              string // $POWERHOUSE_SUPERVISOR_UID
		rejected, served int    // senders' uids
	}{
		{name: "unset: own euid and root", env: "", rejected: nobody, served: 0},
		{name: "supervisor uid set", env: strconv.Itoa(nobody), rejected: 0, served: nobody},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(activation.EnvSupervisorUID, tt.env)
			l, d, _ := newListener(t)
			path := l.Addr().String()
			bad := sendAs(t, path, d, tt.rejected)
			good := sendAs(t, path, d, tt.served)

			res := make(chan acceptResult, 1)
			var h handoff.Header
			go func() {
				c, hh, err := l.AcceptHandoff()
				h = hh
				res <- acceptResult{c, err}
			}()
			var r acceptResult
			select {
			case r = <-res:
			case <-time.After(10 * time.Second):
				t.Fatal("Accept did not return the supervisor's hand-off")
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer r.c.Close()
			if want := "from-" + strconv.Itoa(tt.served); h.Name != want {
				t.Errorf("served the hand-off %q, want %q", h.Name, want)
			}
			fmt.Fprintf(r.c, "hi\n")
			if got := readLine(t, good); got != "hi" {
				t.Errorf("served connection: %q", got)
			}

			bad.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := bad.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("rejected sender's connection: read %d, %v; want EOF (closed by the worker)", n, err)
			}
			n, last := activation.Rejected(l)
			if n != 1 || last == nil || !strings.Contains(last.Error(), "uid "+strconv.Itoa(tt.rejected)) {
				t.Errorf("Rejected = %d, %v; want 1 naming uid %d", n, last, tt.rejected)
			}
			if m, _ := activation.Malformed(l); m != 0 {
				t.Errorf("Malformed = %d, want 0 (a rejection is counted apart)", m)
			}
		})
	}
}

func TestSupervisorUIDInvalid(t *testing.T) {
	for _, v := range []string{"root", "-1", "4294967295", "4294967296", " 0"} {
		t.Run(v, func(t *testing.T) {
			t.Setenv(activation.EnvSupervisorUID, v)
			_, _, file := handoffSocket(t)
			l, err := activation.NewHandoffListener(file)
			if err == nil {
				l.Close()
				t.Fatalf("%s=%q accepted", activation.EnvSupervisorUID, v)
			}
			if !strings.Contains(err.Error(), activation.EnvSupervisorUID) {
				t.Errorf("error %q does not name %s", err, activation.EnvSupervisorUID)
			}
		})
	}
}
