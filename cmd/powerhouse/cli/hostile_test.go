package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runWithin runs the command line args and fails the test if it has not
// returned after d.
func runWithin(t *testing.T, d time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		var o, e bytes.Buffer
		c := Run(context.Background(), append([]string{"powerhouse"}, args...), &o, &e)
		done <- result{c, o.String(), e.String()}
	}()
	select {
	case r := <-done:
		return r.code, r.out, r.err
	case <-time.After(d):
		t.Fatalf("%q still running after %v", args, d)
		return 0, "", ""
	}
}

// TestHostileConfigFiles: every verb that reads a configuration refuses a
// huge, endless or absurdly nested one at once, as a configuration error
// (exit status 2) naming the file; before, /dev/zero ran the process out
// of memory and 1 MB of nested tables took hours.
func TestHostileConfigFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	n := 200000
	files := []string{
		"/dev/zero",
		write("big.toml", tinyConfig+strings.Repeat("# padding\n", 200000)),
		write("deep.toml", tinyConfig+"k = "+strings.Repeat("{a=", n)+"1"+strings.Repeat("}", n)+"\n"),
		write("dotted.toml", tinyConfig+"k"+strings.Repeat(".a", n)+" = 1\n"),
	}
	root := filepath.Join(dir, "root")
	for _, f := range files {
		for _, args := range [][]string{
			{"generate", f},
			{"verify", f},
			{"install", "--root", root, "--binary", "/usr/bin/powerhouse", f},
			{"status", "--config", f},
			{"reload", "--config", f},
			{"set", "--config", f, "w", "k=1"},
			{"scale", "--config", f, "w", "2"},
		} {
			code, stdout, stderr := runWithin(t, 10*time.Second, args...)
			if code != ExitUsage || stdout != "" || !strings.Contains(stderr, f+":") || strings.Count(stderr, "\n") != 1 {
				t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and one line naming the file", args, code, stdout, stderr)
			}
		}
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Error("install wrote under --root for a refused configuration")
	}
}
