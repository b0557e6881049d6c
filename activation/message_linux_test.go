package activation_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

const hostJournal = "/run/systemd/journal/socket"

// TestSendJournal checks the journal entry Send writes, field by field. The
// journal socket path is a link-time variable of go-systemd's journal
// package, so the test builds a copy of this test binary pointed at a
// socket of its own, rather than writing to the host's journal.
func TestSendJournal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a test binary; skipped in -short mode")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not in PATH: cannot build the test binary")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "journal.sock")
	j, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	// Out of /tmp and the source tree, as every binary a test builds.
	bin := filepath.Join(testenv.Dir(t), "activation.test")
	build := exec.Command(goTool, "test", "-c", "-o", bin,
		"-ldflags=-X github.com/coreos/go-systemd/v22/journal.journalSocket="+sock, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=send", "SEND_MSG=two\nlines",
		activation.EnvGroup+"=web", activation.EnvInstance+"=2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("Send in the child: %v\n%s", err, out)
	}
	j.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 65536)
	n, err := j.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	got := parseJournal(t, b[:n])
	want := map[string]string{
		"MESSAGE":             "two\nlines",
		"MESSAGE_ID":          activation.MessageIDWorkerMessage,
		"PRIORITY":            "6",
		"POWERHOUSE_EVENT":    "worker.message",
		"POWERHOUSE_GROUP":    "web",
		"POWERHOUSE_INSTANCE": "2",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s=%q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want exactly %v", got, want)
	}
}

// parseJournal decodes journald's native protocol: KEY=VALUE lines, or KEY,
// newline, 64-bit little-endian length, value, newline for values with
// newlines.
func parseJournal(t *testing.T, b []byte) map[string]string {
	t.Helper()
	m := map[string]string{}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			t.Fatalf("journal entry: unterminated line %q", b)
		}
		line := string(b[:i])
		b = b[i+1:]
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
			continue
		}
		if len(b) < 8 {
			t.Fatalf("journal entry: short binary field %q", line)
		}
		n := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if uint64(len(b)) < n+1 {
			t.Fatalf("journal entry: field %s longer than the entry", line)
		}
		m[line] = string(b[:n])
		b = b[n+1:]
	}
	return m
}

func TestSendNoJournal(t *testing.T) {
	if _, err := os.Stat(hostJournal); err == nil {
		t.Skipf("%s exists: this host runs a journal, and the test must not write to it", hostJournal)
	}
	err := activation.Send(context.Background(), "hello")
	if err == nil || !strings.Contains(err.Error(), "journal") {
		t.Errorf("Send without a journal: %v, want an error naming the journal", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := activation.Send(ctx, "hello"); err == nil {
		t.Error("Send with a cancelled context: no error")
	}
}
