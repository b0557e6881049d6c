package main

import (
	"go/build"
	"strings"
	"testing"
)

// TestImportsNoCommand: the demo uses the library packages (supervisor,
// units, generator) like any program, and no command's package: an
// import of cmd/powerhouse/cli pointed up, from a tool to the CLI it
// drives (issue 12).
func TestImportsNoCommand(t *testing.T) {
	seen := map[string]bool{}
	var walk func(path, dir string, from []string)
	walk = func(path, dir string, from []string) {
		if seen[path] {
			return
		}
		seen[path] = true
		if strings.HasPrefix(path, module+"/cmd/") {
			t.Errorf("the demo imports %s (through %s)", path, strings.Join(from, " → "))
			return
		}
		p, err := build.Import(path, dir, 0)
		if err != nil {
			t.Fatalf("import %s: %v", path, err)
		}
		for _, imp := range p.Imports {
			if imp == module || strings.HasPrefix(imp, module+"/") {
				walk(imp, p.Dir, append(from, path))
			}
		}
	}
	walk(module+"/internal/demo", ".", nil)
	if len(seen) < 3 {
		t.Fatalf("only %d packages of the module found: the walk is broken", len(seen))
	}
}
