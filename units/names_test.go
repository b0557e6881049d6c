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

// TestSides: both sides of an instance are named by Group, read back by
// SideOf, owned by their group only, and never a unit of another group
// (group names cannot hold the "." that marks side B).
func TestSides(t *testing.T) {
	web := Group{Name: "web"}
	webB := Group{Name: "web-b"}
	for _, tc := range []struct {
		unit   string
		n      int
		side   Side
		ok     bool
		webOwn bool
	}{
		{"powerhouse-web@3.service", 3, SideA, true, true},
		{"powerhouse-web.b@3.service", 3, SideB, true, true},
		{"powerhouse-web.b@03.service", 0, 0, false, true},
		{"powerhouse-web.b@0.service", 0, 0, false, true},
		{"powerhouse-web.b@3.socket", 0, 0, false, true},
		{"powerhouse-web-b@3.service", 0, 0, false, false},
		{"powerhouse-web.c@3.service", 0, 0, false, false},
		{"powerhouse@web.service", 0, 0, false, true},
	} {
		n, side, ok := web.SideOf(tc.unit)
		if n != tc.n || side != tc.side || ok != tc.ok {
			t.Errorf("SideOf(%q) = %d, %v, %v; want %d, %v, %v", tc.unit, n, side, ok, tc.n, tc.side, tc.ok)
		}
		if ok && web.InstanceSide(n, side) != tc.unit {
			t.Errorf("InstanceSide(%d, %v) = %q; want %q", n, side, web.InstanceSide(n, side), tc.unit)
		}
		if got := web.Owns(tc.unit); got != tc.webOwn {
			t.Errorf("web owns %q = %v; want %v", tc.unit, got, tc.webOwn)
		}
	}
	if web.InstanceSide(2, SideA) != web.Instance(2) {
		t.Errorf("side A of 2 = %q; want the contract's %q", web.InstanceSide(2, SideA), web.Instance(2))
	}
	if _, _, ok := webB.SideOf(web.InstanceSide(1, SideB)); ok {
		t.Errorf("group web-b claims %q", web.InstanceSide(1, SideB))
	}
	if SideA.Other() != SideB || SideB.Other() != SideA {
		t.Error("Other does not alternate")
	}
	pats := web.InstancePatterns()
	if len(pats) != 2 || pats[0] != web.InstancePattern() || pats[1] != "powerhouse-web.b@*.service" {
		t.Errorf("InstancePatterns = %q", pats)
	}
}
