package activation

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/report"
)

// TestConnClosedNoAllocs: counting a closed connection, the one report
// cost every connection pays, does not allocate (and makes no system
// call: an atomic add, and at most once per flush a channel send).
func TestConnClosedNoAllocs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.sock")
	rcv, err := report.Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	r := newReporter(path)
	defer r.stop()
	if n := testing.AllocsPerRun(1000, r.connClosed); n != 0 {
		t.Errorf("connClosed allocates %v times per call", n)
	}
	var none *reporter // no report socket
	if n := testing.AllocsPerRun(1000, none.connClosed); n != 0 {
		t.Errorf("connClosed of no reporter allocates %v times per call", n)
	}
}

func BenchmarkConnClosed(b *testing.B) {
	path := filepath.Join(b.TempDir(), "report.sock")
	rcv, err := report.Listen(path, 0o600, -1)
	if err != nil {
		b.Fatal(err)
	}
	defer rcv.Close()
	r := newReporter(path)
	defer r.stop()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.connClosed()
		}
	})
}

// TestClosedRetried: closes whose report found the supervisor's queue full
// are reported once it has room, without waiting for another close.
func TestClosedRetried(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.sock")
	rcv, err := report.Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	filler, err := report.NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	queued := 0
	for ; ; queued++ {
		err := filler.Send(report.Draining{})
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r := newReporter(path)
	defer r.stop()
	for range 5 {
		r.connClosed()
	}
	// The flusher's send fails on the full queue (and logs it, once).
	for deadline := time.Now().Add(10 * time.Second); !r.failed.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Closed report never met the full queue")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < queued; i++ {
		if m, _, err := rcv.Recv(ctx); err != nil || m != (report.Draining{}) {
			t.Fatalf("filler %d: %v, %v", i, m, err)
		}
	}
	m, _, err := rcv.Recv(ctx)
	if err != nil {
		t.Fatalf("the closes were never reported: %v", err)
	}
	if m != (report.Closed{Count: 5}) {
		t.Errorf("report %#v, want Closed{5}", m)
	}
}

// TestHelloAfterSupervisorRestart: the worker repeats its Hello, so a
// supervisor that restarted (a new socket at the same path) learns what
// the workers that outlived it support.
func TestHelloAfterSupervisorRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.sock")
	first, err := report.Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	r := newReporter(path)
	defer r.stop()
	r.helloEvery = 20 * time.Millisecond
	r.hello(report.FeatureReloadOnSIGHUP)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := report.NewHello(report.FeatureReloadOnSIGHUP)
	if m, _, err := first.Recv(ctx); err != nil || m.Kind() != report.KindHello {
		t.Fatalf("first Hello: %v, %v", m, err)
	}
	first.Close() // the supervisor dies; its socket file stays
	second, err := report.Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	m, _, err := second.Recv(ctx)
	if err != nil {
		t.Fatalf("no Hello at the restarted supervisor: %v", err)
	}
	if h, ok := m.(report.Hello); !ok || h.Features != want.Features || h.Release != want.Release {
		t.Errorf("report %#v, want %#v", m, want)
	}
}

// TestNoHelloWhileDraining: once it drains, a worker no longer repeats its
// Hello: during a handover the slot's new process declares itself, and
// the old one's would take its place in the supervisor's records. Three
// periods pass with nothing but the Draining report: there is no event to
// wait for when the point is that nothing comes.
func TestNoHelloWhileDraining(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.sock")
	rcv, err := report.Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	r := newReporter(path)
	defer r.stop()
	r.helloEvery = 20 * time.Millisecond
	r.hello(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 { // the first and a repeat
		if m, _, err := rcv.Recv(ctx); err != nil || m.Kind() != report.KindHello {
			t.Fatalf("Hello: %v, %v", m, err)
		}
	}
	r.draining()
	r.draining() // once only
	for {
		m, _, err := rcv.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind() == report.KindDraining {
			break
		}
		// A Hello sent before draining() may still be queued.
	}
	quiet, cancelQuiet := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancelQuiet()
	if m, _, err := rcv.Recv(quiet); err == nil {
		t.Errorf("report %#v after Draining, want none", m)
	}
}
