package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// asUID runs f on a thread whose effective uid is uid (the socket's
// SO_PEERCRED is taken at connect), then gives the thread root back.
// Only this thread changes: setresuid(2) as a raw system call, not Go's
// syscall.Setresuid, which changes every thread of the process.
func asUID(t *testing.T, uid int, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to change a thread's uid")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			t.Errorf("setresuid: %v", e)
			return
		}
		f()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			// The thread stays locked and dies with this goroutine.
			t.Errorf("setresuid back: %v", e)
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
}

// reachable makes the path to the control socket searchable by others.
func reachable(t *testing.T, r *rig) {
	for d := filepath.Dir(r.s.g.ControlPath()); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestControlPermissions: another user may ask for the status, without
// the values of the keys public_config does not name, and may not reload,
// scale or reconfigure (PermissionDenied, from SO_PEERCRED); root sees
// everything.
func TestControlPermissions(t *testing.T) {
	r := newRig(t, strings.Replace(apiTOML, "amount = 3", "amount = 3\npublic_config = [\"color\"]", 1), "api", nil)
	r.run()
	r.waitAll()
	reachable(t, r)
	fi, err := os.Stat(r.s.g.ControlPath())
	if err != nil || fi.Mode().Perm() != 0o666 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("control socket %v %v, want a socket of mode 0666", fi.Mode(), err)
	}
	c := r.client()
	gs, err := c.Status(context.Background())
	if err != nil || gs.Config["secret"] != "s3cret" || gs.Config["color"] != "blue" {
		t.Errorf("root's status config %v %v", gs.Config, err)
	}
	asUID(t, 65534, func() {
		gs, err := c.Status(context.Background())
		if err != nil {
			t.Errorf("status as nobody: %v", err)
		} else if _, ok := gs.Config["secret"]; ok || gs.Config["color"] != "blue" || len(gs.Instances) != 3 {
			t.Errorf("nobody's status: config %v, %d instances", gs.Config, len(gs.Instances))
		}
		for name, call := range map[string]func() error{
			"reload":      func() error { _, err := c.Reload(context.Background(), nil); return err },
			"scale":       func() error { _, err := c.Scale(context.Background(), 1, nil); return err },
			"reconfigure": func() error { _, err := c.Reconfigure(context.Background(), nil); return err },
		} {
			if err := call(); callErrName(err) != ErrDenied || !strings.Contains(err.Error(), "uid 65534 may not call it") {
				t.Errorf("%s as nobody: %v, want %s", name, err, ErrDenied)
			}
		}
	})
	for _, j := range r.f.jobs() {
		if strings.HasPrefix(j, "restart") || strings.HasPrefix(j, "stop") {
			t.Errorf("a refused call ran %s", j)
		}
	}
}

// rawCall sends raw bytes as a request and returns the first reply.
func rawCall(t *testing.T, path string, req []byte) reply {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// A supervisor that refuses may answer and close before it read
	// everything: the reply counts, not the write.
	c.Write(req)
	var rep reply
	if err := readMessage(bufio.NewReader(c), &rep); err != nil {
		t.Fatalf("reply to %.40q: %v", req, err)
	}
	return rep
}

// TestControlBadRequests: every malformed call gets InvalidParameter and
// a message, and runs nothing.
func TestControlBadRequests(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	r.run()
	r.waitAll()
	for _, tc := range []struct {
		name, req, want string
	}{
		{"not JSON", "hello\x00", "bad request"},
		{"unknown field", `{"method":"io.powerhouse.Supervisor.Status","x":1}` + "\x00", "unknown field"},
		{"no method", `{}` + "\x00", "no method"},
		{"unknown method", `{"method":"io.powerhouse.Supervisor.Explode"}` + "\x00", `unknown method "io.powerhouse.Supervisor.Explode"`},
		{"parameters to reload", `{"method":"io.powerhouse.Supervisor.Reload","parameters":{"now":true}}` + "\x00", "takes no parameters"},
		{"scale without amount", `{"method":"io.powerhouse.Supervisor.Scale"}` + "\x00", "needs parameters"},
		{"scale of 0", `{"method":"io.powerhouse.Supervisor.Scale","parameters":{"amount":0}}` + "\x00", "amount 0: use 1 to 1024"},
		{"scale of a string", `{"method":"io.powerhouse.Supervisor.Scale","parameters":{"amount":"3"}}` + "\x00", "parameters"},
		{"scale too far", `{"method":"io.powerhouse.Supervisor.Scale","parameters":{"amount":100000}}` + "\x00", "amount 100000"},
		{"two objects", `{"method":"io.powerhouse.Supervisor.Status"}{}` + "\x00", "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := rawCall(t, r.s.g.ControlPath(), []byte(tc.req))
			var ep errorParameters
			json.Unmarshal(rep.Parameters, &ep)
			if rep.Error != ErrInvalid || !strings.Contains(ep.Message, tc.want) {
				t.Errorf("reply %s %q, want %s with %q", rep.Error, ep.Message, ErrInvalid, tc.want)
			}
		})
	}
	t.Run("over the bound", func(t *testing.T) {
		c, err := net.Dial("unix", r.s.g.ControlPath())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// The supervisor stops reading at the bound and answers; the
		// rest of this write may then fail, which is the point.
		go c.Write(bytes.Repeat([]byte("x"), maxRequest+10))
		var rep reply
		if err := readMessage(bufio.NewReader(c), &rep); err != nil {
			t.Fatal(err)
		}
		var ep errorParameters
		json.Unmarshal(rep.Parameters, &ep)
		if rep.Error != ErrInvalid || !strings.Contains(ep.Message, "request over 65536 bytes") {
			t.Errorf("reply %s %q", rep.Error, ep.Message)
		}
	})
	for _, j := range r.f.jobs() {
		if strings.HasPrefix(j, "restart") || strings.HasPrefix(j, "stop") {
			t.Errorf("a bad call ran %s", j)
		}
	}
}

// TestControlStaleSocket: a file left at the control path by a
// supervisor that was killed is replaced.
func TestControlStaleSocket(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	if err := os.MkdirAll(filepath.Dir(r.s.g.ControlPath()), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: r.s.g.ControlPath(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens
	r.run()
	r.waitAll()
	if _, err := r.client().Status(context.Background()); err != nil {
		t.Errorf("status with a stale socket file before start: %v", err)
	}
}

// TestControlConnectionBound: past maxConns connections at once, one
// more is told so and closed; a connection that never sends its request
// is closed after requestTimeout and frees its place.
func TestControlConnectionBound(t *testing.T) {
	r := newRig(t, apiTOML, "api", nil)
	r.run()
	r.waitAll()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range maxConns {
		c, err := net.Dial("unix", r.s.g.ControlPath())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	start := time.Now()
	rep := rawCall(t, r.s.g.ControlPath(), []byte(`{"method":"io.powerhouse.Supervisor.Status"}`+"\x00"))
	var ep errorParameters
	json.Unmarshal(rep.Parameters, &ep)
	if rep.Error != ErrFailed || !strings.Contains(ep.Message, "serves 64 calls already") {
		t.Errorf("call over the bound: %s %q", rep.Error, ep.Message)
	}
	// The silent ones are dropped after requestTimeout, with a reply.
	held[0].SetReadDeadline(time.Now().Add(requestTimeout + 5*time.Second))
	var r0 reply
	if err := readMessage(bufio.NewReader(held[0]), &r0); err != nil || r0.Error != ErrInvalid {
		t.Errorf("silent connection: %+v %v", r0, err)
	}
	if d := time.Since(start); d < requestTimeout-time.Second {
		t.Errorf("silent connection closed after %v, before the %v bound", d, requestTimeout)
	}
	waitFor(t, r.n, "a place again", func() bool {
		_, err := r.client().Status(context.Background())
		return err == nil
	})
}
