package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const boundsBase = "[[worker]]\nname = \"w\"\nexec = \"/bin/true\"\n[worker.config]\n"

// parseWithin parses src and fails the test if that takes longer than d:
// a hostile file must not hang every verb and the boot-time generator.
func parseWithin(t *testing.T, d time.Duration, src string) (*Config, error) {
	t.Helper()
	type result struct {
		c   *Config
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := Parse("/x.toml", []byte(src))
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-time.After(d):
		t.Fatalf("Parse still running after %v on %d bytes", d, len(src))
		return nil, nil
	}
}

// TestNestingBound: values, tables and dotted keys nested more than
// MaxNesting levels are refused, at once, with the line; the TOML
// decoder alone took 13 s and gigabytes on 32 KB of nested inline tables.
func TestNestingBound(t *testing.T) {
	deep := MaxNesting + 1
	huge := (MaxFileSize - len(boundsBase) - 20) / 4 // as deep as fits in the size bound
	for _, tc := range []struct {
		name string
		src  string
	}{
		{"inline tables", boundsBase + "k = " + strings.Repeat("{a=", deep) + "1" + strings.Repeat("}", deep) + "\n"},
		{"arrays", boundsBase + "k = " + strings.Repeat("[", deep) + strings.Repeat("]", deep) + "\n"},
		{"dotted key", boundsBase + "k" + strings.Repeat(".a", deep) + " = 1\n"},
		{"table header", boundsBase + "[worker.config" + strings.Repeat(".a", deep) + "]\nx = 1\n"},
		{"inline tables over lines", boundsBase + "k = [\n" + strings.Repeat("{a=[\n", deep/2+1) + "1" + strings.Repeat("]}\n", deep/2+1) + "]\n"},
		{"as deep as the size allows", boundsBase + "k = " + strings.Repeat("{a=", huge) + "1" + strings.Repeat("}", huge) + "\n"},
		{"dotted, as long as the size allows", boundsBase + "k" + strings.Repeat(".a", huge*2-10) + " = 1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseWithin(t, 5*time.Second, tc.src)
			var l ErrorList
			if !errors.As(err, &l) || len(l) != 1 || l[0].Line < 5 || !strings.Contains(l[0].Msg, "nested more than") {
				t.Fatalf("err %v, want one nesting error on line 5 or after", err)
			}
		})
	}
	// Brackets and dots in strings and comments are no nesting, nor is a
	// configuration nested as deep as allowed.
	ok := MaxNesting - 3 // worker, config, k and the levels below
	for _, tc := range []struct{ name, src string }{
		{"strings", boundsBase + "a = \"" + strings.Repeat("[{.", 100) + "\"\nb = '" + strings.Repeat("[{.", 100) + "'\n" +
			"c = \"\"\"\n" + strings.Repeat("[{.\\\"\"\"", 50) + "\n\"\"\"\"\"\nd = '''" + strings.Repeat("[{.'", 50) + "''''\n"},
		{"comments", boundsBase + "# " + strings.Repeat("[{.", 100) + "\nk = 1 # " + strings.Repeat("{", 100) + "\n"},
		{"escaped quotes", boundsBase + "a = \"\\\"" + strings.Repeat("[", 100) + "\"\n"},
		{"at the limit", boundsBase + "k = " + strings.Repeat("{a=", ok) + "1.5" + strings.Repeat("}", ok) + "\n"},
		{"floats and dates", boundsBase + "k = [" + strings.Repeat("1.5, ", 200) + "1979-05-27T07:32:00.999Z]\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseWithin(t, 5*time.Second, tc.src); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSizeBound: a file over MaxFileSize, or an endless one, is a
// configuration error naming the file, read no further than the bound.
func TestSizeBound(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.toml")
	big := boundsBase + strings.Repeat("# padding\n", MaxFileSize/10)
	if err := os.WriteFile(p, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p, "/dev/zero"} {
		_, err := Load(path)
		var l ErrorList
		if !errors.As(err, &l) || !strings.HasPrefix(err.Error(), path+": larger than") {
			t.Errorf("Load(%s): %v, want a configuration error naming the file", path, err)
		}
	}
	if _, err := Parse("/x.toml", []byte(big)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Parse of %d bytes: %v", len(big), err)
	}
	if _, err := Parse("/x.toml", []byte(big[:MaxFileSize])); err != nil {
		t.Errorf("Parse of MaxFileSize bytes: %v", err)
	}
}

// TestGroupBound: more than MaxGroups groups is one error on the line of
// the first one too many.
func TestGroupBound(t *testing.T) {
	var b strings.Builder
	for i := 0; i <= MaxGroups; i++ {
		fmt.Fprintf(&b, "[[worker]]\nname = \"w%d\"\nexec = \"/bin/true\"\n", i)
	}
	_, err := parseWithin(t, 5*time.Second, b.String())
	var l ErrorList
	if !errors.As(err, &l) || len(l) != 1 || l[0].Line != 3*MaxGroups+1 || l[0].Key != "worker" || !strings.Contains(l[0].Msg, "more than 1000") {
		t.Fatalf("%d groups: %v", MaxGroups+1, err)
	}
	all := b.String()
	if _, err := Parse("/x.toml", []byte(all[:strings.LastIndex(all, "[[worker]]")])); err != nil {
		t.Errorf("%d groups: %v", MaxGroups, err)
	}
}
