package sticky

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/handoff"
)

// The test binary doubles as a worker process for the tests that need one
// a test can stop (SIGSTOP) for real: started again with STICKY_TEST_CHILD
// set and its hand-off socket as descriptor 3, it runs the named child
// instead of the tests.
const childEnv = "STICKY_TEST_CHILD"

func TestMain(m *testing.M) {
	switch mode := os.Getenv(childEnv); mode {
	case "":
		os.Exit(m.Run())
	case "stamp":
		os.Exit(childStamp())
	case "dispatch":
		os.Exit(childDispatch())
	case "netns":
		if err := setUpNetns(); err != nil {
			fmt.Fprintln(os.Stderr, "netns:", err)
			os.Exit(2)
		}
		os.Exit(m.Run())
	default:
		fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
		os.Exit(2)
	}
}

// childStamp receives hand-offs on descriptor 3 and answers each
// connection with the CLOCK_MONOTONIC time (8 bytes, big-endian
// nanoseconds) at which it received it, then closes it: the client
// measures its hand-off latency from its own connect() with the same
// clock.
func childStamp() int {
	const sock = 3
	var h handoff.Header
	fds := []unix.PollFd{{Fd: sock, Events: unix.POLLIN}}
	for {
		fd, err := handoff.Receive(sock, &h)
		if err == unix.EAGAIN {
			unix.Poll(fds, -1) // EINTR: receive again
			continue
		}
		if errors.Is(err, handoff.ErrMalformed) {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "stamp:", err)
			return 1
		}
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(ts.Nano()))
		// The client may be gone (flood clients close at once).
		unix.Sendto(fd, b[:], unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, nil)
		unix.Close(fd)
	}
}

// childDispatch runs a dispatcher with default options but QueueWait (a
// minute) on the listening socket at descriptor 3, over instances 1 to 3
// whose hand-off sockets are $STICKY_TEST_DIR/ID.sock, under a descriptor
// limit of $STICKY_TEST_NOFILE: the limit is the process's, so the test
// needs a process of its own.
func childDispatch() int {
	n, err := strconv.ParseUint(os.Getenv("STICKY_TEST_NOFILE"), 10, 64)
	if err == nil {
		var rl unix.Rlimit
		if err = unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
			rl.Cur = n
			err = unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dispatch: nofile:", err)
		return 1
	}
	dir := os.Getenv("STICKY_TEST_DIR")
	d := NewDispatcher(DispatcherOptions{
		Path:      func(id int) string { return filepath.Join(dir, strconv.Itoa(id)+".sock") },
		QueueWait: time.Minute,
	})
	d.Up.Replace(1, 2, 3)
	if err := d.Serve(context.Background(), []Listener{{Name: "public", File: os.NewFile(3, "public")}}); err != nil {
		fmt.Fprintln(os.Stderr, "dispatch:", err)
		return 1
	}
	return 0
}
