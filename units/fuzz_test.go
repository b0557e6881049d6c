package units

import (
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzManifest: no manifest entry the parser accepts lies outside the
// installation's directories, lexically or on disk, in a tree holding
// symbolic links that lead out of it.
func FuzzManifest(f *testing.F) {
	for _, s := range []string{
		`{"files":["/etc/systemd/system/a.service"]}`,
		`{"files":["/etc/powerhouse/powerhouse.toml","/etc/systemd/system/multi-user.target.wants/powerhouse.target"],"adopted":["/etc/powerhouse/powerhouse.toml"]}`,
		`{"files":["/../outside/victim"]}`,
		`{"files":["/etc/powerhouse/evil/victim"]}`,
		`{"files":["/etc/systemd/system/up/outside/victim"]}`,
		`{"files":["../x","/etc/powerhouse/./x","/etc/powerhouse//x","/etc/powerhouse/x/"]}`,
		`{"files":["/etc/powerhouse/\u0000"]}`,
		`{"files":null,"adopted":[]}`,
	} {
		f.Add([]byte(s))
	}
	base := f.TempDir()
	base, err := filepath.EvalSymlinks(base)
	if err != nil {
		f.Fatal(err)
	}
	root := filepath.Join(base, "root")
	for _, d := range []string{"etc/powerhouse", "etc/systemd/system/multi-user.target.wants", "outside"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.MkdirAll(filepath.Join(base, "outside"), 0o755)
	os.Symlink(filepath.Join(base, "outside"), filepath.Join(root, "etc/powerhouse/evil"))
	os.Symlink("../..", filepath.Join(root, "etc/systemd/system/up"))
	os.Symlink("/", filepath.Join(root, "etc/systemd/system/multi-user.target.wants/slash"))
	tree := testTree(root)
	rfd, err := tree.openRoot()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { unix.Close(rfd) })

	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := tree.parseManifest(b)
		if err != nil {
			return
		}
		for _, p := range m.Files {
			joined := filepath.Join(root, p)
			inside := false
			for _, d := range tree.Dirs {
				if strings.HasPrefix(joined, filepath.Join(root, d)+"/") {
					inside = true
				}
			}
			if !inside && p != tree.Manifest {
				t.Fatalf("accepted entry %q resolves to %s, outside %v under %s", p, joined, tree.Dirs, root)
			}
			// On disk: the directory uninstall would remove from, if it
			// opens, is inside the root.
			dfd, err := tree.openDir(rfd, path.Dir(p), false)
			if err != nil {
				continue
			}
			buf := make([]byte, 4096)
			n, rerr := unix.Readlink("/proc/self/fd/"+strconv.Itoa(dfd), buf)
			unix.Close(dfd)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if got := string(buf[:n]); got != root && !strings.HasPrefix(got, root+"/") || strings.HasPrefix(got, filepath.Join(root, "outside")) {
				t.Fatalf("entry %q: its directory opened as %s, outside the installation under %s", p, got, root)
			}
		}
	})
}
