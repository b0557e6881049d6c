package activation_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/powerhouse/powerhouse/activation"
)

// A complete worker: the same binary serves under PowerHouse (sticky or
// shared), under systemd-socket-activate, and on a laptop with
// POWERHOUSE_LISTEN=127.0.0.1:8080.
func Example() {
	l, err := activation.Listen()
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// r.RemoteAddr is the original client, also behind PROXY protocol.
		fmt.Fprintf(w, "hello %s from %s@%s\n", r.RemoteAddr, activation.Group(), activation.Instance())
	})}
	if err := activation.Serve(context.Background(), srv, l); err != nil {
		log.Fatal(err)
	}
}

// A command-line flag gives the address used outside systemd; inherited
// sockets still win under systemd.
func ExampleListenConfig() {
	addr := flag.String("listen", "127.0.0.1:8080", "address when not socket-activated")
	flag.Parse()
	l, err := (&activation.ListenConfig{Addr: *addr}).Listen(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
}

// Sticky workers can learn which public listener a connection came in on.
func ExampleHandoffListener_AcceptHandoff() {
	l, err := activation.Listen()
	if err != nil {
		log.Fatal(err)
	}
	hl, ok := l.(*activation.HandoffListener)
	if !ok {
		log.Fatal("not a sticky instance")
	}
	for {
		c, h, err := hl.AcceptHandoff()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(c, "you came in on %s\n", h.Name)
		c.Close()
	}
}

// Behind a PROXY-protocol load balancer, RemoteAddr is the client; the
// socket itself is one type assertion away.
func ExampleConn() {
	var c net.Conn // from Accept
	if pc, ok := c.(*activation.Conn); ok {
		fmt.Println("client", pc.RemoteAddr(), "via", pc.NetConn().RemoteAddr())
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(false)
	}
}

func ExampleConfig() {
	var cfg struct {
		Port     int    `json:"port"`
		Greeting string `json:"greeting"`
	}
	load := func() {
		if err := activation.Config(&cfg); err != nil && !errors.Is(err, activation.ErrNoConfig) {
			log.Print(err)
		}
	}
	load()
	activation.OnReconfigure(load) // `powerhouse set web greeting=hi` ends here
}

// Without package state: an own ConfigFile, reloaded from an own signal
// handler, and ServeConfig, which leaves SIGHUP alone.
func ExampleConfigFile() {
	cfg := &activation.ConfigFile{Path: os.Getenv(activation.EnvConfig)}
	cfg.OnReload(func() { log.Print("reconfigured") })
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if err := cfg.Reload(); err != nil {
				log.Print(err)
			}
		}
	}()
	l, err := (&activation.ListenConfig{}).Listen(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	sc := &activation.ServeConfig{StopTimeout: activation.DefaultStopTimeout}
	if err := sc.Serve(context.Background(), &http.Server{}, l); err != nil {
		log.Fatal(err)
	}
}

func ExampleSend() {
	if err := activation.Send(context.Background(), "cache warmed"); err != nil {
		log.Print(err) // not under systemd: no journal
	}
}

func ExampleMalformed() {
	l, err := activation.Listen()
	if err != nil {
		log.Fatal(err)
	}
	if n, last := activation.Malformed(l); n > 0 {
		log.Printf("%d hand-offs dropped, last: %v", n, last)
	}
}

func ExampleRejected() {
	l, err := activation.Listen()
	if err != nil {
		log.Fatal(err)
	}
	if n, last := activation.Rejected(l); n > 0 {
		log.Printf("%d hand-offs from strangers refused, last: %v", n, last)
	}
}

// A long-poll returns early when the worker starts to drain, so that the
// client asks again and reaches the slot's new process, which is ready by
// then; a WebSocket handler would send its "reconnect" message there.
func ExampleDraining() {
	events := make(chan string)
	http.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		select {
		case e := <-events:
			fmt.Fprintln(w, e)
		case <-activation.Draining(r.Context()):
			w.WriteHeader(http.StatusServiceUnavailable) // ask again
		case <-r.Context().Done():
		}
	})
}

// OnDrain tells the application itself that the drain started, once.
func ExampleServeConfig_onDrain() {
	l, err := activation.Listen()
	if err != nil {
		log.Fatal(err)
	}
	sc := &activation.ServeConfig{OnDrain: func() { log.Print("draining: telling WebSocket clients to reconnect") }}
	if err := sc.Serve(context.Background(), &http.Server{}, l); err != nil {
		log.Fatal(err)
	}
}

// A worker that runs its own http.Server loop drains it with Track and
// Tracker.Shutdown: the same drain as Serve's, with the counts returned.
func ExampleTrack() {
	l, err := activation.Listen()
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{}
	tr := activation.Track(srv) // before srv serves
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	<-term
	res, err := tr.Shutdown(context.Background())
	log.Printf("drained %d connections, cut %d", res.Drained, res.Cut)
	if err != nil {
		log.Fatal(err)
	}
}

// A socket.io (engine.io) or cookie session whose id names the instance
// that created it: with affinity = "query:sid" (or "cookie:NAME") the
// dispatcher sends every later request of the session to this instance.
func ExampleNewSessionID() {
	id := activation.NewSessionID()
	_ = id // e.g. http.SetCookie(w, &http.Cookie{Name: "sid", Value: id}), or engine.io's generateId
}
