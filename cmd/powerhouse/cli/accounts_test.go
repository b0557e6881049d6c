package cli

import (
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/config"
)

const (
	imagePasswd = "root:x:0:0:root:/root:/bin/sh\n# a comment\nweb:x:990:990::/:/usr/sbin/nologin\n"
	imageGroup  = "root:x:0:\nweb:x:990:\n\nstaff:x:50:\n"
)

// serviceConfig is a house of two groups, the second with [worker.service]
// lines (from line 9).
func serviceConfig(service string) string {
	return "[[worker]]\nname = \"a\"\nexec = \"/bin/true\"\n\n[[worker]]\nname = \"b\"\nexec = \"/bin/true\"\n[worker.service]\n" + service
}

// image makes a --root tree; with passwd and group files when given.
func image(t *testing.T, passwd, group string) string {
	t.Helper()
	root := t.TempDir()
	if passwd == "" && group == "" {
		return root
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"passwd": passwd, "group": group} {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// treeFiles lists the files and links under root, relative to it.
func treeFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return err
	})
	sort.Strings(out)
	return out
}

// TestInstallRefusesMissingAccount: install --root into an image refuses a
// [worker.service] user or group its /etc/passwd or /etc/group lacks, at
// the key's line, and writes nothing; a package tree (no /etc/passwd) is
// not checked. A missing group would keep every supervisor of the house
// down (216/GROUP).
func TestInstallRefusesMissingAccount(t *testing.T) {
	for _, tc := range []struct {
		name    string
		service string
		image   bool   // the tree has etc/passwd and etc/group
		want    string // the refusal, with ROOT for the tree; "" when installed
	}{
		{
			name: "missing group", service: "user = \"web\"\ngroup = \"nogroup\"\n", image: true,
			want: `:10: worker.service.group: group "nogroup" does not exist in the image ROOT: create it (groupadd --root ROOT --system nogroup) or remove the key; every group's supervisor joins the workers' groups, so none could start`,
		},
		{
			name: "missing user", service: "user = \"nobody2\"\ngroup = \"web\"\n", image: true,
			want: `:9: worker.service.user: user "nobody2" does not exist in the image ROOT: create it (useradd --root ROOT --system nobody2) or remove the key; the group's workers could not start`,
		},
		{name: "package tree: not checked", service: "user = \"nobody2\"\ngroup = \"nogroup\"\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.image {
				root = image(t, imagePasswd, imageGroup)
			}
			before := treeFiles(t, root)
			src := filepath.Join(t.TempDir(), "house.toml")
			if err := os.WriteFile(src, []byte(serviceConfig(tc.service)), 0o600); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := run(t, "install", "--root", root, "--binary", "/usr/bin/powerhouse", src)
			if tc.want == "" {
				if code != 0 {
					t.Fatalf("install: %d %s", code, stderr)
				}
				if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/powerhouse.target")); err != nil {
					t.Errorf("install wrote no units: %v", err)
				}
				return
			}
			want := src + strings.ReplaceAll(tc.want, "ROOT", root) + "\n"
			if code != ExitUsage || stderr != want || stdout != "" {
				t.Errorf("install: exit %d, stdout %q, stderr\n%s\nwant exit %d, stderr\n%s", code, stdout, stderr, ExitUsage, want)
			}
			if after := treeFiles(t, root); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Errorf("install wrote under the image: %v, was %v", after, before)
			}
		})
	}
}

// TestCheckAccounts: which names are checked, against the running system
// and an image. The cases install accepts are tested here rather than by
// running install, which would run systemd-sysusers on the image.
func TestCheckAccounts(t *testing.T) {
	const missing = "ph-no-such-account"
	for _, tc := range []struct {
		name    string
		service string
		host    bool     // check the running system, not the image
		want    []string // keys refused
	}{
		{name: "existing user and group", service: "user = \"web\"\ngroup = \"staff\"\n"},
		{name: "default user exempt", service: "user = \"powerhouse\"\ngroup = \"powerhouse\"\n"},
		{name: "default group exempt", service: "group = \"powerhouse\"\n"},
		{name: "numeric ids", service: "user = \"4242\"\ngroup = \"4243\"\n"},
		{name: "user without group", service: "user = \"web\"\n"},
		{name: "both missing", service: "user = \"" + missing + "\"\ngroup = \"" + missing + "\"\n", want: []string{"worker.service.user", "worker.service.group"}},
		{name: "host: root exists", service: "user = \"root\"\ngroup = \"root\"\n", host: true},
		{name: "host: missing group", service: "user = \"root\"\ngroup = \"" + missing + "\"\n", host: true, want: []string{"worker.service.group"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Parse("/h.toml", []byte(serviceConfig(tc.service)))
			if err != nil {
				t.Fatal(err)
			}
			root := ""
			if !tc.host {
				root = image(t, imagePasswd, imageGroup)
			}
			err = checkTargetAccounts(c, root)
			var got []string
			if l, ok := err.(config.ErrorList); ok {
				for _, e := range l {
					got = append(got, e.Key)
					if !strings.Contains(e.Msg, `"`+missing+`" does not exist`) {
						t.Errorf("message %q does not name %s", e.Msg, missing)
					}
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("refused %v, want %v", got, tc.want)
			}
		})
	}
}

// TestReadAccountNames: the image parser takes the first field, skips
// comments and blank lines, says when NIS compat lines defer to names it
// cannot see, and refuses what is no account file.
func TestReadAccountNames(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name           string
		path           string
		want           string // names, sorted
		wantIncomplete bool
		wantErr        bool
	}{
		{name: "passwd", path: write("passwd", imagePasswd), want: "root web"},
		{name: "no final newline", path: write("g1", "a:x:1:\nb:x:2:"), want: "a b"},
		{name: "NIS compat", path: write("g2", "a:x:1:\n+::::::\n"), want: "a", wantIncomplete: true},
		{name: "line too long", path: write("g3", strings.Repeat("a", 70<<10)+":x:1:\n"), wantErr: true},
		{name: "not a regular file", path: dir, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names, incomplete, err := readAccountNames(tc.path)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want one: %v", err, tc.wantErr)
			}
			var got []string
			for n := range names {
				got = append(got, n)
			}
			sort.Strings(got)
			if strings.Join(got, " ") != tc.want || incomplete != tc.wantIncomplete {
				t.Errorf("names %q incomplete %v, want %q %v", got, incomplete, tc.want, tc.wantIncomplete)
			}
		})
	}
}

// TestVerifyWarnsMissingAccount: verify, which also checks configurations
// meant for other machines, warns of a group this system lacks, at its
// line, and does not take the configuration for a bad one.
func TestVerifyWarnsMissingAccount(t *testing.T) {
	p := filepath.Join(t.TempDir(), "house.toml")
	if err := os.WriteFile(p, []byte(serviceConfig("user = \"root\"\ngroup = \"ph-no-such-account\"\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "verify", "--binary", "/usr/bin/powerhouse", p)
	want := "warning: " + p + `:10: worker.service.group: group "ph-no-such-account" does not exist on this system: create it (groupadd --system ph-no-such-account) or remove the key; every group's supervisor joins the workers' groups, so none could start (install refuses this)` + "\n"
	if code == ExitUsage || !strings.Contains(stderr, want) {
		t.Errorf("verify: exit %d, stderr\n%s\nwant a warning\n%s", code, stderr, want)
	}
}
