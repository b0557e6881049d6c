package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestRoundTrip runs the minimal client against a real net/http server over
// loopback, with each way a response can be framed.
func TestRoundTrip(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/length", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "instance=web@2 pid=1 remote=x\n")
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "instance=")
		w.(http.Flusher).Flush() // forces chunked encoding
		fmt.Fprint(w, strings.Repeat("a", 5000)+" tail\n")
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprint(w, "hello from worker 1\n")
	})
	mux.HandleFunc("/unavailable", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	for _, tc := range []struct {
		name, path string
		reqClose   bool
		status     int
		close      bool
		instance   string
	}{
		{name: "content-length keep-alive", path: "/length", status: 200, instance: "web@2"},
		{name: "content-length, client asks to close", path: "/length", reqClose: true, status: 200, close: true, instance: "web@2"},
		{name: "chunked", path: "/chunked", status: 200, instance: strings.Repeat("a", 5000)},
		{name: "server closes", path: "/close", status: 200, close: true, instance: "hello from worker 1"},
		{name: "error status", path: "/unavailable", status: 503, instance: "busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &options{addr: addr, host: addr, path: tc.path, timeout: 5 * time.Second}
			w := newWorker(o, o.dialers(), o.request(tc.reqClose))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			// Twice on one connection, unless it closes: a parser that
			// leaves bytes behind fails the second round trip.
			for i := 0; i < 2; i++ {
				res, err := w.roundTrip(c)
				if err != nil {
					t.Fatalf("round trip %d: %v", i, err)
				}
				if res.status != tc.status || res.close != tc.close || string(res.instance) != tc.instance {
					t.Fatalf("round trip %d: got status %d close %v instance %q, want %d %v %q",
						i, res.status, res.close, res.instance, tc.status, tc.close, tc.instance)
				}
				if res.close {
					break
				}
			}
		})
	}
}

// TestSources checks that connections are bound to the source addresses
// given, round-robin, as the server sees them.
func TestSources(t *testing.T) {
	seen := make(chan string, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		seen <- host
		fmt.Fprint(w, "ok")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	o := &options{addr: addr, host: addr, path: "/", timeout: 5 * time.Second, sources: 3, srcBase: net.IPv4(127, 0, 0, 2).To4()}
	ds := o.dialers()
	for i := 0; i < 6; i++ {
		c, err := ds[i%len(ds)].Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		w := newWorker(o, ds, o.request(true))
		if _, err := w.roundTrip(c); err != nil {
			t.Fatal(err)
		}
		c.Close()
		want := fmt.Sprintf("127.0.0.%d", 2+i%3)
		if got := <-seen; got != want {
			t.Fatalf("connection %d came from %s, want %s", i, got, want)
		}
	}
}

func TestInstanceOf(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"hello", "instance=web@2 pid=42 remote=127.0.0.2:5000\n", "web@2"},
		{"at end", "instance=run@1", "run@1"},
		{"peer body", "hello from worker 0\n", "hello from worker 0"},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(instanceOf([]byte(tc.body))); got != tc.want {
				t.Errorf("instanceOf(%q) = %q, want %q", tc.body, got, tc.want)
			}
		})
	}
}

// TestRate: the open loop offers on schedule whatever the server does. A
// server that answers gets every offer made and answered; one that never
// answers holds the -conns slots, and every later offer is counted missed
// (not silently delayed, as a closed loop would).
func TestRate(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "instance=web@1\n")
	}))
	defer ok.Close()
	stuck := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-stuck }))
	defer func() { close(stuck); hung.Close() }()

	for _, tc := range []struct {
		name       string
		url        string
		conns      int
		wantMissed bool
	}{
		{"answering server", ok.URL, 64, false},
		{"server that never answers", hung.URL, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := strings.TrimPrefix(tc.url, "http://")
			o := &options{addr: addr, host: addr, path: "/", timeout: 2 * time.Second, conns: tc.conns,
				rate: 400, duration: 500 * time.Millisecond}
			rr, err := rate(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			// 400/s for 0.5 s: 200 offers in the window.
			if rr.offered != 200 {
				t.Errorf("offered %d, want 200", rr.offered)
			}
			if !tc.wantMissed {
				if rr.missed != 0 || rr.requests != rr.offered || rr.errTotal() != 0 {
					t.Errorf("missed %d, answered %d of %d, errors %d", rr.missed, rr.requests, rr.offered, rr.errTotal())
				}
				return
			}
			// The 4 slots were taken at the start and time out after 2 s.
			if rr.missed < rr.offered-4 || rr.requests != 0 {
				t.Errorf("missed %d of %d offers, answered %d; want all but the in-flight ones missed", rr.missed, rr.offered, rr.requests)
			}
		})
	}
}

// TestQueryKey: with -query-key every request of a source carries that
// source's fixed key (what a query:NAME affinity row routes by), in the
// closed loop and in the open one, and no source ever sends another's.
func TestQueryKey(t *testing.T) {
	type seen struct{ src, key, path string }
	got := make(chan seen, 1<<16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		got <- seen{host, r.URL.Query().Get("sid"), r.URL.Path}
		fmt.Fprint(w, "instance=web@1\n")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, mode := range []string{"load", "rate"} {
		t.Run(mode, func(t *testing.T) {
			o := &options{addr: addr, host: addr, path: "/", timeout: 2 * time.Second, conns: 4, sources: 3,
				srcBase: net.IPv4(127, 0, 0, 2).To4(), queryKey: "sid", duration: 200 * time.Millisecond}
			var err error
			if mode == "load" {
				err = runLoad(t.Context(), o) // prints its result line
			} else {
				o.rate = 200
				_, err = rate(t.Context(), o)
			}
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for len(got) > 0 {
				s := <-got
				n++
				last := s.src[strings.LastIndexByte(s.src, '.')+1:]
				want := map[string]string{"2": "k0", "3": "k1", "4": "k2"}[last]
				if s.key != want || s.path != "/" {
					t.Fatalf("from %s: path %q sid %q, want / and %q", s.src, s.path, s.key, want)
				}
			}
			if n == 0 {
				t.Fatal("no request reached the server")
			}
		})
	}
	if err := (&options{addr: addr, conns: 1, queryKey: "a b"}).resolve("", "127.0.0.2"); err == nil {
		t.Error("-query-key \"a b\" accepted")
	}
}
