package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// npmDirName is the directory under the user's cache directory where
// tools/test-deps installs the npm modules the tests load
// (npm install --prefix), outside the source tree.
const npmDirName = "powerhouse-test-npm"

// npmModules lists every npm module a test asks NodeModules for, with the
// version tools/test-deps installs (TestNodeModulesInTestDeps keeps the
// two lists together).
var npmModules = map[string]string{
	"socket.io-client": "4.8.4",
}

// NodeModules returns the node_modules directory where tools/test-deps
// installs the npm modules the tests load, to hand to node as NODE_PATH,
// once every named module is there at the version test-deps installs.
// When one is missing (or POWERHOUSE_TEST_MISSING names it) the test is
// skipped, or fails when $CI is set, with one line that names it and the
// command that installs it. Each name must be one this package knows.
func NodeModules(tb testing.TB, names ...string) string {
	tb.Helper()
	dir, err := lookNodeModules(names)
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatal(err)
		}
		tb.Skip("skipping: " + err.Error())
	}
	return dir
}

// lookNodeModules checks the named modules in the cache's node_modules.
func lookNodeModules(names []string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("testenv: no cache directory for the npm modules: %w (set XDG_CACHE_HOME or HOME)", err)
	}
	dir := filepath.Join(base, npmDirName, "node_modules")
	missing := strings.Split(os.Getenv(MissingEnv), ",")
	for _, name := range names {
		want, ok := npmModules[name]
		if !ok {
			return "", fmt.Errorf("testenv: unknown npm module %q: add it to npmModules and to tools/test-deps", name)
		}
		install := fmt.Sprintf("run `sudo make deps` (tools/test-deps installs %s@%s into %s)", name, want, filepath.Dir(dir))
		if slices.Contains(missing, name) {
			return "", fmt.Errorf("npm module %s not found: %s", name, install)
		}
		b, err := os.ReadFile(filepath.Join(dir, name, "package.json"))
		if err != nil {
			return "", fmt.Errorf("npm module %s not found in %s: %s", name, dir, install)
		}
		var pkg struct {
			Version string `json:"version"`
		}
		if err := json.Unmarshal(b, &pkg); err != nil || pkg.Version != want {
			return "", fmt.Errorf("npm module %s in %s is version %q, want %s: remove it and %s", name, dir, pkg.Version, want, install)
		}
	}
	return dir, nil
}
