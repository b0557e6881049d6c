package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/config"
)

// Bounds of the control socket: everyone may connect (mode 0666), so
// nobody may hold more than these.
const (
	// maxConns bounds the connections served at once; one more is told
	// so and closed.
	maxConns = 64
	// requestTimeout bounds the wait for the request, once connected.
	requestTimeout = 5 * time.Second
	// writeTimeout bounds each reply: a caller that stops reading loses
	// its replies, the operation goes on.
	writeTimeout = 5 * time.Second
	// maxRequest bounds a request: the largest real one is a few dozen
	// bytes (MaxMessage bounds replies, a status of many instances).
	maxRequest = 64 << 10
)

// call is a request checked: a known method and its parameters.
type call struct {
	method string
	amount int // MethodScale
}

// readRequest reads one request of at most maxRequest bytes.
func readRequest(r io.Reader) (request, error) {
	lr := &io.LimitedReader{R: r, N: maxRequest}
	var req request
	err := readMessage(bufio.NewReader(lr), &req)
	if err != nil && lr.N == 0 {
		return req, fmt.Errorf("request over %d bytes", maxRequest)
	}
	return req, err
}

// parseCall checks a request: a method of api.go and its parameters,
// decoded strictly. Errors are ErrInvalid.
func parseCall(req request) (call, error) {
	c := call{method: req.Method}
	noParams := func() error {
		p := bytes.TrimSpace(req.Parameters)
		if len(p) == 0 || string(p) == "null" || string(p) == "{}" {
			return nil
		}
		return invalid("%s takes no parameters", req.Method)
	}
	switch req.Method {
	case MethodStatus, MethodReload, MethodReconfigure:
		return c, noParams()
	case MethodScale:
		var p ScaleParameters
		if len(bytes.TrimSpace(req.Parameters)) == 0 {
			return c, invalid(`%s needs parameters {"amount": N}`, req.Method)
		}
		dec := json.NewDecoder(bytes.NewReader(req.Parameters))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return c, invalid("%s: parameters: %v", req.Method, err)
		}
		if dec.More() {
			return c, invalid("%s: parameters: data after the object", req.Method)
		}
		if p.Amount < 1 || p.Amount > config.MaxAmount {
			return c, invalid("%s: amount %d: use 1 to %d", req.Method, p.Amount, config.MaxAmount)
		}
		c.amount = p.Amount
		return c, nil
	case "":
		return c, invalid("no method")
	}
	if len(req.Method) > 100 {
		return c, invalid("unknown method")
	}
	return c, invalid("unknown method %q", req.Method)
}

// listenControl binds the control socket, units.Group.ControlPath, mode
// 0666: every local user may ask for the status, the caller of every
// other method is checked per call (SO_PEERCRED). A file left by a
// supervisor that did not end cleanly is removed first.
func (s *Supervisor) listenControl() (*net.UnixListener, error) {
	p := s.g.ControlPath()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("control socket: remove the stale %s: %w", p, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(p, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}

// serveControl serves the control socket until ctx ends, one call per
// connection, at most maxConns at once.
func (s *Supervisor) serveControl(ctx context.Context, l *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	sem := make(chan struct{}, maxConns)
	backoff := time.Duration(0)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait, the kernel queues meanwhile.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("control socket: accept failed", "err", err, "retry in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case sem <- struct{}{}:
		default:
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			writeError(c, ErrFailed, fmt.Sprintf("the supervisor of %s serves %d calls already; try again", s.o.Group, maxConns))
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer c.Close()
			s.handle(ctx, c)
		}()
	}
}

// peerUID is the uid of the process at the other end of c.
func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Uid), nil
}

// handle serves one call.
func (s *Supervisor) handle(ctx context.Context, c *net.UnixConn) {
	uid, err := peerUID(c)
	if err != nil {
		s.log.Warn("control socket: no peer credentials", "err", err)
		return
	}
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	req, err := readRequest(c)
	if err != nil {
		writeError(c, ErrInvalid, fmt.Sprintf("bad request: %v", err))
		return
	}
	c.SetReadDeadline(time.Time{})
	cl, err := parseCall(req)
	if err != nil {
		name, msg := errorName(err)
		writeError(c, name, msg)
		return
	}
	// Root and the supervisor's own user may do anything; anyone may ask
	// for the status, which then hides the values of secret keys.
	privileged := uid == 0 || uid == s.uid
	if cl.method == MethodStatus {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		writeReply(c, s.groupStatus(sctx, privileged), false)
		return
	}
	if !privileged {
		s.log.Warn("control socket: call refused", "method", cl.method, "uid", uid)
		writeError(c, ErrDenied, fmt.Sprintf("%s: uid %d may not call it: only root and the supervisor's user (uid %d) may", cl.method, uid, s.uid))
		return
	}
	var progress chan Progress
	if req.More {
		progress = make(chan Progress, 64)
	}
	var op *operation
	switch cl.method {
	case MethodReload:
		op, err = s.enqueue("reload", s.reload, progress)
	case MethodScale:
		op, err = s.enqueue("scale", s.scale(cl.amount), progress)
	case MethodReconfigure:
		op, err = s.enqueue("reconfigure", s.reconfigure, progress)
	}
	if err != nil {
		name, msg := errorName(err)
		writeError(c, name, msg)
		return
	}
	s.log.Info("operation asked", "operation", op.name, "uid", uid)
	// The operation runs in runOps whatever happens here: a caller that
	// goes away only stops getting replies.
	for {
		select {
		case p := <-progress:
			if writeReply(c, p, true) != nil {
				return
			}
		case r := <-op.done:
			// Progress sent before the end goes first.
			for len(progress) > 0 {
				if writeReply(c, <-progress, true) != nil {
					return
				}
			}
			if r.err != nil {
				name, msg := errorName(r.err)
				writeError(c, name, msg)
				return
			}
			writeReply(c, r.res, false)
			return
		}
	}
}

func writeReply(c net.Conn, params any, continues bool) error {
	b, err := json.Marshal(params)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return writeMessage(c, reply{Parameters: b, Continues: continues})
}

func writeError(c net.Conn, name, msg string) error {
	b, _ := json.Marshal(errorParameters{Message: msg})
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return writeMessage(c, reply{Error: name, Parameters: b})
}
