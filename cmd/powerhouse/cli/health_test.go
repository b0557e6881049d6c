package cli

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseHealthRequest(t *testing.T) {
	const max = 64
	for _, tc := range []struct {
		name string
		in   string
		want healthRequest
	}{
		{"empty", "", reqIncomplete},
		{"request line only so far", "GET / HTTP/1.1\r\n", reqIncomplete},
		{"part of the line", "GET /hea", reqIncomplete},
		{"get", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", reqGet},
		{"get any path, 1.0, bare LF", "GET /healthz?x=1 HTTP/1.0\n\n", reqGet},
		{"head", "HEAD /x HTTP/1.1\r\n\r\n", reqHead},
		{"options, HAProxy's default check", "OPTIONS / HTTP/1.0\r\n\r\n", reqGet},
		{"post", "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", reqMethod},
		{"lower-case method", "get / HTTP/1.1\r\n\r\n", reqBad},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", reqBad},
		{"no version", "GET /\r\n\r\n", reqBad},
		{"two spaces", "GET  / HTTP/1.1\r\n\r\n", reqBad},
		{"control in target", "GET /\x01 HTTP/1.1\r\n\r\n", reqBad},
		{"bad line known at once", "hello\n", reqBad},
		{"too long, no end", "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", max), reqBad},
		{"line too long", strings.Repeat("G", max), reqBad},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseHealthRequest([]byte(tc.in), max); got != tc.want {
				t.Errorf("parseHealthRequest(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

// FuzzHealthRequest: any bytes give a verdict without panicking; a full
// buffer is never left waiting for more; a verdict of GET or HEAD comes
// from a request line that says so.
func FuzzHealthRequest(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n\r\n", "HEAD / HTTP/1.0\n\n", "POST / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\n", "\n\n", "GET"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		const max = 256
		got := parseHealthRequest(b, max)
		if got < reqIncomplete || got > reqBad {
			t.Fatalf("verdict %d", got)
		}
		if len(b) >= max && got == reqIncomplete {
			t.Fatalf("%d bytes and still waiting", len(b))
		}
		if got == reqGet && !strings.HasPrefix(string(b), "GET ") && !strings.HasPrefix(string(b), "OPTIONS ") || got == reqHead && !strings.HasPrefix(string(b), "HEAD ") {
			t.Fatalf("%q taken for %d", b, got)
		}
		if a := healthAnswer(got, func() bool { return len(b)%2 == 0 }); !strings.HasPrefix(string(a), "HTTP/1.1 ") {
			t.Fatalf("answer %q", a)
		}
	})
}

// startHealth serves health checks on a real loopback socket, draining
// while the file state exists.
func startHealth(t *testing.T, state string, o healthOptions) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveHealth(ctx, []net.Listener{l}, healthState(state), o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveHealth: %v", err)
		}
	})
	return l.Addr().String()
}

// check sends raw to addr and returns the status line and body.
func check(t *testing.T, addr, raw string) (status, body string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: strings.Fields(raw + " x")[0]})
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Status, string(b)
}

// TestHealthAnswers: the endpoint follows the drain state file as it
// comes and goes, for GET on any path and HEAD, and refuses the rest.
func TestHealthAnswers(t *testing.T) {
	state := filepath.Join(t.TempDir(), "drain.json")
	addr := startHealth(t, state, healthOptions{})
	get := "GET /anything HTTP/1.1\r\nHost: lb\r\n\r\n"
	steps := []struct {
		name   string
		do     func()
		req    string
		status string
		body   string
	}{
		{"not draining", func() {}, get, "200 OK", "ok\n"},
		{"drained", func() {
			if err := writeDrain(state, drainState{Since: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}, get, "503 Service Unavailable", "draining\n"},
		{"head while draining", func() {}, "HEAD / HTTP/1.0\r\n\r\n", "503 Service Unavailable", ""},
		{"undone", func() {
			if err := os.Remove(state); err != nil {
				t.Fatal(err)
			}
		}, get, "200 OK", "ok\n"},
		{"post", func() {}, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 Method Not Allowed", "GET, HEAD or OPTIONS\n"},
		{"garbage", func() {}, "\x16\x03\x01 hello\r\n\r\n", "400 Bad Request", "bad request\n"},
	}
	for _, s := range steps {
		s.do()
		status, body := check(t, addr, s.req)
		if status != s.status || body != s.body {
			t.Errorf("%s: %q %q, want %q %q", s.name, status, body, s.status, s.body)
		}
	}
	if fi, err := os.Stat(filepath.Dir(state)); err != nil || !fi.IsDir() {
		t.Fatal(err)
	}
}

// TestHealthSlowClient: a client that sends nothing is cut at the
// deadline, and while it waits others are answered.
func TestHealthSlowClient(t *testing.T) {
	state := filepath.Join(t.TempDir(), "drain.json")
	const deadline = 500 * time.Millisecond
	addr := startHealth(t, state, healthOptions{Deadline: deadline})
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	begin := time.Now()
	if status, _ := check(t, addr, "GET / HTTP/1.1\r\n\r\n"); status != "200 OK" {
		t.Errorf("beside a slow client: %q", status)
	}
	slow.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := slow.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("slow client: read %v, want EOF at the server's deadline", err)
	}
	if d := time.Since(begin); d < deadline-50*time.Millisecond || d > 3*time.Second {
		t.Errorf("slow client cut after %v, deadline %v", d, deadline)
	}
}

// TestHealthFull: with every slot taken by slow clients, a new
// connection is closed at once, unanswered, rather than queued behind
// them (which would hold the load balancer's check for their deadline).
func TestHealthFull(t *testing.T) {
	state := filepath.Join(t.TempDir(), "drain.json")
	addr := startHealth(t, state, healthOptions{Deadline: 3 * time.Second, MaxParallel: 1})
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "GET / HTTP/1.1\r\n") // the header never ends
	// Accepted in order: the slow client has the one slot by now.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	begin := time.Now()
	c.SetDeadline(begin.Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
	b, _ := io.ReadAll(c)
	if len(b) != 0 || time.Since(begin) > 2*time.Second {
		t.Errorf("with the slot taken: %q after %v, want nothing at once", b, time.Since(begin))
	}
}
