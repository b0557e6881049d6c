package cli

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// FuzzParseArgs: the command line parser never panics, on any verb's
// flags, and keeps every word after "--" as it is.
func FuzzParseArgs(f *testing.F) {
	f.Add("status\x00web\x00--json")
	f.Add("set\x00web\x00key=--x\x00--config=F\x00--\x00-x")
	f.Add("install\x00--root\x00--now\x00-\x00-1\x00--=\x00---x")
	names := make([]string, 0, len(verbs))
	for _, c := range verbs {
		n := c.name
		names = append(names, n)
	}
	sort.Strings(names)
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		for _, n := range names {
			fs := flag.NewFlagSet(n, flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			lookup(n).flags(fs)
			pos, err := parseArgs(fs, args, strings.Contains(lookup(n).args, "-- COMMAND"))
			if err != nil {
				continue
			}
			for i, a := range args {
				if a == "--" {
					rest := args[i+1:]
					if len(pos) < len(rest) || !equal(pos[len(pos)-len(rest):], rest) {
						t.Fatalf("%s %q: positional %q lost what follows --", n, args, pos)
					}
					break
				}
			}
		}
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzGenerateVerb: `powerhouse generate FILE` on any file content never
// panics, and answers 0 with units on standard output, or 2 with
// problems on standard error and nothing on standard output.
func FuzzGenerateVerb(f *testing.F) {
	for _, p := range []string{"../../../testdata/demo.toml", "../../../testdata/config/full.good.toml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(tinyConfig))
	f.Add([]byte("[[worker]]\nname = \"w\"\nexec = [\"/bin/sh\", \"-c\", \"exec /tmp/x\"]\n[worker.service]\nuser = \"root\"\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "f.toml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var o, e bytes.Buffer
		code := Run(context.Background(), []string{"powerhouse", "generate", "--binary", "/usr/bin/powerhouse", p}, &o, &e)
		switch {
		case code == ExitOK && !strings.HasPrefix(o.String(), "### "):
			t.Fatalf("exit 0 without units:\n%s", o.String())
		case code == ExitUsage && (o.Len() != 0 || e.Len() == 0):
			t.Fatalf("exit 2: stdout %q stderr %q", o.String(), e.String())
		case code != ExitOK && code != ExitUsage:
			t.Fatalf("exit %d: %s", code, e.String())
		}
	})
}
