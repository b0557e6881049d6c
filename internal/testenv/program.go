package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// MissingEnv names the environment variable that makes Program treat the
// programs it lists (comma-separated) as missing.
const MissingEnv = "POWERHOUSE_TEST_MISSING"

// program is what the tests know of a program they run for real.
type program struct {
	pkg string // the Debian package that installs it (tools/test-deps)
	// paths are looked at before PATH: the system's copy, which the
	// workers' unprivileged user in a box can run, rather than one under
	// a home directory (a pyenv shim in /root/.pyenv); and sbin is often
	// missing from a non-root user's PATH.
	paths []string
}

// programs lists every program a test asks Program for; tools/test-deps
// installs the same packages (TestProgramsInTestDeps checks it).
var programs = map[string]program{
	"curl":                    {pkg: "curl", paths: []string{"/usr/bin/curl"}},
	"haproxy":                 {pkg: "haproxy", paths: []string{"/usr/sbin/haproxy"}},
	"make":                    {pkg: "make", paths: []string{"/usr/bin/make"}},
	"node":                    {pkg: "nodejs", paths: []string{"/usr/bin/node"}},
	"python3":                 {pkg: "python3", paths: []string{"/usr/bin/python3", "/usr/local/bin/python3"}},
	"systemd-socket-activate": {pkg: "systemd", paths: []string{"/usr/bin/systemd-socket-activate", "/lib/systemd/systemd-socket-activate", "/usr/lib/systemd/systemd-socket-activate"}},
}

// Program returns the absolute path of the program name, which a test
// runs for real. When it is missing the test is skipped, or fails when $CI
// is set, with one line that names it and the command that installs it.
// name must be one of the programs this package knows.
func Program(tb testing.TB, name string) string {
	tb.Helper()
	p, err := lookProgram(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatal(err)
		}
		tb.Skip("skipping: " + err.Error())
	}
	return p
}

// lookProgram finds name in PATH or at its usual paths, or says how to
// install it.
func lookProgram(name string) (string, error) {
	prog, ok := programs[name]
	if !ok {
		// A test asks for a program nobody taught this package or
		// tools/test-deps: a mistake in the test, not in the machine.
		return "", fmt.Errorf("testenv: unknown program %q: add it to programs and to tools/test-deps", name)
	}
	if !slices.Contains(strings.Split(os.Getenv(MissingEnv), ","), name) {
		for _, p := range prog.paths {
			if info, err := os.Stat(p); err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
				return p, nil
			}
		}
		if p, err := exec.LookPath(name); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				return abs, nil
			}
		}
	}
	return "", fmt.Errorf("%s not found: install it with `sudo apt-get install %s` (or run `sudo make test`, which installs what the tests need)", name, prog.pkg)
}
