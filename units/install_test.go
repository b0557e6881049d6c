package units

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
)

func TestApplyIdempotentAndUninstall(t *testing.T) {
	root := t.TempDir()
	// A file install did not write must survive everything.
	os.MkdirAll(filepath.Join(root, "etc/systemd/system"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/systemd/system/other.service"), []byte("x"), 0o644)
	files := []File{
		{Path: "/etc/powerhouse/powerhouse.toml", Data: []byte("a"), Mode: 0o644},
		{Path: "/etc/systemd/system/a.service", Data: []byte("A"), Mode: 0o644},
		{Path: "/etc/systemd/system/b.service", Data: []byte("B"), Mode: 0o644},
		{Path: "/etc/systemd/system/multi-user.target.wants/a.service", Link: "/etc/systemd/system/a.service"},
	}
	const manifest = "/etc/powerhouse/.installed.json"
	r, err := Apply(root, manifest, files)
	if err != nil || len(r.Written) != 4 {
		t.Fatalf("first apply: %+v %v", r, err)
	}
	st, _ := os.Stat(filepath.Join(root, "etc/systemd/system/a.service"))
	r, err = Apply(root, manifest, files)
	if err != nil || r.Changed() || len(r.Unchanged) != 4 {
		t.Fatalf("second apply changed something: %+v %v", r, err)
	}
	if st2, _ := os.Stat(filepath.Join(root, "etc/systemd/system/a.service")); !st2.ModTime().Equal(st.ModTime()) {
		t.Error("an unchanged file was rewritten")
	}
	// b goes away, a changes.
	files2 := []File{files[0], {Path: files[1].Path, Data: []byte("A2"), Mode: 0o644}, files[3]}
	r, err = Apply(root, manifest, files2)
	if err != nil || len(r.Written) != 1 || len(r.Removed) != 1 || r.Removed[0] != files[2].Path {
		t.Fatalf("third apply: %+v %v", r, err)
	}
	removed, err := Uninstall(root, manifest)
	sort.Strings(removed)
	if err != nil || len(removed) != 3 {
		t.Fatalf("uninstall: %v %v", removed, err)
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

func TestWriteFileAtomicLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "u.service")
	for _, data := range []string{"one", "two", "two"} {
		if _, err := WriteFile(p, []byte(data), 0o644); err != nil {
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
