package sdbox

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Tests of the pure parts: they need neither root nor systemd.

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr bool
	}{
		{
			name: "plain",
			in:   "1234 (sleep) S 1 1234 1234 0 -1 4194560 110 0 0 0 0 0 0 0 20 0 1 0 98765 5865472 230 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0",
			want: procStat{State: 'S', PPID: 1, StartTime: 98765},
		},
		{
			name: "name with spaces and parentheses",
			in:   "77 (a) b (c)) R 42 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0 0",
			want: procStat{State: 'R', PPID: 42, StartTime: 555},
		},
		{name: "truncated", in: "77 (x) R 42 77", wantErr: true},
		{name: "no name", in: "77 x R 42", wantErr: true},
		{name: "bad ppid", in: "77 (x) R x 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseStatSelf(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getppid() || st.StartTime == 0 {
		t.Errorf("own stat %+v: want ppid %d and a start time", st, os.Getppid())
	}
}

func TestParseCgroupMounts(t *testing.T) {
	tests := []struct {
		name      string
		mountinfo string
		want      []hierarchy
	}{
		{
			name: "hybrid",
			mountinfo: `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /proc rw - proc proc rw`,
			want: []hierarchy{
				{Mount: "/sys/fs/cgroup/cpu", Root: "/", Opts: []string{"cpu"}, Key: "cpu"},
				{Mount: "/sys/fs/cgroup/memory", Root: "/", Opts: []string{"memory"}, Key: "memory"},
				{Mount: "/sys/fs/cgroup/systemd", Root: "/", Opts: []string{"none", "name=systemd"}, Key: "name=systemd"},
				{Mount: "/sys/fs/cgroup/unified", Root: "/", V2: true},
			},
		},
		{
			name:      "unified",
			mountinfo: `30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot`,
			want:      []hierarchy{{Mount: "/sys/fs/cgroup", Root: "/", V2: true}},
		},
		{
			name: "co-mounted v1 with flags and a release agent",
			mountinfo: `25 24 0:22 / /sys/fs/cgroup/systemd rw shared:9 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpuacct,cpu`,
			want: []hierarchy{
				{Mount: "/sys/fs/cgroup/systemd", Root: "/", Opts: []string{"none", "xattr", "name=systemd"}, Key: "name=systemd"},
				{Mount: "/sys/fs/cgroup/cpu,cpuacct", Root: "/", Opts: []string{"cpuacct", "cpu"}, Key: "cpu,cpuacct"},
			},
		},
		{
			name: "escaped mount point, and one outside /sys/fs/cgroup",
			mountinfo: `32 31 0:29 /sub /sys/fs/cgroup/my\040ctl rw - cgroup cgroup rw,pids
33 23 0:29 / /mnt/cg rw - cgroup cgroup rw,pids`,
			want: []hierarchy{{Mount: "/sys/fs/cgroup/my ctl", Root: "/sub", Opts: []string{"pids"}, Key: "pids"}},
		},
		{
			name: "hidden by a later mount",
			mountinfo: `32 31 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
33 32 0:50 / /sys/fs/cgroup/pids rw - tmpfs tmpfs rw`,
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseCgroupMounts([]byte(tt.mountinfo))
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	in := "12:cpuacct,cpu:/a\n9:name=systemd:/user.slice/x.scope\n4:memory:/process_api/892b\n0::/b\n\n"
	want := map[string]string{"cpu,cpuacct": "/a", "name=systemd": "/user.slice/x.scope", "memory": "/process_api/892b", "": "/b"}
	if got := parseProcCgroup([]byte(in)); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestOwnerAlive(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"us", boxCgroupPrefix + strconv.Itoa(os.Getpid()) + "." + strconv.FormatUint(st.StartTime, 10) + ".abcd", true},
		{"our PID, another start time", boxCgroupPrefix + strconv.Itoa(os.Getpid()) + "." + strconv.FormatUint(st.StartTime+1, 10) + ".abcd", false},
		{"no such PID", boxCgroupPrefix + "2147483646.1.abcd", false},
		{"unparsable is left alone", boxCgroupPrefix + "x.y.z", true},
		{"wrong shape is left alone", boxCgroupPrefix + "1.2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ownerAlive(tt.in); got != tt.want {
				t.Errorf("ownerAlive(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"", "plain", "with space", "it's", `"double" $HOME $(id) \n *`, "a'b'c", "new\nline"} {
		t.Run(s, func(t *testing.T) {
			// The real shell is the judge.
			out, err := exec.Command("/bin/sh", "-c", "printf '%s' "+shellQuote(s)).Output()
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != s {
				t.Errorf("sh read %q back as %q", s, out)
			}
		})
	}
}

func TestMasks(t *testing.T) {
	dir := t.TempDir()
	wants := filepath.Join(dir, "sysinit.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"vendor-thing.service", "systemd-journald.service", "cryptsetup.target", "x.slice"} {
		if err := os.Symlink("/dev/null", filepath.Join(wants, u)); err != nil {
			t.Fatal(err)
		}
	}
	got := masks([]string{dir, filepath.Join(dir, "missing")}, false)
	for _, u := range []string{"systemd-tmpfiles-setup.service", "systemd-tmpfiles-clean.timer", "systemd-sysctl.service",
		"systemd-logind.service", "getty@.service", "vendor-thing.service"} {
		if !slices.Contains(got, u) {
			t.Errorf("%s is not masked", u)
		}
	}
	for _, u := range append(slices.Clone(keepUnits), "cryptsetup.target", "x.slice") {
		if slices.Contains(got, u) {
			t.Errorf("%s is masked", u)
		}
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Error("masks are not sorted and unique")
	}
	// A box that runs user managers leaves their two units alone.
	for _, tt := range []struct {
		userManagers, masked bool
	}{{false, true}, {true, false}} {
		got := masks(nil, tt.userManagers)
		for _, u := range []string{userManagerUnit, userRuntimeDirUnit} {
			if slices.Contains(got, u) != tt.masked {
				t.Errorf("userManagers=%v: %s masked=%v, want %v", tt.userManagers, u, !tt.masked, tt.masked)
			}
		}
		if !slices.Contains(got, "systemd-logind.service") {
			t.Errorf("userManagers=%v: logind is not masked", tt.userManagers)
		}
	}
}

func TestUserMasks(t *testing.T) {
	dir := t.TempDir()
	for _, l := range []string{"sockets.target.wants/gpg-agent.socket", "sockets.target.wants/dbus.socket",
		"default.target.wants/vendor.service", "graphical-session-pre.target.wants/ssh-agent.service"} {
		p := filepath.Join(dir, l)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/dev/null", p); err != nil {
			t.Fatal(err)
		}
	}
	got := userMasks([]string{dir})
	want := []string{"gpg-agent.socket", "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer",
		"systemd-tmpfiles-setup.service", "vendor.service"}
	if !slices.Equal(got, want) {
		t.Errorf("user masks %v, want %v (the user bus kept, graphical sessions never started)", got, want)
	}
}

func TestBuildScriptSafetyGate(t *testing.T) {
	_, stage2 := buildScript(scriptParams{
		Name:      "gate",
		MachineID: "0123456789abcdef0123456789abcdef",
		HostDev:   map[string]uint64{"/tmp": 2049},
	})
	exec := strings.Index(stage2, "exec env -i")
	if exec < 0 {
		t.Fatal("stage 2 does not exec systemd")
	}
	for _, must := range []string{
		"mount -n --make-rprivate /",
		"private /tmp tmpfs",
		"private /etc overlayfs",
		`[ "$(stat -c %d '/tmp')" != 2049 ]`,
		"[ ! -w /proc/sys/kernel/hostname ]",
		"[ -L /run/systemd/system/systemd-tmpfiles-setup.service ]",
	} {
		i := strings.Index(stage2, must)
		if i < 0 || i > exec {
			t.Errorf("stage 2 lacks %q before exec", must)
		}
	}
	if !strings.Contains(stage2[exec:], "container='gate'") || !strings.Contains(stage2[exec:], "--unit="+bootTarget) {
		t.Errorf("exec line lacks container= or --unit: %s", stage2[exec:])
	}
	// Every mount(8) runs with -n.
	for _, line := range strings.Split(stage2, "\n") {
		for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ';' || r == '&' }) {
			f = strings.TrimSpace(f)
			if strings.HasPrefix(f, "mount ") && !strings.HasPrefix(f, "mount -n ") {
				t.Errorf("mount without -n: %s", line)
			}
		}
	}
}

// TestBuildScriptSysusersAfterGate: systemd-sysusers writes /etc/passwd,
// so it may only run once the gate has checked that /etc is the box's
// overlay; and its lines reach it quoted, one argument each.
func TestBuildScriptSysusersAfterGate(t *testing.T) {
	_, stage2 := buildScript(scriptParams{
		Name:      "gate",
		MachineID: "0123456789abcdef0123456789abcdef",
		Sysusers:  sysusersLines([]byte("# comment\n\nu probe - \"it's a probe\" - -\ng extra -\n")),
	})
	gate := strings.Index(stage2, "private /etc overlayfs")
	sysusers := strings.Index(stage2, "systemd-sysusers --inline 'u probe - \"it'\\''s a probe\" - -' 'g extra -'\n")
	exec := strings.Index(stage2, "exec env -i")
	if gate < 0 || sysusers < gate || exec < sysusers {
		t.Errorf("want the /etc gate (%d) before systemd-sysusers (%d) before exec (%d):\n%s", gate, sysusers, exec, stage2)
	}
	_, none := buildScript(scriptParams{Name: "gate", MachineID: "0123456789abcdef0123456789abcdef"})
	if strings.Contains(none, "systemd-sysusers") {
		t.Error("systemd-sysusers runs though no sysusers lines were given")
	}
}

func TestResolveBinds(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    Options
		want    []resolvedBind
		wantErr string
	}{
		{name: "none"},
		{
			name: "directory at the same place, file to a private path",
			opts: Options{Binds: []Bind{{Source: dir}, {Source: file, Target: "/etc/sdbox/f", Writable: true}}},
			want: []resolvedBind{{Source: dir, Target: dir, Dir: true}, {Source: file, Target: "/etc/sdbox/f", Writable: true}},
		},
		{
			name: "generators",
			opts: Options{Generators: dir},
			want: []resolvedBind{{Source: dir, Target: boxGenDir, Dir: true}},
		},
		{name: "relative source", opts: Options{Binds: []Bind{{Source: "bin"}}}, wantErr: "absolute"},
		{name: "source under /run", opts: Options{Binds: []Bind{{Source: "/run/x"}}}, wantErr: "/run"},
		{name: "missing source", opts: Options{Binds: []Bind{{Source: filepath.Join(dir, "nope")}}}, wantErr: "no such file"},
		{name: "relative target", opts: Options{Binds: []Bind{{Source: dir, Target: "x"}}}, wantErr: "absolute"},
		{name: "over /", opts: Options{Binds: []Bind{{Source: dir, Target: "/"}}}, wantErr: "over /"},
		{name: "new target on the host's file system", opts: Options{Binds: []Bind{{Source: dir, Target: "/opt/sdbox-nonexistent"}}}, wantErr: "write to the host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveBinds(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 0 || len(tt.want) != 0 {
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

// untar extracts an archive with the real tar, as the box does.
func untar(t *testing.T, data []byte) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("tar", "-x", "-C", dir, "-f", "-")
	cmd.Stdin = strings.NewReader(string(data))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	return dir
}

func TestRunArchive(t *testing.T) {
	data, err := runArchive([]string{"a.service", `system-systemd\x2dcryptsetup.slice`}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := untar(t, data)
	if _, err := os.Stat(filepath.Join(dir, "systemd/user")); err == nil {
		t.Error("systemd/user in the archive of a box without user managers")
	}
	for _, u := range []string{"a.service", `system-systemd\x2dcryptsetup.slice`} {
		if l, err := os.Readlink(filepath.Join(dir, "systemd/system", u)); err != nil || l != "/dev/null" {
			t.Errorf("mask %s: %q, %v", u, l, err)
		}
	}
	target, err := os.ReadFile(filepath.Join(dir, "systemd/system", bootTarget))
	if err != nil || !strings.Contains(string(target), "systemd-journald.socket") || strings.Contains(string(target), "dbus") {
		t.Errorf("%s without the bus: %q, %v", bootTarget, target, err)
	}
	if conf, err := os.ReadFile(filepath.Join(dir, "systemd/system.conf.d/sdbox.conf")); err != nil || string(conf) != managerConf {
		t.Errorf("drop-in: %q, %v", conf, err)
	}
}

func TestRunArchiveUserManagers(t *testing.T) {
	data, err := runArchive([]string{"a.service"}, []string{"gpg-agent.socket"}, true)
	if err != nil {
		t.Fatal(err)
	}
	dir := untar(t, data)
	if l, err := os.Readlink(filepath.Join(dir, "systemd/user/gpg-agent.socket")); err != nil || l != "/dev/null" {
		t.Errorf("user mask: %q, %v", l, err)
	}
	for f, want := range map[string]string{
		"systemd/user.conf.d/sdbox.conf":                      userManagerConf,
		"systemd/system/" + userManagerUnit + ".d/sdbox.conf": userServiceConf,
	} {
		if got, err := os.ReadFile(filepath.Join(dir, f)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v", f, got, err)
		}
	}
}
