package generator

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

var update = flag.Bool("update", false, "rewrite the golden files in ../testdata/golden and golden-user")

var testOpts = Options{Binary: "/usr/bin/powerhouse", ConfigPath: "/etc/powerhouse/powerhouse.toml"}

// TestGolden generates the units of every testdata/config/*.good.toml and
// compares them with testdata/golden/<name>/ (system scope) and
// testdata/golden-user/<name>/ (a user's manager: %t paths, no sandbox
// that needs root).
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("../testdata/config/*.good.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configurations: %v", err)
	}
	userOpts := Options{Binary: "/home/u/bin/powerhouse", ConfigPath: "/home/u/.config/powerhouse/powerhouse.toml", User: true}
	for _, scope := range []struct {
		dir string
		o   Options
	}{{"../testdata/golden", testOpts}, {"../testdata/golden-user", userOpts}} {
		t.Run(filepath.Base(scope.dir), func(t *testing.T) { goldenScope(t, files, scope.dir, scope.o) })
	}
}

func goldenScope(t *testing.T, files []string, root string, o Options) {
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".good.toml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(root, name)
			if o.User && kernelMode(t, o, data) {
				// A user's manager cannot grant CAP_BPF: refused, no golden.
				if _, err := os.Stat(dir); err == nil {
					t.Errorf("%s exists, but %s has a kernel-mode group, which --user refuses", dir, f)
				}
				return
			}
			// A fixed path keeps relative exec paths and the output stable.
			_, us := generate(t, o, data)
			if *update {
				os.RemoveAll(dir)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got := map[string]bool{}
			for _, u := range us {
				got[strings.Split(u.Name, "/")[0]] = true // a drop-in: its directory
				golden(t, filepath.Join(dir, u.Name), u.Render(o))
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if !got[e.Name()] {
					t.Errorf("golden file %s is no longer generated", e.Name())
				}
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	data, err := os.ReadFile("../testdata/config/full.good.toml")
	if err != nil {
		t.Fatal(err)
	}
	render := func() []byte {
		_, us := generate(t, testOpts, data)
		var b bytes.Buffer
		for _, u := range us {
			b.WriteString(u.Name)
			b.Write(u.Render(testOpts))
		}
		return b.Bytes()
	}
	first := render()
	for i := 0; i < 20; i++ {
		if !bytes.Equal(render(), first) {
			t.Fatal("two generations of the same configuration differ")
		}
	}
}

func TestUnitSet(t *testing.T) {
	c, err := config.Parse(testOpts.ConfigPath, []byte(`
[prepare]
exec = "/p"
[[worker]]
name = "web"
exec = "/w"
sticky = true
listen = [80, { address = 8080, proxy_protocol = true, proxy_from = ["10.0.0.5"] }]
[[worker]]
name = "lb"
exec = "/w"
sticky = true
listen = [{ address = 82, proxy_protocol = true, proxy_from = ["10.0.0.5"] }]
[[worker]]
name = "api"
exec = "/w"
listen = [81]
[[worker]]
name = "mail"
type = "child"
exec = "/w"
reloadable = false
`))
	if err != nil {
		t.Fatal(err)
	}
	us, err := Generate(c, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range us {
		names = append(names, u.Name)
	}
	want := "powerhouse.target powerhouse@.service powerhouse-prepare.service " +
		"powerhouse@web.socket powerhouse-proxy@web.socket powerhouse-web@.service powerhouse-web.b@.service powerhouse-web@.socket " +
		"powerhouse-proxy@lb.socket powerhouse-lb@.service powerhouse-lb.b@.service powerhouse-lb@.socket " +
		"powerhouse@api.socket powerhouse-api@.service powerhouse-api.b@.service powerhouse-mail@.service"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("units:\n got %s\nwant %s", got, want)
	}
	// Every group's socket units, and only those, are wanted by the
	// target, which is how the supervisor gets their descriptors.
	for i, w := range c.Workers {
		if got, want := strings.Join(GroupSockets(&c.Workers[i]), " "), []string{
			"powerhouse@web.socket powerhouse-proxy@web.socket", "powerhouse-proxy@lb.socket", "powerhouse@api.socket", ""}[i]; got != want {
			t.Errorf("GroupSockets(%s) = %q, want %q", w.Name, got, want)
		}
	}
	wants := string(us[0].Render(testOpts))
	for _, u := range []string{"powerhouse-proxy@web.socket", "powerhouse-proxy@lb.socket", "powerhouse@web.socket", "powerhouse@api.socket"} {
		if !strings.Contains(wants, " "+u+" ") {
			t.Errorf("the target does not want %s:\n%s", u, wants)
		}
	}
}

// TestInjection feeds values crafted to end a line or a section into every
// text that reaches a unit: none may add a directive.
func TestInjection(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"title newline", "title = \"x\\nExecStartPre=/bin/sh\"\n"},
		{"title CR", "title = \"x\\rExecStartPre=/bin/sh\"\n"},
		{"title section", "title = \"x\\n[Service]\\nExecStartPre=/bin/sh\"\n"},
		{"title continuation", "title = 'x\\'\n"},
		{"exec newline", "[[worker]]\nname = \"v\"\nexec = \"/bin/v\\nExecStartPre=/bin/sh\"\n"},
		{"exec array newline", "[[worker]]\nname = \"v\"\nexec = [\"/bin/v\", \"a\\nExecStartPre=/bin/sh\"]\n"},
		{"worker title", "[[worker]]\nname = \"v\"\nexec = \"/bin/v\"\ntitle = \"t\\nExecStartPre=/bin/sh\"\n"},
		{"listen path", "[[worker]]\nname = \"v\"\nexec = \"/bin/v\"\nlisten = [\"/run/a\\nExecStartPre=/bin/sh\"]\n"},
		{"prepare exec", "[prepare]\nexec = \"/bin/p\\nExecStartPre=/bin/sh\"\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.src + "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\n"
			c, err := config.Parse(testOpts.ConfigPath, []byte(src))
			if err == nil {
				us, gerr := Generate(c, testOpts)
				if gerr != nil {
					return
				}
				for _, u := range us {
					if bytes.Contains(u.Render(testOpts), []byte("ExecStartPre")) {
						t.Fatalf("%s contains an injected directive:\n%s", u.Name, u.Render(testOpts))
					}
				}
				t.Fatalf("configuration accepted; want it refused")
			}
		})
	}
}

// TestQuotingRoundTrip checks that the words of a command survive as
// systemd's parser reads them back, for words with every special character.
func TestQuotingRoundTrip(t *testing.T) {
	argv := []string{"/bin/x", "a b", `q"uote`, `back\slash`, "'single'", "50%", "$HOME", "${X}", ";", "a;b", "", "tab\there"}
	got := systemdSplit(t, ExecLine(argv))
	if strings.Join(got, "\x00") != strings.Join(argv, "\x00") {
		t.Errorf("round trip:\n got %q\nwant %q\nline %s", got, argv, ExecLine(argv))
	}
}

// systemdSplit reads an ExecStart= value back into words, following
// systemd's rules for the subset ExecLine writes: double-quoted words with
// \" and \\ escapes, "%%" for "%", "$$" for "$", and "\;" for a lone ";".
func systemdSplit(t *testing.T, s string) []string {
	var words []string
	for i := 0; i < len(s); {
		if s[i] == ' ' {
			i++
			continue
		}
		var w strings.Builder
		if s[i] == '"' {
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
				}
				w.WriteByte(s[i])
			}
			i++
		} else {
			for ; i < len(s) && s[i] != ' '; i++ {
				w.WriteByte(s[i])
			}
		}
		x := w.String()
		if x == `\;` {
			x = ";"
		}
		x = strings.ReplaceAll(x, "%%", "%")
		x = strings.ReplaceAll(x, "$$", "$")
		words = append(words, x)
	}
	return words
}

// FuzzGenerate feeds arbitrary TOML through load and generate: whatever is
// accepted must render to unit files that parse back into exactly the
// sections and directives the generator meant to write.
func FuzzGenerate(f *testing.F) {
	for _, p := range []string{"../testdata/config/full.good.toml", "../testdata/demo.toml"} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("title = \"a\\nb\"\n[[worker]]\nname = \"w\"\nexec = \"/x\"\n"))
	f.Add([]byte("[[worker]]\nname = \"w\"\nexec = \"/x 'a\\\\' \\\"\"\ntitle = \"]\"\nlisten = [\"/r\"]\n"))
	f.Add([]byte("[[worker]]\nname = \"w\"\nexec = \"/x /tmp/y\"\nsticky = true\nlisten = [\n  80,\n  { address = 81, proxy_protocol = true, proxy_from = [\"10.0.0.0/8\", \"::1\"] },\n  { address = \"/r\", proxy_protocol = true, socket_mode = \"0660\", socket_group = \"g\" },\n]\n[worker.service]\ntimeout_stop = \"0\"\n"))
	f.Add([]byte("[[worker]]\nname = \"w\"\nexec = \"/x\"\nsticky = true\n[[worker.listen]]\naddress = 81\nproxy_protocol = true\nproxy_from = [\"192.0.2.7\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// One configuration taking seconds is a bug (a hostile file would
		// hang generate, install and the boot-time generator): crash, so
		// that the fuzzer keeps the input.
		hang := time.AfterFunc(2*time.Second, func() { panic(fmt.Sprintf("config.Parse and Generate still running after 2s on %q", data)) })
		defer hang.Stop()
		c, err := config.Parse(testOpts.ConfigPath, data)
		if err != nil {
			return
		}
		us, err := Generate(c, testOpts)
		if err != nil {
			return
		}
		for _, u := range us {
			text := u.Render(testOpts)
			back, err := unit.DeserializeOptions(bytes.NewReader(text))
			if err != nil {
				t.Fatalf("%s does not parse: %v\n%s", u.Name, err, text)
			}
			if len(back) != len(u.Options) {
				t.Fatalf("%s: %d directives written, %d read back\n%s", u.Name, len(u.Options), len(back), text)
			}
			for i, o := range u.Options {
				if !o.Match(back[i]) {
					t.Fatalf("%s: directive %d written as %v, read back as %v", u.Name, i, o, back[i])
				}
			}
		}
	})
}

// TestStopTimeout: the drain time the workers are told matches what
// systemd does with TimeoutStopSec=. A zero span is infinity to systemd:
// rendered as such, and the library is told to wait (it refuses "0s",
// which failed every Go worker at start).
func TestStopTimeout(t *testing.T) {
	for _, tc := range []struct {
		span     string
		unitLine string // TimeoutStopSec= line, "" for none
		env      string // POWERHOUSE_STOP_TIMEOUT, "" for none
	}{
		{"", "", ""},
		{"20s", "TimeoutStopSec=20s", "20s"},
		{"2min", "TimeoutStopSec=2min", "2m"},
		{"500ms", "TimeoutStopSec=500ms", "500ms"},
		{"45", "TimeoutStopSec=45", "45s"},
		{"0", "TimeoutStopSec=infinity", goForever},
		{"0s", "TimeoutStopSec=infinity", goForever},
		{"infinity", "TimeoutStopSec=infinity", goForever},
		{"99999999999999999999h", "TimeoutStopSec=99999999999999999999h", goForever},
		{"3000000h", "TimeoutStopSec=3000000h", goForever},
	} {
		t.Run(tc.span, func(t *testing.T) {
			src := "[[worker]]\nname = \"w\"\nexec = \"/w\"\n"
			if tc.span != "" {
				src += "[worker.service]\ntimeout_stop = \"" + tc.span + "\"\n"
			}
			_, us := generate(t, testOpts, []byte(src))
			text := string(us[len(us)-1].Render(testOpts))
			var line, env string
			for _, l := range strings.Split(text, "\n") {
				if strings.HasPrefix(l, "TimeoutStopSec=") {
					line = l
				}
				if _, v, ok := strings.Cut(l, "POWERHOUSE_STOP_TIMEOUT="); ok {
					env, _, _ = strings.Cut(v, " ")
				}
			}
			if line != tc.unitLine || env != tc.env {
				t.Errorf("got %q and POWERHOUSE_STOP_TIMEOUT=%q, want %q and %q", line, env, tc.unitLine, tc.env)
			}
			if env != "" {
				d, err := time.ParseDuration(env)
				if err != nil || d <= 0 {
					t.Errorf("POWERHOUSE_STOP_TIMEOUT=%s: the library reads %v, %v: it would refuse to start", env, d, err)
				}
			}
		})
	}
}

// docPath is a configuration path with what a file:// URL must encode: a
// space (systemd splits Documentation= at spaces), a "%" (also a systemd
// specifier) and non-ASCII.
const docPath = "/etc/power house/100% été.toml"

// TestDocumentationURL compares the target and supervisor units generated
// for docPath with testdata/docurl, where Documentation= holds the
// percent-encoded URL with each "%" doubled for systemd.
func TestDocumentationURL(t *testing.T) {
	o := Options{Binary: "/usr/bin/powerhouse", ConfigPath: docPath}
	_, us := generate(t, o, []byte("[[worker]]\nname = \"w\"\nexec = \"/w\"\n"))
	for _, u := range us[:2] {
		golden(t, filepath.Join("testdata", "docurl", u.Name), u.Render(o))
	}
	const wantURL = "file:///etc/power%%20house/100%%25%%20%%C3%%A9t%%C3%%A9.toml"
	if got := DocumentationURL(docPath); got != wantURL {
		t.Errorf("DocumentationURL = %s, want %s", got, wantURL)
	}
}

// TestVerifyUnits runs the real systemd-analyze verify on every unit
// generated from the golden configurations, with a configuration path
// holding a space: it must report nothing (before the URL was encoded it
// said "Invalid URL, ignoring" and dropped the link).
func TestVerifyUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze not found: apt-get install systemd")
		}
		t.Skip("systemd-analyze not found: apt-get install systemd")
	}
	files, _ := filepath.Glob("../testdata/config/*.good.toml")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// The binary must exist for verify; the configuration path is
			// only written into the units.
			o := Options{Binary: "/bin/true", ConfigPath: docPath}
			_, us := generate(t, o, data)
			dir := t.TempDir()
			args := []string{"verify", "--man=no"}
			for _, u := range us {
				os.MkdirAll(filepath.Dir(filepath.Join(dir, u.Name)), 0o755)
				if err := os.WriteFile(filepath.Join(dir, u.Name), u.Render(o), 0o644); err != nil {
					t.Fatal(err)
				}
				name := u.Name
				if strings.Contains(name, ".d/") {
					// A drop-in: verified with its unit, an instance of the
					// template it extends.
					name = strings.Split(name, ".d/")[0]
				}
				if strings.HasSuffix(name, "@.service") || strings.HasSuffix(name, "@.socket") {
					name = strings.Replace(name, "@.", "@1.", 1) // an instance of each template
				}
				args = append(args, filepath.Join(dir, name))
			}
			cmd := exec.Command(analyze, args...)
			cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
			out, err := cmd.CombinedOutput()
			// Programs named in the configurations do not exist here.
			var findings []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l != "" && !strings.Contains(l, " is not executable: No such file or directory") {
					findings = append(findings, l)
				}
			}
			if len(findings) > 0 {
				t.Errorf("systemd-analyze verify (%v):\n%s", err, strings.Join(findings, "\n"))
			}
		})
	}
}

// directives returns the values of name in section of the unit named
// unitName among us.
func directives(us []Unit, unitName, section, name string) []string {
	var out []string
	for _, u := range us {
		if u.Name != unitName {
			continue
		}
		for _, o := range u.Options {
			if o.Section == section && o.Name == name {
				out = append(out, o.Value)
			}
		}
	}
	return out
}

// TestWorkerIdentity: workers run as the static user powerhouse unless
// the configuration names another; under --user they get no User=; the
// supervisor joins the workers' groups (to give them config.json without
// CAP_CHOWN); a group that asks for root is said so.
func TestWorkerIdentity(t *testing.T) {
	for _, tc := range []struct {
		name, service string
		user          bool
		wantUser      string // "" for no User=
		wantGroup     string
		wantSupp      string // the supervisor's SupplementaryGroups=
		wantNote      string // a substring of the notes, "" for none
	}{
		{name: "default", wantUser: "powerhouse", wantGroup: "powerhouse", wantSupp: "powerhouse"},
		{name: "default group only", service: `group = "web"`, wantUser: "powerhouse", wantGroup: "web", wantSupp: "web"},
		{name: "own user and group", service: "user = \"www-data\"\ngroup = \"www-data\"", wantUser: "www-data", wantGroup: "www-data", wantSupp: "www-data"},
		{name: "own user, its group", service: `user = "www-data"`, wantUser: "www-data", wantNote: `user = "www-data" without group: set group too`},
		{name: "root asked for", service: `user = "root"`, wantUser: "root", wantNote: "group w runs as root because the configuration asks for it"},
		{name: "uid 0 asked for", service: `user = "0"`, wantUser: "0", wantNote: "group w runs as root"},
		{name: "group root asked for", service: `group = "root"`, wantUser: "powerhouse", wantGroup: "root", wantNote: "group w runs with group root"},
		{name: "user manager", user: true},
		{name: "user manager, a user asked for", service: `user = "www-data"`, user: true, wantNote: "ignored for a user manager"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "[[worker]]\nname = \"w\"\nexec = \"/w\"\nlisten = [80]\nsticky = true\n[worker.service]\n" + tc.service + "\n"
			c, err := config.Parse(testOpts.ConfigPath, []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			o := testOpts
			o.User = tc.user
			us, err := Generate(c, o)
			if err != nil {
				t.Fatal(err)
			}
			one := func(unitName, section, name string) string {
				return strings.Join(directives(us, unitName, section, name), "|")
			}
			if got := one(units.Group{Name: "w"}.WorkerTemplate(), "Service", "User"); got != tc.wantUser {
				t.Errorf("User=%q, want %q", got, tc.wantUser)
			}
			if got := one(units.Group{Name: "w"}.WorkerTemplate(), "Service", "Group"); got != tc.wantGroup {
				t.Errorf("Group=%q, want %q", got, tc.wantGroup)
			}
			if got := one(units.SupervisorTemplate, "Service", "SupplementaryGroups"); got != tc.wantSupp {
				t.Errorf("supervisor SupplementaryGroups=%q, want %q", got, tc.wantSupp)
			}
			if got := WorkerGroup(&c.Workers[0], o); got != tc.wantSupp {
				t.Errorf("WorkerGroup=%q, want %q", got, tc.wantSupp)
			}
			notes := strings.Join(Notes(c, o), "\n")
			if (tc.wantNote == "") != (notes == "") || !strings.Contains(notes, tc.wantNote) {
				t.Errorf("notes %q, want %q", notes, tc.wantNote)
			}
			// The hand-off: only the supervisor's uid, credentials on every datagram.
			uid := "POWERHOUSE_SUPERVISOR_UID=0"
			if tc.user {
				uid = "POWERHOUSE_SUPERVISOR_UID=%U"
			}
			if env := one(units.Group{Name: "w"}.WorkerTemplate(), "Service", "Environment"); !strings.Contains(" "+env+" ", " "+uid+" ") {
				t.Errorf("worker Environment=%q lacks %s", env, uid)
			}
			sock := units.Group{Name: "w"}.HandoffTemplate()
			if got := one(sock, "Socket", "PassCredentials") + " " + one(sock, "Socket", "SocketMode"); got != "yes 0600" {
				t.Errorf("hand-off socket PassCredentials and SocketMode: %q, want \"yes 0600\"", got)
			}
		})
	}
}

// TestSupervisorGroupsOnce: the supervisor template serves every group and
// joins each worker group once, in a stable order.
func TestSupervisorGroupsOnce(t *testing.T) {
	c, err := config.Parse(testOpts.ConfigPath, []byte(`
[[worker]]
name = "a"
exec = "/w"
[worker.service]
group = "zeta"
[[worker]]
name = "b"
exec = "/w"
[[worker]]
name = "c"
exec = "/w"
[[worker]]
name = "d"
exec = "/w"
[worker.service]
user = "root"
`))
	if err != nil {
		t.Fatal(err)
	}
	us, err := Generate(c, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(directives(us, units.SupervisorTemplate, "Service", "SupplementaryGroups"), "|"); got != "powerhouse zeta" {
		t.Errorf("SupplementaryGroups=%q, want \"powerhouse zeta\"", got)
	}
	if got := directives(us, units.Group{Name: "b"}.WorkerTemplate(), "Service", "Environment"); strings.Contains(strings.Join(got, " "), "SUPERVISOR_UID") {
		t.Errorf("a group that is not sticky gets POWERHOUSE_SUPERVISOR_UID: %q", got)
	}
}

// TestWorkerSchedulingPolicy: cpu_scheduling_policy reaches the worker
// template in both scopes (an unprivileged manager may set batch and idle),
// and nothing is written without it.
func TestWorkerSchedulingPolicy(t *testing.T) {
	for _, tc := range []struct{ service, want string }{{"", ""}, {`cpu_scheduling_policy = "batch"`, "batch"}, {`cpu_scheduling_policy = "idle"`, "idle"}} {
		for _, o := range []Options{testOpts, {Binary: "/home/u/bin/powerhouse", ConfigPath: "/home/u/.config/powerhouse/powerhouse.toml", User: true}} {
			_, us := generate(t, o, []byte("[[worker]]\nname = \"n\"\nexec = \"/srv/app\"\n[worker.service]\n"+tc.service+"\n"))
			if got := strings.Join(directives(us, units.Group{Name: "n"}.WorkerTemplate(), "Service", "CPUSchedulingPolicy"), "|"); got != tc.want {
				t.Errorf("%q (user scope %v): CPUSchedulingPolicy=%q, want %q", tc.service, o.User, got, tc.want)
			}
		}
	}
}

// TestWorkerHardeningRelaxable: the worker hardening that breaks some
// runtimes can be relaxed per group, and the rest is always there.
func TestWorkerHardeningRelaxable(t *testing.T) {
	for _, tc := range []struct {
		name, service    string
		wantWX, wantProc string
	}{
		{name: "defaults", wantWX: "yes", wantProc: "pid"},
		{name: "a JIT", service: "memory_deny_write_execute = false", wantWX: "no", wantProc: "pid"},
		{name: "reads /proc/cpuinfo", service: `proc_subset = "all"`, wantWX: "yes", wantProc: "all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, us := generate(t, testOpts, []byte("[[worker]]\nname = \"n\"\nexec = \"/srv/app\"\n[worker.service]\n"+tc.service+"\n"))
			w := units.Group{Name: "n"}.WorkerTemplate()
			if got := strings.Join(directives(us, w, "Service", "MemoryDenyWriteExecute"), "|"); got != tc.wantWX {
				t.Errorf("MemoryDenyWriteExecute=%q, want %q", got, tc.wantWX)
			}
			if got := strings.Join(directives(us, w, "Service", "ProcSubset"), "|"); got != tc.wantProc {
				t.Errorf("ProcSubset=%q, want %q", got, tc.wantProc)
			}
			for _, d := range [][2]string{
				{"CapabilityBoundingSet", ""},
				{"SystemCallFilter", "@system-service"},
				{"SystemCallArchitectures", "native"},
				{"RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"},
				{"RestrictNamespaces", "yes"},
				{"ProtectProc", "invisible"},
			} {
				if got := directives(us, w, "Service", d[0]); len(got) == 0 || got[0] != d[1] {
					t.Errorf("%s=%q, want %q", d[0], got, d[1])
				}
			}
		})
	}
}

// golden compares got with the file at p, or with -update writes it there.
func golden(t *testing.T, p string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./generator -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (run with -update and review git diff):\n%s", filepath.Base(p), p, got)
	}
}

// kernelMode reports whether the configuration src has a kernel-mode
// group; with o.User it checks that Generate refuses it, naming the key
// and its line.
func kernelMode(t *testing.T, o Options, src []byte) bool {
	t.Helper()
	c, err := config.Parse(o.ConfigPath, src)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range c.Workers {
		if !w.KernelDispatch() {
			continue
		}
		_, err := Generate(c, o)
		var l config.ErrorList
		if !o.User {
			return true
		}
		if !errors.As(err, &l) || len(l) != 1 {
			t.Fatalf("Generate --user of a kernel-mode group: %v; want one configuration error", err)
		}
		if ce := l[0]; ce.Key != "worker.dispatch" || ce.Line != c.WorkerError(i, "dispatch", "").Line || ce.Line == 0 || !strings.Contains(ce.Msg, "needs a system manager") {
			t.Errorf("Generate --user of a kernel-mode group: %v; want the dispatch key's line and why", err)
		}
		return true
	}
	return false
}

// generate parses src as a configuration at o.ConfigPath and generates its
// units, failing the test on any error.
func generate(t *testing.T, o Options, src []byte) (*config.Config, []Unit) {
	t.Helper()
	c, err := config.Parse(o.ConfigPath, src)
	if err != nil {
		t.Fatal(err)
	}
	us, err := Generate(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return c, us
}

// TestKernelDropIn: the supervisor's drop-in lists the sockets of
// instances 1..amount (what scale rewrites), within 1..MaxAmount, and the
// one unit name and path every writer uses.
func TestKernelDropIn(t *testing.T) {
	w := &config.Worker{Name: "web", Sticky: true, Dispatch: config.Kernel}
	for _, tc := range []struct {
		name   string
		amount int
		socks  string
	}{
		{name: "one", amount: 1, socks: "powerhouse-web@1.socket"},
		{name: "three", amount: 3, socks: "powerhouse-web@1.socket powerhouse-web@2.socket powerhouse-web@3.socket"},
		{name: "zero clamped", amount: 0, socks: "powerhouse-web@1.socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := KernelDropIn(w, testOpts, tc.amount)
			if u.Name != "powerhouse@web.service.d/50-kernel.conf" || u.Name != (units.Group{Name: "web"}).KernelDropIn() {
				t.Errorf("Name = %q", u.Name)
			}
			if got := directives([]Unit{u}, u.Name, "Service", "Sockets"); len(got) != 1 || got[0] != tc.socks {
				t.Errorf("Sockets = %q, want %q", got, tc.socks)
			}
		})
	}
	// The store holds the bucket table and a program and a socket array
	// per listen address (package steer).
	for _, tc := range []struct{ listen, want int }{{1, 8}, {3, 8}, {4, 9}, {6, 13}} {
		wl := *w
		wl.Listen = make([]config.Listener, tc.listen)
		u := KernelDropIn(&wl, testOpts, 2)
		if got := directives([]Unit{u}, u.Name, "Service", "FileDescriptorStoreMax"); len(got) != 1 || got[0] != strconv.Itoa(tc.want) {
			t.Errorf("%d listen addresses: FileDescriptorStoreMax=%q, want %d", tc.listen, got, tc.want)
		}
	}
	big := KernelDropIn(w, testOpts, config.MaxAmount+5)
	if got := directives([]Unit{big}, big.Name, "Service", "Sockets"); len(strings.Fields(got[0])) != config.MaxAmount {
		t.Errorf("%d sockets for an amount over MaxAmount", len(strings.Fields(got[0])))
	}
}

// TestPortOnlyListenerBesideIPv6: ":p" means every address, IPv4 and
// IPv6. In a socket unit that needs BindIPv6Only=ipv6-only (an "[addr]:q"
// listener beside it), a bare port would bind IPv6 only, so it becomes an
// IPv4 and an IPv6 wildcard; alone, it stays a bare port (dual-stack).
// (Kernel mode refuses the mix: config's "port beside IPv6" case.)
func TestPortOnlyListenerBesideIPv6(t *testing.T) {
	for _, tc := range []struct {
		name, listen, dispatch string
		unit                   string
		want                   []string
		v6only                 bool
	}{
		{"alone", `[":8080"]`, "", units.Group{Name: "n"}.PublicSocket(), []string{"8080"}, false},
		{"beside IPv6", `[":8080", "[::1]:8081"]`, "", units.Group{Name: "n"}.PublicSocket(), []string{"0.0.0.0:8080", "[::]:8080", "[::1]:8081"}, true},
		{"beside IPv4", `[":8080", "127.0.0.1:8081"]`, "", units.Group{Name: "n"}.PublicSocket(), []string{"8080", "127.0.0.1:8081"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, us := generate(t, testOpts, []byte("[[worker]]\nname = \"n\"\nexec = \"/srv/app\"\nsticky = true\n"+tc.dispatch+"listen = "+tc.listen+"\n"))
			if got := directives(us, tc.unit, "Socket", "ListenStream"); !slices.Equal(got, tc.want) {
				t.Errorf("ListenStream=%q, want %q", got, tc.want)
			}
			if got := len(directives(us, tc.unit, "Socket", "BindIPv6Only")) > 0; got != tc.v6only {
				t.Errorf("BindIPv6Only= present: %v, want %v", got, tc.v6only)
			}
		})
	}
}

// TestSides: every reloadable group, whatever its kind, gets the side-B
// worker template beside side A's, and a group with reloadable = false
// gets none. Side B is side A's template but for two lines: its
// Description= says ", side b" and its environment POWERHOUSE_SIDE=b
// (side A's =a). So both sides have the same Sockets=, Requires= and
// After= on the slot's socket, in both scopes.
func TestSides(t *testing.T) {
	userOpts := Options{Binary: "/home/u/bin/powerhouse", ConfigPath: "/home/u/.config/powerhouse/powerhouse.toml", User: true}
	for _, tc := range []struct {
		name, src string
		sideB     bool
		sockets   string // the Sockets= of both sides, "" for none
		user      bool   // also in a user's manager
	}{
		{"hand-off sticky", "sticky = true\nlisten = [80]\n", true, "powerhouse-w@%i.socket", true},
		{"kernel mode", "sticky = true\ndispatch = \"kernel\"\nlisten = [\"127.0.0.1:80\"]\n", true, "powerhouse-w@%i.socket", false},
		{"shared cluster", "listen = [80, { address = 81, proxy_protocol = true, proxy_from = [\"10.0.0.1\"] }]\n", true, "powerhouse@w.socket powerhouse-proxy@w.socket", true},
		{"cluster without sockets", "", true, "", true},
		{"child", "type = \"child\"\n", true, "", true},
		{"hand-off sticky, not reloadable", "sticky = true\nlisten = [80]\nreloadable = false\n", false, "powerhouse-w@%i.socket", true},
		{"child, not reloadable", "type = \"child\"\nreloadable = false\n", false, "", true},
	} {
		for _, o := range []Options{testOpts, userOpts} {
			if o.User && !tc.user {
				continue
			}
			t.Run(tc.name+"/"+o.Scope().String(), func(t *testing.T) {
				src := "[prepare]\nexec = \"/p\"\n[[worker]]\nname = \"w\"\ntitle = \"T\"\nexec = \"/w\"\n" + tc.src
				_, us := generate(t, o, []byte(src))
				g := units.Group{Name: "w"}
				var a, b *Unit
				for i := range us {
					switch us[i].Name {
					case g.WorkerTemplateSide(units.SideA):
						a = &us[i]
					case g.WorkerTemplateSide(units.SideB):
						b = &us[i]
					}
				}
				if a == nil {
					t.Fatalf("no side-A template %s", g.WorkerTemplate())
				}
				if a.Name != g.WorkerTemplate() {
					t.Errorf("side A is %s, want the contract's %s", a.Name, g.WorkerTemplate())
				}
				if side := directives([]Unit{*a}, a.Name, "Service", "Environment"); !strings.Contains(" "+side[0]+" ", " POWERHOUSE_SIDE=a ") {
					t.Errorf("side A's environment %q lacks POWERHOUSE_SIDE=a", side[0])
				}
				if got := strings.Join(directives([]Unit{*a}, a.Name, "Service", "Sockets"), " "); got != tc.sockets {
					t.Errorf("side A: Sockets=%q, want %q", got, tc.sockets)
				}
				if (b != nil) != tc.sideB {
					t.Fatalf("side-B template %s generated: %v, want %v", g.WorkerTemplateSide(units.SideB), b != nil, tc.sideB)
				}
				if b == nil {
					return
				}
				if len(a.Options) != len(b.Options) {
					t.Fatalf("side A has %d directives, side B %d:\n%s\n%s", len(a.Options), len(b.Options), a.Render(o), b.Render(o))
				}
				var differ []string
				for i, oa := range a.Options {
					ob := b.Options[i]
					if oa.Section != ob.Section || oa.Name != ob.Name {
						t.Fatalf("directive %d: side A %s.%s, side B %s.%s", i, oa.Section, oa.Name, ob.Section, ob.Name)
					}
					if oa.Value == ob.Value {
						continue
					}
					differ = append(differ, oa.Name)
					switch oa.Name {
					case "Description":
						if want := "T (w #%i, side b)"; ob.Value != want || oa.Value != "T (w #%i)" {
							t.Errorf("Description= side A %q, side B %q; want side B %q", oa.Value, ob.Value, want)
						}
					case "Environment":
						if want := strings.Replace(oa.Value, "POWERHOUSE_SIDE=a", "POWERHOUSE_SIDE=b", 1); ob.Value != want {
							t.Errorf("Environment= side A %q, side B %q; want %q", oa.Value, ob.Value, want)
						}
					}
				}
				if got := strings.Join(differ, " "); got != "Description Environment" {
					t.Errorf("the sides differ in %q, want exactly Description and Environment", got)
				}
				for _, d := range [][2]string{{"Unit", "Requires"}, {"Unit", "After"}, {"Service", "Sockets"}} {
					if sa, sb := directives([]Unit{*a}, a.Name, d[0], d[1]), directives([]Unit{*b}, b.Name, d[0], d[1]); !slices.Equal(sa, sb) {
						t.Errorf("%s=: side A %q, side B %q", d[1], sa, sb)
					}
				}
			})
		}
	}
}

// TestDeferAccept: the public sockets of a group with a key affinity and
// a TCP listener get DeferAcceptSec=1 (the supervisor's peek then finds
// the request head at accept); source affinity, unix-only groups and the
// PROXY listeners' unit do not.
func TestDeferAccept(t *testing.T) {
	g := units.Group{Name: "n"}
	for _, tc := range []struct {
		name, lines   string
		public, proxy string // DeferAcceptSec= of each unit ("" none)
	}{
		{name: "source affinity", lines: `listen = ["127.0.0.1:8080"]`},
		{name: "query key, TCP", lines: "listen = [\"127.0.0.1:8080\"]\naffinity = \"query:sid\"", public: "1"},
		{name: "header key, port only", lines: "listen = [8080]\naffinity = \"header:X-Session\"", public: "1"},
		{name: "cookie key, unix only", lines: "listen = [\"/run/n/http.sock\"]\naffinity = \"cookie:sid\""},
		{name: "cookie key, TCP and unix", lines: "listen = [\"/run/n/http.sock\", \"127.0.0.1:8080\"]\naffinity = \"cookie:sid\"", public: "1"},
		{name: "query key, TCP and PROXY", lines: "listen = [\"127.0.0.1:8080\", { address = \"127.0.0.1:8443\", proxy_protocol = true, proxy_from = [\"127.0.0.1\"] }]\naffinity = \"query:sid\"", public: "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, us := generate(t, testOpts, []byte("[[worker]]\nname = \"n\"\nexec = \"/srv/app\"\nsticky = true\n"+tc.lines+"\n"))
			if got := strings.Join(directives(us, g.PublicSocket(), "Socket", "DeferAcceptSec"), "|"); got != tc.public {
				t.Errorf("%s: DeferAcceptSec=%q, want %q", g.PublicSocket(), got, tc.public)
			}
			if got := strings.Join(directives(us, g.ProxySocket(), "Socket", "DeferAcceptSec"), "|"); got != tc.proxy {
				t.Errorf("%s: DeferAcceptSec=%q, want %q", g.ProxySocket(), got, tc.proxy)
			}
		})
	}
}
