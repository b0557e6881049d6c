package cli

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain runs the test binary as powerhouse itself, through Main (all
// that cmd/powerhouse's main does), when a test re-executes it so.
func TestMain(m *testing.M) {
	if os.Getenv("POWERHOUSE_CLI_TEST_MAIN") == "1" {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}

// powerhouse returns the command that runs this test binary as
// `powerhouse args...`.
func powerhouse(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Args[0] = "powerhouse"
	cmd.Env = append(os.Environ(), "POWERHOUSE_CLI_TEST_MAIN=1")
	return cmd
}

// waitSyscall waits until a thread of process pid is blocked in the
// system call whose /proc/PID/task/TID/syscall line starts with prefix
// (number and first argument): the verb reached the wait under test.
func waitSyscall(t *testing.T, pid int, prefix string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "syscall"))
		for _, f := range tasks {
			if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(b), prefix) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond) // a poll with a deadline: /proc has no event for this
	}
	t.Fatalf("process %d never blocked in system call %q", pid, prefix)
}

// waitExit waits at most d for cmd to end and returns how it ended.
func waitExit(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%q still running after %v", cmd.Args, d)
		return nil
	}
}

// TestSignalsEndWaitingVerbs: Ctrl-C (SIGINT) and SIGTERM end a verb
// that waits for its input: before, main caught both for every verb, so
// `powerhouse set web password=-` waiting on standard input, or a verb
// opening a FIFO, could only be killed with SIGKILL.
func TestSignalsEndWaitingVerbs(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		syscall string // where the verb waits: read(0, ...) or openat
		sig     syscall.Signal
	}{
		{"set reading a value from standard input, SIGINT", []string{"set", "--config", cfg, "w", "password=-"}, "0 0x0 ", syscall.SIGINT},
		{"set reading a value from standard input, SIGTERM", []string{"set", "--config", cfg, "w", "password=-"}, "0 0x0 ", syscall.SIGTERM},
		{"generate opening a FIFO, SIGINT", []string{"generate", fifo}, "257 ", syscall.SIGINT},
		{"verify opening a FIFO, SIGTERM", []string{"verify", fifo}, "257 ", syscall.SIGTERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := powerhouse(t, tc.args...)
			stdin, err := cmd.StdinPipe() // held open: the value never comes
			if err != nil {
				t.Fatal(err)
			}
			defer stdin.Close()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitSyscall(t, cmd.Process.Pid, tc.syscall)
			cmd.Process.Signal(tc.sig)
			err = waitExit(t, cmd, 5*time.Second)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != tc.sig {
				t.Errorf("ended with %v, want killed by %v", err, tc.sig)
			}
		})
	}
}

// TestSignalsStopRunCleanly: the verbs that stop cleanly on a signal
// still catch it: run stops its instances and prints its counters.
func TestSignalsStopRunCleanly(t *testing.T) {
	cmd := powerhouse(t, "run", "--listen", "127.0.0.1:0", "--instances", "1", "--", "/bin/sleep", "60")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stderr)
	line, err := r.ReadString('\n')
	if !strings.Contains(line, "powerhouse run: 1 instances") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first line %q (%v)", line, err)
	}
	var rest bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&rest, r); close(copied) }()
	cmd.Process.Signal(syscall.SIGINT)
	<-copied
	if err := waitExit(t, cmd, 10*time.Second); err != nil {
		t.Errorf("run ended with %v after SIGINT, want exit status 0\n%s", err, rest.String())
	}
	if !strings.Contains(rest.String(), "connections handed off") {
		t.Errorf("run printed no counters:\n%s", rest.String())
	}
}
