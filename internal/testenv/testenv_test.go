package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestBuild: the binaries land in a 0755 directory of the test's own,
// outside the source tree and /tmp, which is gone when the test ends.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary; skipped in -short mode")
	}
	var dir string
	t.Run("build", func(t *testing.T) {
		dir = Build(t, "./examples/hello")
		info, err := os.Stat(filepath.Join(dir, "hello"))
		if err != nil || info.Mode()&0o111 == 0 {
			t.Fatalf("hello: %v, mode %v", err, info.Mode())
		}
		if d, err := os.Stat(dir); err != nil || d.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v (%v), want 0755: the workers' user must enter it", dir, d.Mode(), err)
		}
		root, _ := CacheRoot()
		if filepath.Dir(dir) != root || !strings.HasPrefix(filepath.Base(dir), "testenv-") {
			t.Errorf("built into %s, want a testenv-* directory in %s", dir, root)
		}
		if strings.HasPrefix(dir, repoRoot(t)+"/") || underTmp(dir) {
			t.Errorf("built into %s: in the source tree or under /tmp", dir)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s is still there after the test: %v", dir, err)
	}
}

// TestCacheRoot follows $XDG_CACHE_HOME and refuses /tmp and /var/tmp.
func TestCacheRoot(t *testing.T) {
	for _, tc := range []struct {
		name, xdg, want, err string
	}{
		{name: "cache home", xdg: "/srv/cache", want: "/srv/cache/powerhouse-test"},
		{name: "tmp", xdg: "/tmp/cache", err: "XDG_CACHE_HOME"},
		{name: "var tmp", xdg: "/var/tmp", err: "/var/tmp/powerhouse-test lies under /tmp or /var/tmp"},
		{name: "look-alike", xdg: "/tmpfs/cache", want: "/tmpfs/cache/powerhouse-test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_CACHE_HOME", tc.xdg)
			got, err := CacheRoot()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("CacheRoot() = %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("CacheRoot() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestRemoveStale removes what killed runs left a day ago, not a run that
// may still be going.
func TestRemoveStale(t *testing.T) {
	root := t.TempDir()
	old, fresh := filepath.Join(root, "integration-1"), filepath.Join(root, "integration-2")
	for _, d := range []string{old, fresh} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	if err := os.Chtimes(old, now.Add(-25*time.Hour), now.Add(-25*time.Hour)); err != nil {
		t.Fatal(err)
	}
	removeStale(root, now)
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("a day-old directory is still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a current run's directory is gone: %v", err)
	}
}

// recorder stands in for a test to see what Program does to it: the real
// testing.T would end this test too.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatal(args ...any) {
	r.fatal = strings.TrimSuffix(fmt.Sprintln(args...), "\n") // as testing.T formats them
	runtime.Goexit()
}
func (r *recorder) Skip(args ...any) {
	r.skip = strings.TrimSuffix(fmt.Sprintln(args...), "\n")
	runtime.Goexit()
}

// runProgram calls Program on a recorder in a goroutine of its own, as
// the testing package runs a test, so that Goexit ends only that call.
func runProgram(name string) (r *recorder, path string) {
	r = &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path = Program(r, name)
	}()
	<-done
	return r, path
}

// TestProgram: a present program is found by an absolute path; a missing
// one (POWERHOUSE_TEST_MISSING) skips the test, or fails it with CI set,
// in one line naming the program and the command that installs it.
func TestProgram(t *testing.T) {
	const want = "make not found: install it with `sudo apt-get install make` (or run `sudo make test`, which installs what the tests need)"
	for _, tc := range []struct {
		name, missing, ci   string
		wantSkip, wantFatal string
		wantPath            bool
	}{
		{name: "present", wantPath: true},
		{name: "missing", missing: "node,make", wantSkip: "skipping: " + want},
		{name: "missing in CI", missing: "make", ci: "true", wantFatal: want},
		{name: "another missing", missing: "node", wantPath: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(MissingEnv, tc.missing)
			t.Setenv("CI", tc.ci)
			if tc.wantPath {
				if _, err := lookProgram("make"); err != nil {
					t.Skip(err) // the machine really lacks make
				}
			}
			r, path := runProgram("make")
			if r.skip != tc.wantSkip || r.fatal != tc.wantFatal {
				t.Errorf("skip %q, fatal %q; want skip %q, fatal %q", r.skip, r.fatal, tc.wantSkip, tc.wantFatal)
			}
			if tc.wantPath && !filepath.IsAbs(path) {
				t.Errorf("path %q, want an absolute path", path)
			}
			if strings.Contains(r.skip+r.fatal, "\n") {
				t.Errorf("more than one line: %q", r.skip+r.fatal)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		t.Setenv("CI", "")
		if r, _ := runProgram("nosuchprogram"); !strings.Contains(r.skip, "unknown program") {
			t.Errorf("skip %q, want unknown program", r.skip)
		}
	})
}

// TestProgramsInTestDeps: every program a test may ask for is one that
// tools/test-deps installs, from the same package.
func TestProgramsInTestDeps(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "tools", "test-deps"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)apt_pkgs=\((.*?)\)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("tools/test-deps has no apt_pkgs=(...) list")
	}
	pkgs := map[string]bool{}
	for _, f := range strings.Fields(string(m[1])) {
		pkg, _, _ := strings.Cut(f, ":")
		pkgs[pkg] = true
	}
	for name, p := range programs {
		if !pkgs[p.pkg] {
			t.Errorf("tools/test-deps does not install %s (for %s); it installs %v", p.pkg, name, pkgs)
		}
	}
}

// TestNodeModules: a module that is there at its version is found in the
// cache's node_modules; a missing one or one at another version skips the
// test, or fails it with CI set, in one line naming the command that
// installs it.
func TestNodeModules(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	dir := filepath.Join(cache, npmDirName, "node_modules")
	install := func(version string) {
		t.Helper()
		p := filepath.Join(dir, "socket.io-client")
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "package.json"), []byte(`{"name":"socket.io-client","version":"`+version+`"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(names ...string) (r *recorder, got string) {
		r = &recorder{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			got = NodeModules(r, names...)
		}()
		<-done
		return r, got
	}
	want := npmModules["socket.io-client"]
	for _, tc := range []struct {
		name, version, missing, ci string
		wantDir                    bool
		wantMsg                    string
	}{
		{name: "absent", wantMsg: "npm module socket.io-client not found in " + dir},
		{name: "absent in CI", ci: "true", wantMsg: "not found"},
		{name: "other version", version: "4.0.0", wantMsg: `is version "4.0.0", want ` + want},
		{name: "present", version: want, wantDir: true},
		{name: "present but named missing", version: want, missing: "socket.io-client", wantMsg: "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(dir)
			if tc.version != "" {
				install(tc.version)
			}
			t.Setenv(MissingEnv, tc.missing)
			t.Setenv("CI", tc.ci)
			r, got := run("socket.io-client")
			if tc.wantDir {
				if got != dir || r.skip != "" || r.fatal != "" {
					t.Errorf("got %q (skip %q, fatal %q), want %s", got, r.skip, r.fatal, dir)
				}
				return
			}
			msg := r.skip
			if tc.ci != "" {
				msg = r.fatal
			}
			if !strings.Contains(msg, tc.wantMsg) || !strings.Contains(msg, "make deps") || strings.Contains(msg, "\n") {
				t.Errorf("skip %q, fatal %q: want one line with %q naming make deps", r.skip, r.fatal, tc.wantMsg)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		t.Setenv("CI", "")
		if r, _ := run("left-pad"); !strings.Contains(r.skip, "unknown npm module") {
			t.Errorf("skip %q, want unknown npm module", r.skip)
		}
	})
}

// TestNodeModulesInTestDeps: every npm module a test may ask for is one
// that tools/test-deps installs, at the same version.
func TestNodeModulesInTestDeps(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "tools", "test-deps"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)npm_modules=\((.*?)\)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("tools/test-deps has no npm_modules=(...) list")
	}
	listed := strings.Fields(string(m[1]))
	for name, version := range npmModules {
		if !slices.Contains(listed, name+"@"+version) {
			t.Errorf("tools/test-deps does not install %s@%s; it installs %v", name, version, listed)
		}
	}
}
