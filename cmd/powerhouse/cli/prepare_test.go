package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestParseEnvLinesKeepsSecrets: a line of the prepare hook's output
// that is not KEY=VALUE fails the hook with its number, not its text:
// the output is the workers' environment (tokens, passwords) and the
// message goes to the journal.
func TestParseEnvLinesKeepsSecrets(t *testing.T) {
	for _, in := range []string{"TOKEN: s3cr3t\n", "A=1\n1TOKEN=s3cr3t\n", "A=1\n\n# c\n-x s3cr3t\n"} {
		_, err := parseEnvLines([]byte(in))
		if err == nil || strings.Contains(err.Error(), "s3cr3t") || !strings.Contains(err.Error(), "is not KEY=VALUE") {
			t.Errorf("%q: err %v, want the line number only", in, err)
		}
	}
	out, err := parseEnvLines([]byte("A=1\n# c\n\nB=x \"y\" $z\n"))
	if err != nil || string(out) != "A=\"1\"\nB=\"x \\\"y\\\" \\$z\"\n" {
		t.Errorf("good output: %q, %v", out, err)
	}
}

// TestPrepareOutputBound: a hook that prints without end fails the hook
// once it passed the bound, instead of filling the memory.
func TestPrepareOutputBound(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	code, _, stderr := runWithin(t, 20*time.Second, "prepare", "--output", out, "--", "/bin/sh", "-c", "yes A=1")
	if code != ExitFailure || !strings.Contains(stderr, "printed more than 1048576 bytes") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("the environment file was written")
	}
}
