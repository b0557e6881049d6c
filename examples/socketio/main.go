// Command socketio is a PowerHouse example worker: a socket.io server in Go
// (github.com/zishang520/socket.io) whose engine.io session ids are minted
// by activation.NewSessionID, so that a sticky group with
//
//	affinity = "query:sid"
//	fallback = "spread"
//
// sends every request of a session to the instance that holds it, however
// many clients share one address (a NAT, a corporate proxy), while their
// first requests, which carry no sid yet, spread over the instances.
//
// The hook is the engine server's GenerateId, its documented way to choose
// session ids: see mintingEngine. Everything else is a plain socket.io
// server on an http.Server run by activation.Serve.
//
// It answers the event "whoami" (with an acknowledgement) with
//
//	{"group": "chat", "instance": "2", "pid": 4242, "sid": "ph2.…"}
//
// the group and instance from $POWERHOUSE_GROUP and $POWERHOUSE_INSTANCE,
// its process id, and the engine.io session id of the connection: a
// client that sees one pid for its whole life stayed on one process.
//
// It is a module of its own (go.mod beside this file), so that the
// PowerHouse module does not depend on socket.io. Outside PowerHouse run
// it with POWERHOUSE_LISTEN=127.0.0.1:8080; ids then carry no instance tag.
package main

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/zishang520/socket.io/servers/engine/v3"
	"github.com/zishang520/socket.io/servers/socket/v3"
	"github.com/zishang520/socket.io/v3/pkg/types"

	"github.com/powerhouse/powerhouse/activation"
)

// path is where socket.io clients look for the server by default.
const path = "/socket.io/"

func main() {
	log.SetFlags(0)
	l, err := activation.Listen()
	if err != nil {
		log.Fatalf("socketio: %v", err)
	}
	io, handler := newServer()
	// On SIGTERM (a stop, a reload's handover) the drain starts: closing
	// the socket.io server disconnects every client, whose pending polls
	// are answered at once, so they reconnect, to the slot's new process,
	// instead of holding the drain up for a ping interval.
	sc := &activation.ServeConfig{OnDrain: func() { io.Close(nil) }}
	if err := sc.Serve(context.Background(), &http.Server{Handler: handler}, l); err != nil {
		log.Fatalf("socketio: %v", err)
	}
}

// mintingEngine is an engine.io server whose session ids name the instance
// that minted them (activation.NewSessionID: "ph2.<22 base64url chars>").
// The dispatcher routes a request carrying such an id (?sid=ph2.…) to
// instance 2 while it is up, with no table of sessions anywhere.
type mintingEngine struct {
	engine.Server
}

// GenerateId overrides the engine's random id. The engine calls it through
// its prototype (see newEngine), as the library documents for custom ids.
func (*mintingEngine) GenerateId(*types.HttpContext) string {
	return activation.NewSessionID()
}

// newEngine builds a mintingEngine the way the library builds its own
// server (engine.NewServer): make, set the prototype to the outer value so
// that its GenerateId is the one called, then construct with the options.
func newEngine(opts any) *mintingEngine {
	e := &mintingEngine{Server: engine.MakeServer()}
	e.Prototype(e)
	e.Construct(opts)
	return e
}

// whoami is the answer to the "whoami" event.
type whoami struct {
	Group    string `json:"group"`
	Instance string `json:"instance"`
	PID      int    `json:"pid"`
	SID      string `json:"sid"`
}

// newServer returns the socket.io server and the HTTP handler that serves
// it (at /socket.io/, as clients expect by default).
func newServer() (*socket.Server, http.Handler) {
	opts := socket.DefaultServerOptions()
	opts.SetServeClient(false)
	io := socket.NewServer(nil, opts)
	eio := newEngine(opts)
	io.Bind(eio)
	pid := os.Getpid()
	io.On("connection", func(args ...any) {
		s, ok := args[0].(*socket.Socket)
		if !ok {
			return
		}
		s.On("whoami", func(args ...any) {
			if len(args) == 0 {
				return
			}
			// With an acknowledgement, the library passes the reply
			// function last.
			ack, ok := args[len(args)-1].(socket.Ack)
			if !ok {
				return
			}
			ack([]any{whoami{
				Group:    activation.Group(),
				Instance: activation.Instance(),
				PID:      pid,
				SID:      string(s.Conn().Id()),
			}}, nil)
		})
	})
	mux := http.NewServeMux()
	mux.Handle(path, eio)
	return io, mux
}
