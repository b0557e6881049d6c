//go:build linux

package activation

import "golang.org/x/sys/unix"

// passCred sets SO_PASSCRED on the hand-off socket sock.
func passCred(sock int) error {
	return unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
}
