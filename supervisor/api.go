package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The supervisor's API, on its control socket (units.Group.ControlPath):
// a unix stream socket, varlink-style. A call is one JSON object
// terminated by a NUL byte:
//
//	{"method": "io.powerhouse.Supervisor.Reload", "parameters": {...}, "more": true}
//
// The reply is one or more JSON objects, each NUL-terminated. With "more",
// progress comes first, each reply {"parameters": {...}, "continues": true};
// the last reply has no "continues". A failure is a last reply
// {"error": "io.powerhouse.Supervisor.Failed", "parameters": {"message": "..."}}.
// One call per connection. Why a socket of its own rather than a D-Bus
// name: it is the same in system and user scope, works under the
// supervisor's PrivateNetwork=, needs no bus policy file, and the caller is
// known from SO_PEERCRED (docs/ARCHITECTURE.md).
const (
	MethodStatus      = "io.powerhouse.Supervisor.Status"
	MethodReload      = "io.powerhouse.Supervisor.Reload"
	MethodScale       = "io.powerhouse.Supervisor.Scale"
	MethodReconfigure = "io.powerhouse.Supervisor.Reconfigure"
)

// Error names of failed calls.
const (
	// ErrFailed: the operation ran and failed; the message says where.
	ErrFailed = "io.powerhouse.Supervisor.Failed"
	// ErrInvalid: the call itself is wrong (unknown method, bad parameters).
	ErrInvalid = "io.powerhouse.Supervisor.InvalidParameter"
	// ErrDenied: the caller may not make this call (SO_PEERCRED).
	ErrDenied = "io.powerhouse.Supervisor.PermissionDenied"
	// ErrStopping: the supervisor is shutting down and takes no operation.
	ErrStopping = "io.powerhouse.Supervisor.Stopping"
)

// MaxMessage bounds one message on the control socket, either way.
const MaxMessage = 1 << 20

// ScaleParameters are the parameters of MethodScale.
type ScaleParameters struct {
	// Amount is the number of instances to run from now on (1 to
	// config.MaxAmount). The caller saved it in the configuration file
	// first: a supervisor that restarts reads it there.
	Amount int `json:"amount"`
}

// Progress is a reply that continues: one step of a long operation.
type Progress struct {
	Message  string `json:"message"`
	Instance int    `json:"instance,omitempty"`
}

// OperationResult is the last reply of Reload, Scale and Reconfigure.
type OperationResult struct {
	// Message says what was done, in one line for the operator.
	Message string `json:"message"`
	// Instances are the instances the operation restarted, signalled,
	// started or stopped.
	Instances []int `json:"instances,omitempty"`
	// Keys are the configuration keys that changed (Reconfigure).
	Keys []string `json:"keys,omitempty"`
}

// request is a call on the control socket.
type request struct {
	Method     string          `json:"method"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
	More       bool            `json:"more,omitempty"`
}

// reply is one reply on the control socket.
type reply struct {
	Parameters json.RawMessage `json:"parameters,omitempty"`
	Continues  bool            `json:"continues,omitempty"`
	Error      string          `json:"error,omitempty"`
}

// errorParameters are the parameters of an error reply.
type errorParameters struct {
	Message string `json:"message"`
}

// CallError is a failed call: Name is one of the Err* names, Message says
// what went wrong in the supervisor's words.
type CallError struct {
	Name    string
	Message string
}

func (e *CallError) Error() string { return e.Message }

// writeMessage writes v as one NUL-terminated JSON message.
func writeMessage(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) >= MaxMessage {
		return fmt.Errorf("message of %d bytes over the %d-byte bound", len(b), MaxMessage)
	}
	_, err = w.Write(append(b, 0))
	return err
}

// readMessage reads one NUL-terminated message of at most MaxMessage bytes
// into v, refusing unknown fields.
func readMessage(r *bufio.Reader, v any) error {
	var buf []byte
	for {
		chunk, err := r.ReadSlice(0)
		buf = append(buf, chunk...)
		if len(buf) > MaxMessage {
			return fmt.Errorf("message over the %d-byte bound", MaxMessage)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(buf) > 0 {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(buf[:len(buf)-1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad message: %w", err)
	}
	if dec.More() {
		return errors.New("bad message: data after the JSON object")
	}
	return nil
}

// Client calls one group's supervisor over its control socket.
type Client struct {
	// Path is the control socket: units.Group.ControlPath.
	Path string
	// DialTimeout bounds the connection; default 5s. A call itself is
	// bounded by its context: a rolling reload may take minutes.
	DialTimeout time.Duration
}

// Call makes one call. progress, when not nil, receives the progress
// replies as they come; result, when not nil, receives the last reply's
// parameters. A failed call returns a *CallError; a supervisor out of
// reach, an error that wraps the dial's (os.ErrNotExist or
// ECONNREFUSED when it does not run).
func (c *Client) Call(ctx context.Context, method string, params any, progress func(Progress), result any) error {
	d := net.Dialer{Timeout: c.DialTimeout}
	if d.Timeout == 0 {
		d.Timeout = 5 * time.Second
	}
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return fmt.Errorf("supervisor at %s: %w", c.Path, err)
	}
	defer conn.Close()
	// Ending ctx ends a call blocked in a read or write; the supervisor
	// goes on with the operation (it owns it) and reports its end.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := request{Method: method, More: progress != nil}
	if params != nil {
		if req.Parameters, err = json.Marshal(params); err != nil {
			return err
		}
	}
	if err := writeMessage(conn, req); err != nil {
		return c.fail(ctx, method, err)
	}
	r := bufio.NewReader(conn)
	for {
		var rep reply
		if err := readMessage(r, &rep); err != nil {
			return c.fail(ctx, method, err)
		}
		if rep.Error != "" {
			var ep errorParameters
			json.Unmarshal(rep.Parameters, &ep)
			if ep.Message == "" {
				ep.Message = rep.Error
			}
			return &CallError{Name: rep.Error, Message: ep.Message}
		}
		if rep.Continues {
			var p Progress
			if err := json.Unmarshal(rep.Parameters, &p); err != nil {
				return c.fail(ctx, method, err)
			}
			if progress != nil {
				progress(p)
			}
			continue
		}
		if result != nil && len(rep.Parameters) > 0 {
			if err := json.Unmarshal(rep.Parameters, result); err != nil {
				return c.fail(ctx, method, err)
			}
		}
		return nil
	}
}

func (c *Client) fail(ctx context.Context, method string, err error) error {
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return fmt.Errorf("%s on %s: %w", method, c.Path, err)
}

// Status returns the group's status as its supervisor sees it.
func (c *Client) Status(ctx context.Context) (GroupStatus, error) {
	var gs GroupStatus
	err := c.Call(ctx, MethodStatus, nil, nil, &gs)
	return gs, err
}

// Reload hands the group's instances over to new processes one at a
// time: each new one is ready before the old one is told to stop and
// drain (docs/ARCHITECTURE.md, "Reload").
func (c *Client) Reload(ctx context.Context, progress func(Progress)) (OperationResult, error) {
	var r OperationResult
	err := c.Call(ctx, MethodReload, nil, progress, &r)
	return r, err
}

// Scale makes the group run amount instances.
func (c *Client) Scale(ctx context.Context, amount int, progress func(Progress)) (OperationResult, error) {
	var r OperationResult
	err := c.Call(ctx, MethodScale, ScaleParameters{Amount: amount}, progress, &r)
	return r, err
}

// Reconfigure makes the supervisor re-read the configuration file and
// deliver the group's changed configuration to its workers.
func (c *Client) Reconfigure(ctx context.Context, progress func(Progress)) (OperationResult, error) {
	var r OperationResult
	err := c.Call(ctx, MethodReconfigure, nil, progress, &r)
	return r, err
}
