package cli

import (
	"strings"
	"testing"
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
