package supervisor

import (
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

// TestWriteGroupConfigMode: config.json holds the group's configuration,
// which may be secret: 0640 with the workers' group, never readable by
// others, also when an older version left it 0644.
func TestWriteGroupConfigMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the file a group (chown); run as root")
	}
	rootGroup, err := user.LookupGroupId("0")
	if err != nil {
		t.Fatal(err)
	}
	_, powerhouseErr := user.LookupGroup(DefaultWorkerGroup)
	for _, tc := range []struct {
		name     string
		svc      config.Service
		old      bool // an old 0644 file is there
		wantMode os.FileMode
		wantGID  int
		wantErr  string
	}{
		{name: "numeric group", svc: config.Service{Group: "4242"}, wantMode: 0o640, wantGID: 4242},
		{name: "numeric group over an old 0644 file", svc: config.Service{Group: "4242"}, old: true, wantMode: 0o640, wantGID: 4242},
		{name: "group by name", svc: config.Service{Group: rootGroup.Name}, wantMode: 0o640, wantGID: 0},
		{name: "user's primary group", svc: config.Service{User: "root"}, wantMode: 0o640, wantGID: 0},
		{name: "numeric user's primary group", svc: config.Service{User: "0"}, wantMode: 0o640, wantGID: 0},
		{name: "unknown group", svc: config.Service{Group: "no-such-group-ph"}, wantErr: `group "no-such-group-ph"`},
		{name: "unknown user", svc: config.Service{User: "no-such-user-ph"}, wantErr: `user "no-such-user-ph"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := &config.Worker{Name: "web", Service: tc.svc, Config: map[string]any{"password": "s3cret"}}
			p := filepath.Join(dir, "web", "config.json")
			if tc.old {
				os.MkdirAll(filepath.Dir(p), 0o755)
				b, _ := w.ConfigJSON()
				os.WriteFile(p, b, 0o644)
			}
			_, err := WriteGroupConfig(units.Group{Name: w.Name, Root: dir}, w)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), p) {
					t.Fatalf("error %v, want one naming %s and saying %q", err, p, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			if got := os.FileMode(st.Mode & 0o777); got != tc.wantMode || int(st.Gid) != tc.wantGID {
				t.Errorf("mode %o gid %d, want %o gid %d", got, st.Gid, tc.wantMode, tc.wantGID)
			}
		})
	}
	t.Run("default group", func(t *testing.T) {
		dir := t.TempDir()
		w := &config.Worker{Name: "web", Config: map[string]any{}}
		readers, err := WriteGroupConfig(units.Group{Name: w.Name, Root: dir}, w)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dir, "web", "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o640)
		if powerhouseErr != nil {
			want = 0o600 // no such group here: root's alone
		}
		if fi.Mode().Perm() != want {
			t.Errorf("mode %o (%s), want %o", fi.Mode().Perm(), readers, want)
		}
	})
}

// TestWriteGroupConfigEPERM: a writer that may not give the file the
// workers' group fails, naming the file, rather than leaving a file the
// workers cannot read. The test binary re-runs itself as nobody, which
// lacks CAP_CHOWN and membership in gid 4242: a real EPERM.
func TestWriteGroupConfigEPERM(t *testing.T) {
	if dir := os.Getenv("POWERHOUSE_TEST_EPERM_DIR"); dir != "" {
		w := &config.Worker{Name: "web", Service: config.Service{Group: "4242"}, Config: map[string]any{}}
		_, err := WriteGroupConfig(units.Group{Name: w.Name, Root: dir}, w)
		io.WriteString(os.Stdout, "RESULT: "+strings.ReplaceAll(errString(err), "\n", " ")+"\n")
		// A user's own house: no group asked for, the user's file.
		w = &config.Worker{Name: "user", Config: map[string]any{}}
		_, err = WriteGroupConfig(units.Group{Name: w.Name, Root: dir}, w)
		io.WriteString(os.Stdout, "USER: "+errString(err)+"\n")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as nobody; run as root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	// A directory nobody may enter and write in, holding a copy of the
	// test binary nobody may run.
	dir, err := os.MkdirTemp("", "groupconfig-eperm-") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "supervisor.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	os.Mkdir(run, 0o755)
	os.Chown(run, uid, gid)
	cmd := exec.Command(bin, "-test.run=^TestWriteGroupConfigEPERM$", "-test.count=1")
	cmd.Env = append(os.Environ(), "POWERHOUSE_TEST_EPERM_DIR="+run)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	p := filepath.Join(run, "web", "config.json")
	t.Logf("as nobody: %s", strings.TrimSpace(string(out)))
	if !strings.Contains(string(out), "RESULT: ") || !strings.Contains(string(out), p) || !strings.Contains(string(out), "CAP_CHOWN") {
		t.Errorf("want an error naming %s and what is missing, got:\n%s", p, out)
	}
	if _, err := os.Stat(p); err == nil {
		t.Errorf("%s was written although its group could not be set", p)
	}
	if fi, err := os.Stat(filepath.Join(run, "user", "config.json")); err != nil || fi.Mode().Perm() != 0o600 || !strings.Contains(string(out), "USER: <nil>") {
		t.Errorf("a user's own house: %v %v, want its config.json written 0600\n%s", fi, err, out)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
