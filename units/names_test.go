package units

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// handBuilt matches Go source that builds a unit name by hand: a
// "powerhouse-" or "powerhouse@" literal concatenated or formatted with
// something, or a ".service"/".socket" suffix glued onto a name.
var handBuilt = regexp.MustCompile(
	// a unit prefix glued to something: "powerhouse-" + g, "powerhouse-web@" + n
	`"powerhouse(-[a-z0-9_-]*)?@?"\s*\+|` +
		// a unit name formatted: Sprintf("powerhouse-%s@%d.service", ...)
		`Sprintf\("powerhouse[-@][^"]*%|` +
		// an instance suffix glued on: g + "@1.service", g + "@*"
		`\+\s*"@[^"]*\.(service|socket)"|\+\s*"@\*`)

// TestNoHandBuiltUnitNames: every unit name comes from Group (layout.go),
// in the generator, supervisor, CLI, demo and tests alike, so that a name
// cannot drift between the code that writes it and the code that reads it.
func TestNoHandBuiltUnitNames(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	self, err := filepath.Abs("layout.go")
	if err != nil {
		t.Fatal(err)
	}
	selfTest, err := filepath.Abs("names_test.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || p == self || p == selfTest {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		checked++
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "//") {
				continue
			}
			if handBuilt.MatchString(line) {
				rel, _ := filepath.Rel(root, p)
				t.Errorf("%s:%d: unit name built by hand (use units.Group): %s", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked only %d Go files under %s: is the walk wrong?", checked, root)
	}
}

// TestHandBuiltPattern: the pattern catches the ways a name gets built,
// and leaves names written out whole alone.
func TestHandBuiltPattern(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{`u := "powerhouse-" + group + "@1.service"`, true},
		{`fmt.Sprintf("powerhouse-%s@%d.service", g, n)`, true},
		{`"powerhouse@"+name`, true},
		{`g + "@*.service"`, true},
		{`unit := "powerhouse-web@"+string(rune('0'+i))+".service"`, true},
		{`journal.Send("powerhouse-generator: "+l)`, false},
		{`self = activation.Group() + "@" + activation.Instance()`, false},
		{`const unit = "powerhouse@web.service"`, false},
		{`g.Instance(3)`, false},
		{`who = fmt.Sprintf("%s@%d", e.Group, e.Instance)`, false},
	} {
		if got := handBuilt.MatchString(tc.line); got != tc.want {
			t.Errorf("%q: matched %v, want %v", tc.line, got, tc.want)
		}
	}
}

func TestInstanceFDName(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		ok   bool
	}{
		{"instance-1", 1, true}, {"instance-1024", 1024, true},
		{"instance-0", 0, false}, {"instance-01", 0, false}, {"instance-", 0, false},
		{"instance-x", 0, false}, {"public", 0, false}, {"handoff", 0, false}, {"instance--1", 0, false},
	} {
		n, ok := InstanceOfFDName(tc.name)
		if n != tc.n || ok != tc.ok {
			t.Errorf("InstanceOfFDName(%q) = %d, %v; want %d, %v", tc.name, n, ok, tc.n, tc.ok)
		}
		if ok && InstanceFDName(n) != tc.name {
			t.Errorf("InstanceFDName(%d) = %q", n, InstanceFDName(n))
		}
	}
	if g := (Group{Name: "web"}); g.InstanceSocket(3) != "powerhouse-web@3.socket" || g.InstanceSocketTemplate() != "powerhouse-web@.socket" || g.UnitInstanceSocket() != "powerhouse-web@%i.socket" {
		t.Errorf("instance socket names: %s %s %s", g.InstanceSocket(3), g.InstanceSocketTemplate(), g.UnitInstanceSocket())
	}
}
