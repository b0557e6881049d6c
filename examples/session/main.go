// Command session is a PowerHouse example worker that keeps its state in
// process memory: a small long-polling message service. A client opens a
// session, then polls it for messages while anyone who knows the session's
// id sends to it.
//
//	POST /session                        201 "session=<id> instance=web@2"
//	POST /session/{id}/send              body: one line of text; 204 when queued
//	GET  /session/{id}/poll?timeout=25s  200 with the queued messages, one per
//	                                     line, as soon as there is one; 204
//	                                     when none came within the timeout
//
// A send or a poll for a session this process does not hold answers 404
// "unknown session (this is web@2)". timeout is a Go duration ("500ms",
// "25s") or a number of seconds, at most two minutes; the default is 25s.
// Sessions not used for five minutes are forgotten.
//
// # Why stickiness matters
//
// A session lives in the memory of the one process that created it. Run
// four instances as a shared-socket group (sticky = false) and the kernel
// gives each new connection to whichever instance accepts first: a client's
// poll lands on the instance holding its session about one time in four,
// and the other polls get 404. Long-polling clients open new connections
// all the time (a poll times out, a proxy closes an idle connection, a
// browser uses several), so keep-alive does not save them. Under a sticky
// group (sticky = true) the dispatcher sends every connection from one
// client address to the same instance, and every poll finds its session;
// internal/integration's TestIntegrationSession shows both.
//
// Stickiness is not persistence: when an instance restarts (a crash, a
// `systemctl reload`), its sessions are gone, and its clients get 404 and
// open new ones. Keep state that must survive in a store outside the
// worker; keep in memory only what a client can rebuild.
//
// Outside PowerHouse the instance is dev@0; run it alone with
// POWERHOUSE_LISTEN=127.0.0.1:8080:
//
//	curl -X POST localhost:8080/session       # session=ID instance=dev@0
//	curl localhost:8080/session/ID/poll &     # waits...
//	curl -d hello localhost:8080/session/ID/send
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/powerhouse/powerhouse/activation"
)

const (
	defaultPollTimeout = 25 * time.Second
	maxPollTimeout     = 2 * time.Minute
	idleExpiry         = 5 * time.Minute
	queueLen           = 1024     // messages a session holds before sends are refused
	maxMessage         = 64 << 10 // bytes
)

func main() {
	log.SetFlags(0)
	l, err := activation.Listen()
	if err != nil {
		log.Fatalf("session: %v", err)
	}
	self := "dev@0"
	if activation.IsWorker() {
		self = activation.Group() + "@" + activation.Instance()
	}
	// Waiting polls end when the server shuts down (SIGTERM, a reload), so
	// that they do not hold up the graceful shutdown for their full timeout.
	stopping, stop := context.WithCancel(context.Background())
	s := newSessions(self, stopping)
	go s.expireEvery(stopping, time.Minute, idleExpiry)
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(stop)
	if err := activation.Serve(context.Background(), srv, l); err != nil {
		log.Fatalf("session: %v", err)
	}
}

// sessions holds every session of this process.
type sessions struct {
	self     string          // this instance, "web@2", for replies and 404s
	stopping context.Context // done when the server shuts down

	mu   sync.Mutex
	byID map[string]*session
}

type session struct {
	messages chan string // the queue: sends add, polls take
	lastUsed time.Time   // guarded by sessions.mu
}

func newSessions(self string, stopping context.Context) *sessions {
	return &sessions{self: self, stopping: stopping, byID: map[string]*session{}}
}

func (s *sessions) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /session", s.create)
	mux.HandleFunc("POST /session/{id}/send", s.send)
	mux.HandleFunc("GET /session/{id}/poll", s.poll)
	return mux
}

func (s *sessions) create(w http.ResponseWriter, r *http.Request) {
	id := rand.Text()
	s.mu.Lock()
	s.byID[id] = &session{messages: make(chan string, queueLen), lastUsed: time.Now()}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "session=%s instance=%s\n", id, s.self)
}

// lookup returns the request's session, or answers 404 and returns nil.
func (s *sessions) lookup(w http.ResponseWriter, r *http.Request) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byID[r.PathValue("id")]
	if sess == nil {
		http.Error(w, "unknown session (this is "+s.self+")", http.StatusNotFound)
		return nil
	}
	sess.lastUsed = time.Now()
	return sess
}

func (s *sessions) send(w http.ResponseWriter, r *http.Request) {
	sess := s.lookup(w, r)
	if sess == nil {
		return
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMessage))
	if err != nil {
		http.Error(w, "message: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	msg := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if strings.ContainsAny(msg, "\r\n") {
		// Polls answer one message per line.
		http.Error(w, "message: must be one line", http.StatusBadRequest)
		return
	}
	select {
	case sess.messages <- msg:
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "session queue full: poll it", http.StatusServiceUnavailable)
	}
}

func (s *sessions) poll(w http.ResponseWriter, r *http.Request) {
	sess := s.lookup(w, r)
	if sess == nil {
		return
	}
	timeout, err := pollTimeout(r.URL.Query().Get("timeout"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var msgs []string
	select {
	case m := <-sess.messages:
		msgs = append(msgs, m)
	case <-t.C:
	case <-s.stopping.Done():
	case <-r.Context().Done():
		return // the client left; its messages stay queued
	}
	if len(msgs) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// Answer with everything already queued, not just the first message.
	for more := true; more; {
		select {
		case m := <-sess.messages:
			msgs = append(msgs, m)
		default:
			more = false
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, strings.Join(msgs, "\n")+"\n")
}

// pollTimeout parses ?timeout=: a Go duration or a number of seconds.
func pollTimeout(v string) (time.Duration, error) {
	if v == "" {
		return defaultPollTimeout, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			return 0, fmt.Errorf("timeout: %q is neither a duration nor a number of seconds", v)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > maxPollTimeout {
		return 0, errors.New("timeout: must be between 0 and " + maxPollTimeout.String())
	}
	return d, nil
}

// expireEvery forgets, every period until ctx is done, the sessions not
// used for idle: a client that went away must not keep its queue forever.
func (s *sessions) expireEvery(ctx context.Context, period, idle time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.expire(now.Add(-idle))
		}
	}
}

// expire forgets the sessions last used before cutoff.
func (s *sessions) expire(cutoff time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, sess := range s.byID {
		if sess.lastUsed.Before(cutoff) {
			delete(s.byID, id)
		}
	}
}
