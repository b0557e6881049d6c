package units

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

const testManifest = "/etc/powerhouse/.installed.json"

// testTree is the system layout the CLI installs, under root.
func testTree(root string) Tree {
	return Tree{Root: root, Manifest: testManifest, Dirs: []string{"/etc/powerhouse", "/etc/systemd/system"}}
}

func TestApplyIdempotentAndUninstall(t *testing.T) {
	root := t.TempDir()
	tree := testTree(root)
	// A file install did not write must survive everything.
	os.MkdirAll(filepath.Join(root, "etc/systemd/system"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/systemd/system/other.service"), []byte("x"), 0o644)
	files := []File{
		{Path: "/etc/powerhouse/powerhouse.toml", Data: []byte("a"), Perm: Secret, Adopt: true},
		{Path: "/etc/systemd/system/a.service", Data: []byte("A"), Perm: Public},
		{Path: "/etc/systemd/system/b.service", Data: []byte("B"), Perm: Public},
		{Path: "/etc/systemd/system/multi-user.target.wants/a.service", Link: "/etc/systemd/system/a.service"},
	}
	r, err := tree.Apply(files)
	if err != nil || len(r.Written) != 4 || len(r.Adopted) != 0 {
		t.Fatalf("first apply: %+v %v", r, err)
	}
	st, _ := os.Stat(filepath.Join(root, "etc/systemd/system/a.service"))
	r, err = tree.Apply(files)
	if err != nil || r.Changed() || len(r.Unchanged) != 4 {
		t.Fatalf("second apply changed something: %+v %v", r, err)
	}
	if st2, _ := os.Stat(filepath.Join(root, "etc/systemd/system/a.service")); !st2.ModTime().Equal(st.ModTime()) {
		t.Error("an unchanged file was rewritten")
	}
	// b goes away, a changes.
	files2 := []File{files[0], {Path: files[1].Path, Data: []byte("A2"), Perm: Public}, files[3]}
	r, err = tree.Apply(files2)
	if err != nil || len(r.Written) != 1 || len(r.Removed) != 1 || r.Removed[0] != files[2].Path {
		t.Fatalf("third apply: %+v %v", r, err)
	}
	res, err := tree.Uninstall()
	sort.Strings(res.Removed)
	if err != nil || len(res.Removed) != 3 || len(res.Kept) != 0 {
		t.Fatalf("uninstall: %+v %v", res, err)
	}
	var left []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			left = append(left, p[len(root):])
		}
		return nil
	})
	if len(left) != 1 || left[0] != "/etc/systemd/system/other.service" {
		t.Errorf("after uninstall: %v", left)
	}
}

// escapeTree is a root with a manifest, a victim file outside the root,
// a victim inside the root but outside the installation's directories,
// and a link inside the installation's directory that leads out.
type escapeTree struct {
	base, root        string
	outside, inRoot   string // victims
	legit             string // a file the installation did write
	tree              Tree
	writeManifest     func(entries ...string)
	writeManifestJSON func(string)
}

func newEscapeTree(t *testing.T) escapeTree {
	base := t.TempDir()
	e := escapeTree{base: base, root: filepath.Join(base, "root")}
	e.tree = testTree(e.root)
	must := func(err error) {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(e.root, "etc/powerhouse"), 0o755))
	must(os.MkdirAll(filepath.Join(e.root, "etc/systemd/system"), 0o755))
	must(os.MkdirAll(filepath.Join(base, "outside"), 0o755))
	e.outside = filepath.Join(base, "outside/victim")
	e.inRoot = filepath.Join(e.root, "etc/shadow")
	e.legit = filepath.Join(e.root, "etc/systemd/system/a.service")
	for _, p := range []string{e.outside, e.inRoot, e.legit} {
		must(os.WriteFile(p, []byte("keep me"), 0o644))
	}
	must(os.Symlink(filepath.Join(base, "outside"), filepath.Join(e.root, "etc/powerhouse/evil")))
	must(os.Symlink("../..", filepath.Join(e.root, "etc/systemd/system/up")))
	e.writeManifestJSON = func(s string) {
		must(os.WriteFile(filepath.Join(e.root, "etc/powerhouse/.installed.json"), []byte(s), 0o644))
	}
	e.writeManifest = func(entries ...string) {
		b, _ := json.Marshal(map[string][]string{"files": entries})
		e.writeManifestJSON(string(b))
	}
	return e
}

func (e escapeTree) checkIntact(t *testing.T) {
	t.Helper()
	for _, p := range []string{e.outside, e.inRoot, e.legit} {
		if b, err := os.ReadFile(p); err != nil || string(b) != "keep me" {
			t.Errorf("%s was touched: %q %v", p, b, err)
		}
	}
}

// TestUninstallRefusesEntriesOutsideTheTree: the manifest is data from
// disk; an entry that leads out of the installation's directories is
// refused, and nothing at all is removed (not even the legitimate entry
// listed first).
func TestUninstallRefusesEntriesOutsideTheTree(t *testing.T) {
	for _, tc := range []struct {
		name, entry, want string
	}{
		{"dot-dot out of the root", "/../outside/victim", "not a clean"},
		{"dot-dot inside a directory", "/etc/powerhouse/../../../outside/victim", "not a clean"},
		{"relative path", "../outside/victim", "not absolute"},
		{"relative name", "victim", "not absolute"},
		{"absolute outside the directories", "/etc/shadow", "outside the installation's directories"},
		{"prefix that is not a directory", "/etc/powerhouse-other/x", "outside the installation's directories"},
		{"symlinked parent", "/etc/powerhouse/evil/victim", "symbolic link"},
		{"symlinked parent up", "/etc/systemd/system/up/outside/victim", "symbolic link"},
		{"the directory itself", "/etc/powerhouse", "outside the installation's directories"},
		{"NUL byte", "/etc/powerhouse/a\x00b", "NUL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEscapeTree(t)
			e.writeManifest("/etc/systemd/system/a.service", tc.entry)
			res, err := e.tree.Uninstall()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("uninstall: %+v, error %v; want one saying %q", res, err, tc.want)
			}
			if len(res.Removed) != 0 {
				t.Errorf("removed %v despite a refused entry", res.Removed)
			}
			e.checkIntact(t)
		})
	}
}

// TestManifestBounds: a manifest too large or with too many entries is
// refused before anything is removed.
func TestManifestBounds(t *testing.T) {
	many := make([]string, MaxManifestEntries+1)
	for i := range many {
		many[i] = fmt.Sprintf("/etc/systemd/system/u%d.service", i)
	}
	many[0] = "/etc/systemd/system/a.service"
	for _, tc := range []struct {
		name, json, want string
	}{
		{"too many entries", func() string { b, _ := json.Marshal(map[string][]string{"files": many}); return string(b) }(), "entries"},
		{"too large", `{"files":["/etc/systemd/system/a.service"],"x":"` + strings.Repeat("a", MaxManifestBytes) + `"}`, "larger than"},
		{"long path", `{"files":["/etc/systemd/system/a.service","/etc/powerhouse/` + strings.Repeat("a", 5000) + `"]}`, "longer than"},
		{"unknown field", `{"files":["/etc/systemd/system/a.service"],"dirs":["/"]}`, "unknown field"},
		{"duplicate", `{"files":["/etc/systemd/system/a.service","/etc/systemd/system/a.service"]}`, "twice"},
		{"trailing data", `{"files":["/etc/systemd/system/a.service"]} {"files":["/etc/shadow"]}`, "after the manifest"},
		{"adopted not owned", `{"files":["/etc/systemd/system/a.service"],"adopted":["/etc/shadow"]}`, "not among the files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEscapeTree(t)
			e.writeManifestJSON(tc.json)
			if res, err := e.tree.Uninstall(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("uninstall: %+v, error %v; want one saying %q", res, err, tc.want)
			}
			e.checkIntact(t)
		})
	}
}

// TestApplyRefusesPlantedLinks: a symbolic link planted at a file's path
// or in a parent directory is an error, never written through.
func TestApplyRefusesPlantedLinks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(e escapeTree) error
		path  string
	}{
		{"link at the unit path", func(e escapeTree) error {
			return os.Symlink(e.outside, filepath.Join(e.root, "etc/systemd/system/b.service"))
		}, "/etc/systemd/system/b.service"},
		{"link at the configuration path", func(e escapeTree) error {
			return os.Symlink(e.outside, filepath.Join(e.root, "etc/powerhouse/powerhouse.toml"))
		}, "/etc/powerhouse/powerhouse.toml"},
		{"link as a parent directory", func(e escapeTree) error {
			return os.Symlink(filepath.Join(e.base, "outside"), filepath.Join(e.root, "etc/systemd/system/multi-user.target.wants"))
		}, "/etc/systemd/system/multi-user.target.wants/victim"},
		{"link as the configuration directory", func(e escapeTree) error {
			os.RemoveAll(filepath.Join(e.root, "etc/powerhouse"))
			return os.Symlink(filepath.Join(e.base, "outside"), filepath.Join(e.root, "etc/powerhouse"))
		}, "/etc/powerhouse/victim"},
		{"dangling link at the unit path", func(e escapeTree) error {
			return os.Symlink(filepath.Join(e.base, "outside/new"), filepath.Join(e.root, "etc/systemd/system/b.service"))
		}, "/etc/systemd/system/b.service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEscapeTree(t)
			if err := tc.plant(e); err != nil {
				t.Fatal(err)
			}
			// The planted path last: nothing at all is written.
			first := "/etc/systemd/system/first.service"
			_, err := e.tree.Apply([]File{{Path: first, Data: []byte("x"), Perm: Public}, {Path: tc.path, Data: []byte("written"), Perm: Public}})
			if err == nil || !strings.Contains(err.Error(), "symbolic link") {
				t.Errorf("apply: %v, want an error naming the symbolic link", err)
			}
			e.checkIntact(t)
			if _, err := os.Lstat(filepath.Join(e.root, first)); err == nil {
				t.Errorf("%s written before the link was found: a half-done installation", first)
			}
			if _, err := os.Lstat(filepath.Join(e.base, "outside/new")); err == nil {
				t.Error("a file was created through a dangling link")
			}
		})
	}
	t.Run("file outside the directories", func(t *testing.T) {
		e := newEscapeTree(t)
		if _, err := e.tree.Apply([]File{{Path: "/etc/shadow", Data: []byte("written"), Perm: Public}}); err == nil {
			t.Error("apply wrote outside its directories")
		}
		e.checkIntact(t)
	})
}

// TestUninstallKeepsAdoptedConfiguration: a configuration the operator
// wrote before the first install stays after uninstall, and uninstall
// says so; one install created goes.
func TestUninstallKeepsAdoptedConfiguration(t *testing.T) {
	const cfg = "/etc/powerhouse/powerhouse.toml"
	for _, tc := range []struct {
		name     string
		existed  bool
		wantKept bool
	}{
		{"written by the operator first", true, true},
		{"created by install", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tree := testTree(root)
			p := filepath.Join(root, cfg)
			if tc.existed {
				os.MkdirAll(filepath.Dir(p), 0o755)
				if err := os.WriteFile(p, []byte("mine"), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			files := []File{
				{Path: cfg, Data: []byte("mine"), Perm: Secret, Adopt: true},
				{Path: "/etc/systemd/system/a.service", Data: []byte("A"), Perm: Public},
			}
			// Twice: the second install must remember what the first saw.
			for i := 0; i < 2; i++ {
				if _, err := tree.Apply(files); err != nil {
					t.Fatal(err)
				}
			}
			res, err := tree.Uninstall()
			if err != nil {
				t.Fatal(err)
			}
			_, statErr := os.Stat(p)
			if kept := statErr == nil; kept != tc.wantKept || (len(res.Kept) == 1) != tc.wantKept {
				t.Errorf("configuration kept=%v (stat %v), reported kept %v; want %v", kept, statErr, res.Kept, tc.wantKept)
			}
			if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/a.service")); err == nil {
				t.Error("the unit install wrote is still there")
			}
		})
	}
}

// TestFileModes: secret files are created 0600, never wider; an existing
// file keeps its mode and group, but a secret one loses what it granted
// others; a group is set from the first byte.
func TestFileModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files a group (chown); run as root")
	}
	for _, tc := range []struct {
		name     string
		existing os.FileMode // 0: no file before
		sameData bool
		perm     Perm
		wantMode os.FileMode
		wantGID  int
	}{
		{"new secret", 0, false, Secret, 0o600, 0},
		{"new public", 0, false, Public, 0o644, 0},
		{"new with group", 0, false, Perm{Mode: 0o640, SetGroup: true, GID: 4242}, 0o640, 4242},
		{"kept 0640", 0o640, false, Perm{Mode: 0o600, Keep: true}, 0o640, 77},
		{"kept 0640, same data", 0o640, true, Perm{Mode: 0o600, Keep: true}, 0o640, 77},
		{"world-readable secret tightened", 0o644, false, Perm{Mode: 0o600, Keep: true}, 0o640, 77},
		{"world-readable secret tightened, same data", 0o644, true, Perm{Mode: 0o600, Keep: true}, 0o640, 77},
		{"old 0644 config.json made 0640", 0o644, true, Perm{Mode: 0o640, SetGroup: true, GID: 4242}, 0o640, 4242},
		{"public kept 0644", 0o644, false, Perm{Mode: 0o644, Keep: true}, 0o644, 77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			data := []byte("new")
			if tc.existing != 0 {
				old := []byte("old")
				if tc.sameData {
					old = data
				}
				os.WriteFile(p, old, 0o600)
				os.Chmod(p, tc.existing)
				os.Chown(p, 0, 77)
			}
			if _, err := WriteFile(p, data, tc.perm); err != nil {
				t.Fatal(err)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			if got := os.FileMode(st.Mode & 0o7777); got != tc.wantMode || int(st.Gid) != tc.wantGID {
				t.Errorf("mode %o gid %d, want %o gid %d", got, st.Gid, tc.wantMode, tc.wantGID)
			}
			if b, _ := os.ReadFile(p); string(b) != "new" {
				t.Errorf("content %q", b)
			}
		})
	}
}

func TestWriteFileAtomicLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "u.service")
	for _, data := range []string{"one", "two", "two"} {
		if _, err := WriteFile(p, []byte(data), Public); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Errorf("content %q", b)
	}
}

// TestWriteFileRefusesLink: WriteFile (generate -o, prepare, set) does
// not write through a link at the file's path.
func TestWriteFileRefusesLink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("keep me"), 0o644)
	os.Symlink(victim, filepath.Join(dir, "config.json"))
	if _, err := WriteFile(filepath.Join(dir, "config.json"), []byte("x"), Secret); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("WriteFile through a link: %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me" {
		t.Errorf("victim now %q", b)
	}
}

// TestDropInDirectoryRemoved: a kernel-mode supervisor's drop-in
// directory goes with its last file, when install drops it (the group is
// back in hand-off mode) and on uninstall; one that holds an operator's
// own drop-in stays.
func TestDropInDirectoryRemoved(t *testing.T) {
	dropIn := "/etc/systemd/system/" + (Group{Name: "web"}).KernelDropIn()
	for _, tc := range []struct {
		name    string
		mine    bool // an operator's drop-in beside ours
		removed bool
	}{{"empty afterwards", false, true}, {"holds the operator's drop-in", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tree := testTree(root)
			dir := filepath.Join(root, filepath.Dir(dropIn))
			base := []File{{Path: "/etc/systemd/system/a.service", Data: []byte("A"), Perm: Public}}
			if _, err := tree.Apply(append(base, File{Path: dropIn, Data: []byte("K"), Perm: Public})); err != nil {
				t.Fatal(err)
			}
			if tc.mine {
				os.WriteFile(filepath.Join(dir, "10-mine.conf"), []byte("x"), 0o644)
			}
			if _, err := tree.Apply(base); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); os.IsNotExist(err) != tc.removed {
				t.Errorf("after install without it: directory removed %v, want %v", os.IsNotExist(err), tc.removed)
			}
			if _, err := tree.Apply(append(base, File{Path: dropIn, Data: []byte("K"), Perm: Public})); err != nil {
				t.Fatal(err)
			}
			if _, err := tree.Uninstall(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); os.IsNotExist(err) != tc.removed {
				t.Errorf("after uninstall: directory removed %v, want %v", os.IsNotExist(err), tc.removed)
			}
		})
	}
}
