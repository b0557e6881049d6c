//go:build !linux

package handoff

import (
	"errors"
	"fmt"
)

// Send needs Linux; here it returns an error matching errors.ErrUnsupported.
func Send(sock int, to string, h *Header, connFD int) error {
	return fmt.Errorf("handoff: send: %w", errors.ErrUnsupported)
}

// Receive needs Linux; here it returns an error matching
// errors.ErrUnsupported.
func Receive(sock int, h *Header) (connFD int, err error) {
	return -1, fmt.Errorf("handoff: receive: %w", errors.ErrUnsupported)
}

// ReceiveFrom needs Linux; here it returns an error matching
// errors.ErrUnsupported.
func ReceiveFrom(sock int, h *Header) (connFD int, cred Ucred, err error) {
	return -1, Ucred{}, fmt.Errorf("handoff: receive: %w", errors.ErrUnsupported)
}
