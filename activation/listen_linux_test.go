package activation_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
)

// TestSharedChild runs a worker with the group's listening sockets
// inherited, as a shared (non-sticky cluster) instance gets them.
func TestSharedChild(t *testing.T) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	path := filepath.Join(t.TempDir(), "api.sock")
	ux, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ux.Close()
	tf, err := tcp.File()
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	uf, err := ux.File()
	if err != nil {
		t.Fatal(err)
	}
	defer uf.Close()

	tests := []struct {
		name     string
		files    []*os.File
		listener string
		dial     []string // network:address
	}{
		{name: "one socket", files: []*os.File{tf}, listener: "*net.TCPListener", dial: []string{"tcp:" + tcp.Addr().String()}},
		{name: "two sockets", files: []*os.File{tf, uf}, listener: "*activation.multiListener",
			dial: []string{"tcp:" + tcp.Addr().String(), "unix:" + path, "tcp:" + tcp.Addr().String()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := startChild(t, "accept", tt.files, fmt.Sprintf("ACCEPT_N=%d", len(tt.dial)), "LISTEN_FDNAMES=a:b")
			if got := w.line(t); got != "listener="+tt.listener {
				t.Fatalf("child: %s, want listener=%s", got, tt.listener)
			}
			for _, d := range tt.dial {
				network, addr, _ := strings.Cut(d, ":")
				c, err := net.Dial(network, addr)
				if err != nil {
					t.Fatal(err)
				}
				got := readLine(t, c)
				want := fmt.Sprintf("type=*net.TCPConn remote=%s local=%s name=-", c.LocalAddr(), c.RemoteAddr())
				if network == "unix" {
					want = fmt.Sprintf("type=*net.UnixConn remote=@ local=%s name=-", path)
				}
				if got != want {
					t.Errorf("%s:\n got %s\nwant %s", d, got, want)
				}
				c.Close()
			}
			if got := w.line(t); got != "closed=true malformed=0 last=<nil>" {
				t.Errorf("child: %s", got)
			}
			if err := w.wait(t, 10*time.Second); err != nil {
				t.Fatalf("child: %v (stderr: %s)", err, w.stderr)
			}
		})
	}
	// The group's sockets stay open in the parent (systemd's copies): the
	// child's Close closed only its duplicates.
	c, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatalf("group socket closed by the child: %v", err)
	}
	c.Close()
}

// TestListenFDsOtherPID checks go-systemd's LISTEN_PID guard as Listen sees
// it: descriptors meant for another process are ignored and the address is
// used instead.
func TestListenFDsOtherPID(t *testing.T) {
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	l, err := (&activation.ListenConfig{Addr: "127.0.0.1:0"}).Listen(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, ok := l.(*net.TCPListener); !ok {
		t.Errorf("Listen = %T, want *net.TCPListener on the address", l)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		t.Error("LISTEN_FDS left in the environment")
	}
}

func TestListenAddress(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "w.sock")
	tests := []struct {
		name    string
		addr    string
		env     string
		network string
		wantErr string
	}{
		{name: "tcp from caller", addr: "127.0.0.1:0", network: "tcp"},
		{name: "tcp from env", env: "127.0.0.1:0", network: "tcp"},
		{name: "caller wins", addr: "127.0.0.1:0", env: "/nonexistent/dir/x.sock", network: "tcp"},
		{name: "unix from env", env: sock, network: "unix"},
		{name: "nothing", wantErr: "POWERHOUSE_LISTEN"},
		{name: "bad address", addr: "127.0.0.1:notaport", wantErr: "listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("LISTEN_FDS", "")
			t.Setenv(activation.EnvListen, tt.env)
			l, err := (&activation.ListenConfig{Addr: tt.addr}).Listen(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Listen = %v, %v; want an error mentioning %q", l, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := l.Addr().Network(); got != tt.network {
				t.Errorf("network %s, want %s", got, tt.network)
			}
			c, err := net.Dial(l.Addr().Network(), l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

func TestListenRejects(t *testing.T) {
	tests := []struct {
		name string
		file func(t *testing.T) *os.File
		want string
	}{
		{name: "pipe", want: "not a socket", file: func(t *testing.T) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close(); w.Close() })
			return r
		}},
		{name: "UDP", want: "want unixgram", file: func(t *testing.T) *os.File {
			u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			f, _ := u.File()
			u.Close()
			t.Cleanup(func() { f.Close() })
			return f
		}},
		{name: "connection (Accept=yes)", want: "Accept=yes", file: func(t *testing.T) *os.File {
			_, s := tcpPair(t)
			f, _ := s.File()
			t.Cleanup(func() { f.Close() })
			return f
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ok.Close()
			okf, _ := ok.File()
			defer okf.Close()
			bad := tt.file(t)
			before := openFDs(t)
			// A bad socket after a good one: the good one's listener is
			// closed again, nothing is left open.
			l, err := (&activation.ListenConfig{Files: []*os.File{okf, bad}}).Listen(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Listen = %v, %v; want an error mentioning %q", l, err, tt.want)
			}
			if after := openFDs(t); after != before {
				t.Errorf("descriptors: %d before, %d after", before, after)
			}
		})
	}
}

// TestNoHeavyImports keeps workers light: the worker library must not pull
// in the supervisor's D-Bus or TOML dependencies.
func TestNoHeavyImports(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not in PATH: cannot run go list -deps")
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/powerhouse/powerhouse/activation", "github.com/powerhouse/powerhouse/handoff").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps printed too little to be right: %q", deps)
	}
	for _, d := range deps {
		for _, banned := range []string{"github.com/godbus/dbus", "github.com/BurntSushi/toml", "github.com/coreos/go-systemd/v22/dbus"} {
			if strings.HasPrefix(d, banned) {
				t.Errorf("activation depends on %s", d)
			}
		}
	}
}
