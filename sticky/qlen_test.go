package sticky

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests that fill a hand-off queue (fillQueue) measure its length
// rather than assume the host's net.unix.max_dgram_qlen (10 here, often
// 512 on hosts tuned for load). TestFillQueueAnyQueueLength runs them
// again where the length is something else: in network namespaces of
// their own (the sysctl is per namespace, and a fresh one starts at 10),
// never by writing the host's.
const (
	qlenEnv   = "STICKY_TEST_QLEN"   // the max_dgram_qlen the child sets
	hostNSEnv = "STICKY_TEST_HOSTNS" // the inode of the parent's network namespace
)

// TestFillQueueAnyQueueLength runs the queue-full tests in a child test
// process in a new network namespace with max_dgram_qlen 3, 10 and 512.
// With 512, a single filler socket ran out of its own send buffer long
// before the queue was full, and TestDispatchFallback failed.
func TestFillQueueAnyQueueLength(t *testing.T) {
	if testing.Short() {
		t.Skip("starts test processes in network namespaces; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		why := "needs root to make a network namespace: sudo make test"
		if os.Getenv("CI") != "" {
			t.Fatal(why)
		}
		t.Skip("skipping: " + why)
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	for _, qlen := range []int{3, 10, 512} {
		t.Run(strconv.Itoa(qlen), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.count=1", "-test.v",
				"-test.run=^(TestDispatchFallback|TestDispatchWaitsForRoomBeforeFallback)$")
			cmd.Env = append(os.Environ(), childEnv+"=netns",
				qlenEnv+"="+strconv.Itoa(qlen), hostNSEnv+"="+strconv.FormatUint(st.Ino, 10))
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("max_dgram_qlen %d: %v\n%s", qlen, err, out)
			}
			for _, name := range []string{"TestDispatchFallback", "TestDispatchWaitsForRoomBeforeFallback"} {
				if !strings.Contains(string(out), "--- PASS: "+name+" ") {
					t.Errorf("max_dgram_qlen %d: %s did not pass:\n%s", qlen, name, out)
				}
			}
		})
	}
}

// setUpNetns runs in the child: it checks that it is in a network
// namespace other than its parent's (or it would write the host's
// sysctl), brings up its loopback and sets max_dgram_qlen.
func setUpNetns() error {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		return err
	}
	if host := os.Getenv(hostNSEnv); host == "" || host == strconv.FormatUint(st.Ino, 10) {
		return fmt.Errorf("not in a network namespace of its own (parent's %q, own %d): refusing to touch net.unix.max_dgram_qlen", host, st.Ino)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	const sysctl = "/proc/sys/net/unix/max_dgram_qlen"
	want := os.Getenv(qlenEnv)
	if err := os.WriteFile(sysctl, []byte(want+"\n"), 0o644); err != nil {
		return err
	}
	if b, err := os.ReadFile(sysctl); err != nil || strings.TrimSpace(string(b)) != want {
		return fmt.Errorf("%s is %q after writing %s: %v", sysctl, b, want, err)
	}
	return nil
}
