// Command hello is the PowerHouse example worker: an HTTP server on
// activation.Listen that answers GET / with one line naming the instance,
// its pid and the client:
//
//	instance=web@2 pid=4242 remote=203.0.113.7:51234
//
// GET /config shows the group's configuration as the worker last read it
// (it re-reads it on SIGHUP, after `powerhouse set`), and POST /message
// sends its body as a worker.message event.
//
// GET /echo with "Connection: Upgrade" and "Upgrade: line-echo" switches
// the connection to a line protocol (101 Switching Protocols): every line
// the client sends comes back as the answer line with the client's line
// after " echo=",
//
//	instance=web@2 pid=4242 remote=203.0.113.7:51234 echo=<line>
//
// until the client closes the connection. It stands for a WebSocket: a
// long-lived connection that net/http hands over to the handler
// (hijacked) and no longer tracks, which the activation library lets end
// on its own while the worker drains after SIGTERM (a handover reload).
// A line is at most 1 KiB (a longer one ends the connection with an
// "error:" line) and a client silent for a minute is disconnected.
//
// Outside PowerHouse the instance is dev@0. It runs the same under
// PowerHouse (sticky or shared), under systemd-socket-activate, and alone
// with POWERHOUSE_LISTEN=127.0.0.1:8080. The demo, the integration tests and
// the benchmarks use it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/powerhouse/powerhouse/activation"
)

func main() {
	log.SetFlags(0)
	l, err := activation.Listen()
	if err != nil {
		log.Fatalf("hello: %v", err)
	}
	group, instance := "dev", "0"
	if activation.IsWorker() {
		group, instance = activation.Group(), activation.Instance()
	}
	line := fmt.Sprintf("instance=%s@%s pid=%d remote=", group, instance, os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s%s\n", line, r.RemoteAddr)
	})
	// GET /config answers the group's configuration as this worker last
	// read it: at start, and again after every `powerhouse set` (SIGHUP).
	var cfg atomic.Value
	load := func() {
		var m map[string]any
		if err := activation.Config(&m); err == nil {
			b, _ := json.Marshal(m)
			cfg.Store(b)
		}
	}
	load()
	activation.OnReconfigure(load)
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		b, _ := cfg.Load().([]byte)
		if b == nil {
			http.Error(w, "no configuration", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(b, '\n'))
	})
	// POST /message sends the body to the supervisor's event stream
	// (worker.message in journald).
	mux.HandleFunc("POST /message", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err := activation.Send(r.Context(), string(b)); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "sent")
	})
	mux.HandleFunc("GET /echo", echo(line))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := activation.Serve(context.Background(), srv, l); err != nil {
		log.Fatalf("hello: %v", err)
	}
}
