package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cacheName is the directory under the user's cache directory that holds
// every run's binaries.
const cacheName = "powerhouse-test"

// staleAfter is the age past which a run's directory is taken for one
// that a killed run left behind.
const staleAfter = 24 * time.Hour

// Bin is a directory of binaries built for one test run.
type Bin struct {
	// Dir is the directory's absolute host path.
	Dir string
}

// CacheRoot returns the directory that holds the runs' binaries:
// powerhouse-test in the user's cache directory. It is an error when that
// lies under /tmp or /var/tmp, which a test systemd does not show.
func CacheRoot() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("testenv: no cache directory for the test binaries: %w (set XDG_CACHE_HOME or HOME)", err)
	}
	root, err := filepath.Abs(filepath.Join(base, cacheName))
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	if underTmp(root) {
		return "", fmt.Errorf("testenv: the cache directory %s lies under /tmp or /var/tmp, which a test systemd replaces: set XDG_CACHE_HOME to a directory elsewhere", root)
	}
	return root, nil
}

// underTmp reports whether p is /tmp, /var/tmp or below them.
func underTmp(p string) bool {
	for _, t := range []string{"/tmp", "/var/tmp"} {
		if p == t || strings.HasPrefix(p, t+"/") {
			return true
		}
	}
	return false
}

// NewBin makes a fresh, empty directory for this run's binaries, named
// after the test binary (integration.test → integration-NNN), with mode
// 0755. The caller removes it with Remove.
func NewBin() (*Bin, error) {
	root, err := CacheRoot()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	removeStale(root, time.Now())
	prefix := strings.TrimSuffix(filepath.Base(os.Args[0]), ".test") + "-"
	dir, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	// MkdirTemp makes it 0700: the workers' user must enter it once bound
	// into a box.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return &Bin{Dir: dir}, nil
}

// removeStale removes the runs' directories older than staleAfter: those
// of runs killed before their clean-up (a test timeout ends the process
// without running TestMain's deferred calls).
func removeStale(root string, now time.Time) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && e.IsDir() && now.Sub(info.ModTime()) > staleAfter {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// Build builds the packages, named as in the module's root
// ("./cmd/powerhouse"), into the directory, each binary named after its
// package's directory (powerhouse, hello, ...), in one go command.
func (b *Bin) Build(pkgs ...string) error {
	if len(pkgs) == 0 {
		return errors.New("testenv: Build: no package")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("testenv: the go command is not in PATH: cannot build %s", strings.Join(pkgs, " "))
	}
	mod, err := moduleRoot(goTool)
	if err != nil {
		return err
	}
	// A trailing slash makes -o a directory for every package's binary.
	cmd := exec.Command(goTool, append([]string{"build", "-o", b.Dir + "/"}, pkgs...)...)
	cmd.Dir = mod
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

// Path returns the path of the binary of package pkg in the directory.
func (b *Bin) Path(pkg string) string { return filepath.Join(b.Dir, filepath.Base(pkg)) }

// Remove removes the directory and everything in it.
func (b *Bin) Remove() error { return os.RemoveAll(b.Dir) }

// moduleRoot returns the directory of the go.mod that governs the working
// directory (a test runs in its package's directory).
func moduleRoot(goTool string) (string, error) {
	out, err := exec.Command(goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("testenv: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("testenv: the working directory is not inside the module")
	}
	return filepath.Dir(gomod), nil
}

// Dir returns a fresh, empty directory of the test's own, made as NewBin
// makes it and removed when the test ends: where a test has something
// other than the go command build binaries (make build).
func Dir(tb testing.TB) string {
	tb.Helper()
	b, err := NewBin()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Remove() })
	return b.Dir
}

// Build builds the packages into a directory of the test's own (see
// Bin.Build) and returns it; the directory is removed when the test ends.
// A failed build fails the test.
func Build(tb testing.TB, pkgs ...string) string {
	tb.Helper()
	b := &Bin{Dir: Dir(tb)}
	if err := b.Build(pkgs...); err != nil {
		tb.Fatal(err)
	}
	return b.Dir
}
