package activation_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/report"
)

// childServeConfig serves with a ServeConfig, which leaves SIGHUP alone:
// $RELOAD_ON_SIGHUP=1 declares that the caller handles it.
func childServeConfig() int {
	l, err := activation.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sc := &activation.ServeConfig{ReloadOnSIGHUP: os.Getenv("RELOAD_ON_SIGHUP") == "1"}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	if err := sc.Serve(context.Background(), &http.Server{Handler: h}, l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// reportSocket binds a supervisor's report socket for the test.
func reportSocket(t *testing.T) (*report.Receiver, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "report.sock")
	r, err := report.Listen(path, 0o660, -1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, path
}

// next receives the next report, within 10 s.
func next(t *testing.T, r *report.Receiver) (report.Message, report.Sender) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, s, err := r.Recv(ctx)
	if err != nil {
		t.Fatalf("no report: %v", err)
	}
	return m, s
}

// TestServeReports runs a worker process as the generated unit does, with
// $POWERHOUSE_REPORT_SOCKET naming the supervisor's report socket: it
// says Hello first (its release, the hand-off versions it reads, and
// whether it reloads on SIGHUP), reports closed connections, and says it
// is draining on SIGTERM. Every report comes from the worker's own pid,
// the key by which the supervisor finds the instance.
func TestServeReports(t *testing.T) {
	tests := []struct {
		name     string
		mode     string
		env      []string
		features report.Features
	}{
		{name: "Serve reloads on SIGHUP", mode: "serve", features: report.FeatureReloadOnSIGHUP},
		{name: "ServeConfig leaves SIGHUP alone", mode: "servecfg", features: 0},
		{name: "ServeConfig declared", mode: "servecfg", env: []string{"RELOAD_ON_SIGHUP=1"}, features: report.FeatureReloadOnSIGHUP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, path := reportSocket(t)
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
			w := startChild(t, tt.mode, []*os.File{lf}, append(tt.env,
				"NOTIFY_SOCKET="+notify.path, report.SocketEnv+"="+path)...)

			m, from := next(t, r)
			want := report.Hello{Release: report.Release(), HandoffVersions: []uint8{handoff.Version}, Features: tt.features}
			if !reflect.DeepEqual(m, want) {
				t.Fatalf("first report %#v, want %#v", m, want)
			}
			if from.PID != int32(w.cmd.Process.Pid) {
				t.Errorf("sender pid %d, want the worker's %d", from.PID, w.cmd.Process.Pid)
			}
			if err := m.(report.Hello).Compatible(handoff.Version); err != nil {
				t.Errorf("this release's worker is not compatible with itself: %v", err)
			}
			notify.expect(t, "READY=1", "STOPPING=1")

			const conns = 7
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for range conns {
				get(t, client, "http://"+tcp.Addr().String()) // any answer: the point is the closed connection
			}
			total := uint64(0)
			for total < conns {
				m, from := next(t, r)
				c, ok := m.(report.Closed)
				if !ok {
					t.Fatalf("report %#v, want Closed (after %d of %d closes)", m, total, conns)
				}
				if from.PID != int32(w.cmd.Process.Pid) {
					t.Errorf("sender pid %d, want %d", from.PID, w.cmd.Process.Pid)
				}
				total += c.Count
			}
			if total != conns {
				t.Errorf("closed %d, want %d", total, conns)
			}

			w.cmd.Process.Signal(syscall.SIGTERM)
			if m, _ := next(t, r); m != (report.Draining{}) {
				t.Errorf("report after SIGTERM %#v, want Draining", m)
			}
			if err := w.wait(t, 10*time.Second); err != nil {
				t.Fatalf("worker exit: %v (stderr: %s)", err, w.stderr)
			}
		})
	}
}

// TestServeReportsCoalesced: a burst of closes is reported in few
// datagrams, at most one per 100 ms, and nothing more once the count
// stops changing.
func TestServeReportsCoalesced(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	r, path := reportSocket(t)
	_, cancel, url, done := startServe(t, &activation.ServeConfig{ReportSocket: path}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	if m, _ := next(t, r); m.Kind() != report.KindHello {
		t.Fatalf("first report %#v, want Hello", m)
	}
	const conns = 200
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	for range conns {
		get(t, client, url)
	}
	var total, reports uint64
	for total < conns {
		m, _ := next(t, r)
		c, ok := m.(report.Closed)
		if !ok {
			t.Fatalf("report %#v, want Closed", m)
		}
		total += c.Count
		reports++
	}
	elapsed := time.Since(start)
	if total != conns {
		t.Errorf("closed %d, want %d", total, conns)
	}
	// The flusher waits 100 ms after the first close it is woken for, so
	// however loaded the machine, no more than this can have been sent.
	if max := uint64(elapsed/(100*time.Millisecond)) + 1; reports > max {
		t.Errorf("%d Closed reports in %v, more than one per 100 ms (%d)", reports, elapsed, max)
	}
	t.Logf("%d closes in %d reports over %v", conns, reports, elapsed)
	// Nothing changed: no report. Three periods is the wait; there is no
	// event to wait for when the point is that nothing comes.
	ctx, cancelRecv := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelRecv()
	if m, _, err := r.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("report with nothing changed: %#v, %v", m, err)
	}
	cancel()
	if m, _ := next(t, r); m != (report.Draining{}) {
		t.Errorf("report after cancel %#v, want Draining", m)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestServeNoSupervisor: a report socket nobody reads never delays or
// fails serving; the failure is logged once.
func TestServeNoSupervisor(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	logs := captureLog(t)
	path := filepath.Join(t.TempDir(), "absent.sock")
	_, cancel, url, done := startServe(t, &activation.ServeConfig{ReportSocket: path}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range 3 {
		if got := get(t, client, url); got != "ok" {
			t.Fatalf("GET: %q", got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if n := strings.Count(out, "reporting to the supervisor"); n != 1 {
		t.Errorf("%d log lines about reporting, want 1:\n%s", n, out)
	}
}
