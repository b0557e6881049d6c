//go:build !linux

package report

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Receiver is the supervisor's end of a group's report socket; it needs
// Linux (SCM_CREDENTIALS).
type Receiver struct{}

// Listen needs Linux; here it returns an error matching
// errors.ErrUnsupported.
func Listen(path string, perm os.FileMode, gid int) (*Receiver, error) {
	return nil, fmt.Errorf("report: listen %s: %w", path, errors.ErrUnsupported)
}

// Path returns "".
func (r *Receiver) Path() string { return "" }

// Recv returns an error matching errors.ErrUnsupported.
func (r *Receiver) Recv(ctx context.Context) (Message, Sender, error) {
	return nil, Sender{}, fmt.Errorf("report: receive: %w", errors.ErrUnsupported)
}

// Close does nothing.
func (r *Receiver) Close() error { return nil }

// Client is a worker's end of the report socket; it needs Linux.
type Client struct{}

// NewClient needs Linux; here it returns an error matching
// errors.ErrUnsupported.
func NewClient(path string) (*Client, error) {
	return nil, fmt.Errorf("report: client %s: %w", path, errors.ErrUnsupported)
}

// Send returns an error matching errors.ErrUnsupported.
func (c *Client) Send(m Message) error {
	return fmt.Errorf("report: send: %w", errors.ErrUnsupported)
}

// Close does nothing.
func (c *Client) Close() error { return nil }
