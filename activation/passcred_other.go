//go:build !linux

package activation

import (
	"errors"
	"fmt"
)

// passCred needs Linux, like receiving hand-offs does.
func passCred(sock int) error {
	return fmt.Errorf("SO_PASSCRED: %w", errors.ErrUnsupported)
}
