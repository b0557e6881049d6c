package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

var healthVerb = verb{
	name:    "health",
	signals: true,
	short:   "(internal) answer the house's health checks (what " + units.HealthService + " runs)",
	long: `Runs as ` + units.HealthService + `, on the socket systemd passes it
(the top-level health key): every connection that sends an HTTP/1.0 or
HTTP/1.1 GET, HEAD or OPTIONS (HAProxy's default check), whatever the
path, gets "200 ok", or "503 draining"
while the drain state file exists (powerhouse drain writes it, powerhouse
drain --undo removes it), and is closed. Any other method gets 405, a
malformed or oversized request 400. A request must arrive within 2s and
fit in 8 KiB; at most 64 checks are answered at a time, and a connection
beyond that is closed at once, so that a slow or hostile client never
holds up the load balancer's checks.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		state := fs.String("state", units.System.DrainState(), "the drain state `FILE`")
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("takes no arguments")
			}
			ls, err := activation.Listeners()
			if err != nil {
				return fmt.Errorf("health: the sockets systemd passes: %w", err)
			}
			var live []net.Listener
			for _, l := range ls {
				if l != nil {
					live = append(live, l)
				}
			}
			if len(live) == 0 {
				return usagef("runs as %s, on the socket systemd passes it (LISTEN_FDS): set health in the configuration and install it", units.HealthService)
			}
			fmt.Fprintf(e.stderr, "health: answering on %s; draining while %s exists\n", live[0].Addr(), *state)
			return serveHealth(e.ctx, live, healthState(*state), healthOptions{})
		}
	},
}

// drainState is what the drain state file holds: when the drain began.
type drainState struct {
	Since time.Time `json:"since"`
}

// maxDrainState bounds a read of the drain state file: it holds one
// timestamp.
const maxDrainState = 4096

// readDrain returns the drain state at path, and false when the house is
// not draining (no file).
func readDrain(path string) (drainState, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return drainState{}, false, nil
	}
	if err != nil {
		return drainState{}, false, err
	}
	defer f.Close()
	b := make([]byte, maxDrainState+1)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return drainState{}, true, fmt.Errorf("read %s: %w", path, err)
	}
	var st drainState
	if n > maxDrainState {
		return st, true, fmt.Errorf("read %s: more than %d bytes", path, maxDrainState)
	}
	if err := json.Unmarshal(b[:n], &st); err != nil {
		return st, true, fmt.Errorf("read %s: %w", path, err)
	}
	return st, true, nil
}

// writeDrain writes the drain state at path atomically (the health
// service reads it at any moment), world-readable: it is no secret, and
// the health service runs as a user of its own.
func writeDrain(path string, st drainState) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = units.WriteFile(path, append(b, '\n'), units.Public)
	return err
}

// healthState returns whether the house drains, as the health service
// sees it: the file at path exists. A state it cannot tell (the file is
// there but cannot be looked at) counts as draining: a host that cannot
// say it is well is taken out of rotation, which shows, rather than
// kept in it while its operator drains it.
func healthState(path string) func() bool {
	return func() bool {
		_, err := os.Stat(path)
		return !errors.Is(err, fs.ErrNotExist)
	}
}

// healthOptions bound the health service; the zero value means the
// documented defaults.
type healthOptions struct {
	MaxRequest  int           // bytes of a request, headers included (8 KiB)
	Deadline    time.Duration // for reading the request and writing the answer (2s)
	MaxParallel int           // checks answered at a time (64)
}

func (o healthOptions) withDefaults() healthOptions {
	if o.MaxRequest <= 0 {
		o.MaxRequest = 8 << 10
	}
	if o.Deadline <= 0 {
		o.Deadline = 2 * time.Second
	}
	if o.MaxParallel <= 0 {
		o.MaxParallel = 64
	}
	return o
}

// serveHealth answers health checks on ls until ctx ends, then waits for
// the checks in flight (each bounded by the deadline).
func serveHealth(ctx context.Context, ls []net.Listener, draining func() bool, o healthOptions) error {
	o = o.withDefaults()
	slots := make(chan struct{}, o.MaxParallel)
	var wg sync.WaitGroup
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					errc <- err
					return
				}
				select {
				case slots <- struct{}{}:
				default:
					// Full: never queue behind slow clients.
					c.Close()
					continue
				}
				wg.Add(1)
				go func() {
					defer func() { <-slots; wg.Done() }()
					answerHealth(c, draining, o)
				}()
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("health: accept: %w", err)
	}
	for _, l := range ls {
		l.Close()
	}
	wg.Wait()
	return err
}

// answerHealth reads one request from c, within the deadline and the size
// bound, answers it and closes c.
func answerHealth(c net.Conn, draining func() bool, o healthOptions) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(o.Deadline))
	buf := make([]byte, o.MaxRequest)
	n, req := 0, reqIncomplete
	for req == reqIncomplete {
		m, err := c.Read(buf[n:])
		n += m
		req = parseHealthRequest(buf[:n], o.MaxRequest)
		if err != nil && req == reqIncomplete {
			return // closed or too slow: nobody to answer
		}
	}
	c.Write(healthAnswer(req, draining))
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
}

// healthRequest is what parseHealthRequest makes of a request.
type healthRequest int

const (
	reqIncomplete healthRequest = iota // the header has not ended yet
	reqGet                             // GET (or OPTIONS): status and body
	reqHead                            // HEAD: status alone
	reqMethod                          // a method other than GET and HEAD: 405
	reqBad                             // malformed, or longer than allowed: 400
)

// parseHealthRequest reads the HTTP/1.x request in b, which holds the
// bytes received so far: reqIncomplete until its header ends (an empty
// line) within max bytes. Only the request line is looked at, and must
// be METHOD SP TARGET SP HTTP/1.0 or HTTP/1.1; the headers are read past,
// so that closing the connection does not reset it under the answer.
func parseHealthRequest(b []byte, max int) healthRequest {
	line, _, lineDone := bytes.Cut(b, []byte("\n"))
	switch {
	case lineDone && !validRequestLine(bytes.TrimSuffix(line, []byte("\r"))):
		return reqBad // no need to wait for the rest
	case !lineDone || !bytes.Contains(b, []byte("\n\r\n")) && !bytes.Contains(b, []byte("\n\n")):
		if len(b) >= max {
			return reqBad
		}
		return reqIncomplete
	}
	method, _, _ := bytes.Cut(line, []byte(" "))
	switch string(method) {
	case "GET", "OPTIONS": // OPTIONS: what HAProxy's plain "option httpchk" sends
		return reqGet
	case "HEAD":
		return reqHead
	}
	return reqMethod
}

// validRequestLine checks METHOD SP TARGET SP HTTP/1.x: a method of
// upper-case letters, a target of visible ASCII.
func validRequestLine(line []byte) bool {
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 || len(parts[0]) == 0 || len(parts[0]) > 16 || len(parts[1]) == 0 {
		return false
	}
	for _, c := range parts[0] {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	for _, c := range parts[1] {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	v := string(parts[2])
	return v == "HTTP/1.0" || v == "HTTP/1.1"
}

// healthAnswer is the whole answer to req, the house draining or not.
func healthAnswer(req healthRequest, draining func() bool) []byte {
	status, body, extra := "400 Bad Request", "bad request\n", ""
	switch req {
	case reqGet, reqHead:
		status, body = "200 OK", "ok\n"
		if draining() {
			status, body = "503 Service Unavailable", "draining\n"
		}
	case reqMethod:
		status, body, extra = "405 Method Not Allowed", "GET, HEAD or OPTIONS\n", "Allow: GET, HEAD, OPTIONS\r\n"
	}
	head := fmt.Sprintf("HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nCache-Control: no-store\r\nConnection: close\r\n%s\r\n", status, len(body), extra)
	if req == reqHead {
		return []byte(head)
	}
	return []byte(head + body)
}

// applyHealth brings a running house's health endpoint in line with a
// reinstalled configuration c (install --now, the target active): when
// the endpoint's address changed, went away, or its units were rewritten
// (a new binary), its service and socket are stopped, and the target's
// start that follows starts the socket again if c still has one (a new
// endpoint is started by it too). A check in that moment is refused, as
// a host's would be while it restarts.
func applyHealth(e *env, m units.Manager, old, c *config.Config, written []string, unitDir string) {
	if old == nil || old.Health == nil {
		return // nothing running to change; the target's start starts a new one
	}
	changed := c.Health == nil || c.Health.Address != old.Health.Address
	for _, p := range written {
		if p == filepath.Join(unitDir, units.HealthSocket) || p == filepath.Join(unitDir, units.HealthService) {
			changed = true
		}
	}
	if !changed {
		return
	}
	what := "restarting it on its new units"
	switch {
	case c.Health == nil:
		what = "removing it"
	case c.Health.Address != old.Health.Address:
		what = "moving it to " + c.Health.Address
	}
	fmt.Fprintf(e.stderr, "install: health endpoint %s: %s\n", old.Health.Address, what)
	m.Stop(e.ctx, units.HealthService) // a unit never started cannot be stopped: fine
	m.Stop(e.ctx, units.HealthSocket)
}
