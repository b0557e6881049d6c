package config

import (
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

const good = `title = "MyApp"
amount = 3

[prepare]
exec = "/usr/local/bin/getports 2"

[[worker]]
name = "web"
title = "HTTP server"
exec = "/usr/local/bin/myapp serve --flag 'two words'"
amount = 4
sticky = true
listen = ["0.0.0.0:9999", "[::]:9999", { address = 9000, proxy_protocol = true, proxy_from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.9"], name = "lb" }, "/run/app.sock"]
[worker.config]
port = 9999
nested = { a = [1, 2] }

[[worker]]
name = "mail"
type = "child"
exec = ["/bin/mail-loop", "--every", "5s"]
reloadable = false
`

func TestParseGood(t *testing.T) {
	c, err := Parse("/etc/powerhouse/powerhouse.toml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		File: "/etc/powerhouse/powerhouse.toml", Title: "MyApp", Amount: 3,
		Prepare: &Prepare{Exec: []string{"/usr/local/bin/getports", "2"}},
		Workers: []Worker{{
			Name: "web", Title: "HTTP server",
			Exec:   []string{"/usr/local/bin/myapp", "serve", "--flag", "two words"},
			Amount: 4, Reloadable: true, Type: Cluster, Sticky: true, Dispatch: Handoff, NotifyReady: true, Service: defaultService(),
			Listen: []Listener{
				{Name: "0.0.0.0:9999", Network: "tcp", Address: "0.0.0.0:9999"},
				{Name: "[::]:9999", Network: "tcp", Address: "[::]:9999"},
				{Name: "lb", Network: "tcp", Address: ":9000", ProxyProtocol: true, ProxyFrom: []netip.Prefix{
					netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
					netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("198.51.100.9/32"),
				}},
				{Name: "/run/app.sock", Network: "unix", Address: "/run/app.sock"},
			},
			Config: map[string]any{"port": int64(9999), "nested": map[string]any{"a": []any{int64(1), int64(2)}}},
		}, {
			Name: "mail", Title: "MyApp", Exec: []string{"/bin/mail-loop", "--every", "5s"},
			Amount: 3, Reloadable: false, Type: Child, Dispatch: Handoff, Service: defaultService(), Config: map[string]any{},
		}},
	}
	want.loc = c.loc // positions are WorkerError's, tested there
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", c, want)
	}
}

// TestDispatch: the dispatch modes a group may choose, and what the
// default is.
func TestDispatch(t *testing.T) {
	const w = "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\n"
	for _, tc := range []struct {
		name   string
		src    string
		want   Dispatch
		kernel bool
	}{
		{name: "default sticky", src: w + "sticky = true\nlisten = [80]\n", want: Handoff},
		{name: "default shared", src: w + "listen = [80]\n", want: Handoff},
		{name: "handoff written", src: w + "sticky = true\nlisten = [80]\ndispatch = \"handoff\"\n", want: Handoff},
		{name: "handoff on a shared group", src: w + "listen = [80]\ndispatch = \"handoff\"\n", want: Handoff},
		{name: "kernel", src: w + "sticky = true\nlisten = [\"127.0.0.1:80\", \"[::1]:80\", \"0.0.0.0:81\"]\ndispatch = \"kernel\"\n", want: Kernel, kernel: true},
		{name: "kernel, a port alone", src: w + "sticky = true\nlisten = [81]\ndispatch = \"kernel\"\n", want: Kernel, kernel: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/ph.toml", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if w := c.Workers[0]; w.Dispatch != tc.want || w.KernelDispatch() != tc.kernel {
				t.Errorf("Dispatch = %q, KernelDispatch = %v; want %q, %v", w.Dispatch, w.KernelDispatch(), tc.want, tc.kernel)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("/x.toml", []byte("[[worker]]\nname = \"w\"\nexec = \"w\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Workers[0]
	if c.Amount != runtime.NumCPU() || w.Amount != runtime.NumCPU() {
		t.Errorf("amount = %d/%d, want NumCPU %d", c.Amount, w.Amount, runtime.NumCPU())
	}
	if !w.Reloadable || w.Type != Cluster || w.Sticky || c.Verbose || w.Title != "PowerHouse" {
		t.Errorf("defaults wrong: %+v", w)
	}
}

func TestRelativeExec(t *testing.T) {
	c, err := Parse("/srv/app/house.toml", []byte("[[worker]]\nname = \"w\"\nexec = \"../bin/hello -x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Workers[0].Exec; got[0] != "/srv/bin/hello" || got[1] != "-x" {
		t.Errorf("exec = %q, want /srv/bin/hello resolved against the file", got)
	}
}

func TestListenForms(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`9999`, ":9999"},
		{`"9999"`, ":9999"},
		{`":9999"`, ":9999"},
		{`"127.0.0.1:80"`, "127.0.0.1:80"},
		{`"[::1]:80"`, "[::1]:80"},
		{`"[0:0::1]:80"`, "[::1]:80"},
		{`"/run/x.sock"`, "/run/x.sock"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			c, err := Parse("/x.toml", []byte("[[worker]]\nname = \"w\"\nexec = \"w\"\nlisten = ["+tc.in+"]\n"))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Workers[0].Listen[0].Address; got != tc.want {
				t.Errorf("address = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestBad checks that each bad configuration is refused with the exact
// line and key of the problem.
func TestBad(t *testing.T) {
	const w = "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\n" // lines 1-3
	for _, tc := range []struct {
		name string
		src  string
		line int
		key  string
		msg  string // substring
	}{
		{"unknown top key", "colour = 1\n" + w, 1, "colour", "unknown key"},
		{"unknown worker key", w + "colour = 1\n", 4, "worker.colour", "unknown key"},
		{"unknown prepare key", "[prepare]\nexec = \"/x\"\nwhen = 1\n" + w, 3, "prepare.when", "unknown key"},
		{"unknown listen key", w + "listen = [{ address = 80, tls = true }]\n", 4, "worker.listen.tls", "unknown key"},
		{"title newline", "title = \"a\\nExecStartPre=/bin/sh\"\n" + w, 1, "title", "line break"},
		{"title control", "title = \"a\\u0007\"\n" + w, 1, "title", "control character"},
		{"title trailing backslash", "title = 'a\\'\n" + w, 1, "title", "backslash"},
		{"title empty", w + "title = \"\"\n", 4, "worker.title", "empty"},
		{"title not string", "title = 3\n" + w, 1, "title", "must be a string"},
		{"amount negative", "amount = -1\n" + w, 1, "amount", "out of range"},
		{"amount zero", w + "amount = 0\n", 4, "worker.amount", "out of range"},
		{"amount huge", w + "amount = 100000\n", 4, "worker.amount", "out of range"},
		{"amount string", w + "amount = \"4\"\n", 4, "worker.amount", "must be an integer"},
		{"verbose string", "verbose = \"yes\"\n" + w, 1, "verbose", "true or false"},
		{"duplicate name", w + "\n" + w, 6, "worker.name", "duplicate group name"},
		{"bad name", "[[worker]]\nname = \"Web.1\"\nexec = \"/w\"\n", 2, "worker.name", "not a valid group name"},
		{"name with at", "[[worker]]\nname = \"a@b\"\nexec = \"/w\"\n", 2, "worker.name", "not a valid group name"},
		{"name too long", "[[worker]]\nname = \"" + strings.Repeat("a", 33) + "\"\nexec = \"/w\"\n", 2, "worker.name", "longer than"},
		{"reserved name", "[[worker]]\nname = \"prepare\"\nexec = \"/w\"\n", 2, "worker.name", "reserved"},
		{"reserved proxy", "[[worker]]\nname = \"proxy\"\nexec = \"/w\"\n", 2, "worker.name", "reserved (powerhouse-proxy* names the house's own units)"},
		{"missing name", "[[worker]]\nexec = \"/w\"\n", 1, "worker", "missing key name"},
		{"missing exec", "[[worker]]\nname = \"w\"\n", 1, "worker", "missing key exec"},
		{"empty exec", "[[worker]]\nname = \"w\"\nexec = \"\"\n", 3, "worker.exec", "empty"},
		{"exec newline", "[[worker]]\nname = \"w\"\nexec = \"/bin/w\\nExecStartPre=/bin/sh\"\n", 3, "worker.exec", "line break"},
		{"exec unterminated quote", "[[worker]]\nname = \"w\"\nexec = \"/bin/w 'x\"\n", 3, "worker.exec", "unterminated"},
		{"exec prefix char", "[[worker]]\nname = \"w\"\nexec = \"-/bin/w\"\n", 3, "worker.exec", "must not start"},
		{"exec array of ints", "[[worker]]\nname = \"w\"\nexec = [1]\n", 3, "worker.exec", "strings"},
		{"bad type", w + "type = \"fork\"\n", 4, "worker.type", "not a worker type"},
		{"sticky child", w + "type = \"child\"\nsticky = true\n", 5, "worker.sticky", "no connections"},
		{"child listen", w + "type = \"child\"\nlisten = [80]\n", 5, "worker.listen", "no sockets"},
		{"sticky no listen", w + "sticky = true\n", 4, "worker.sticky", "needs listen"},
		{"bad port", w + "listen = [\"127.0.0.1:99999\"]\n", 4, "worker.listen", "port must be"},
		{"port zero", w + "listen = [0]\n", 4, "worker.listen", "port must be"},
		{"host name", w + "listen = [\"localhost:80\"]\n", 4, "worker.listen", "IPv4 address"},
		{"ipv6 unbracketed", w + "listen = [\"::1:80\"]\n", 4, "worker.listen", "IPv4 address"},
		{"relative unix path", w + "listen = [\"run/x.sock\"]\n", 4, "worker.listen", "port must be"},
		{"unix path unclean", w + "listen = [\"/run/../x.sock\"]\n", 4, "worker.listen", "clean"},
		{"duplicate address", w + "listen = [80]\n" + "[[worker]]\nname = \"v\"\nexec = \"/v\"\nlisten = [\"0.0.0.0:80\"]\n", 8, "worker.listen", "already listened"},
		{"listen wrong type", w + "listen = true\n", 4, "worker.listen", "string or a port"},
		{"proxy not bool", w + "listen = [{ address = 80, proxy_protocol = \"yes\" }]\n", 4, "worker.listen.proxy_protocol", "true or false"},
		{"config not table", w + "config = 3\n", 4, "worker.config", "must be a table"},
		{"service unknown key", w + "[worker.service]\nuser = \"x\"\nexec_start_pre = \"/bin/sh\"\n", 6, "worker.service.exec_start_pre", "unknown key"},
		{"service bad user", w + "[worker.service]\nuser = \"root\\nExecStartPre=/bin/sh\"\n", 5, "worker.service.user", "line break"},
		{"service bad memory", w + "[worker.service]\nmemory_max = \"lots\"\n", 5, "worker.service.memory_max", "not a size"},
		{"service bad env name", w + "[worker.service]\nenvironment = { \"A B\" = \"x\" }\n", 5, "worker.service.environment.A B", "not a valid environment"},
		{"service reserved env", w + "[worker.service]\nenvironment = { LISTEN_FDS = \"3\" }\n", 5, "worker.service.environment.LISTEN_FDS", "set by PowerHouse"},
		{"service relative path", w + "[worker.service]\nworking_directory = \"srv\"\n", 5, "worker.service.working_directory", "absolute"},
		{"service protect_system", w + "[worker.service]\nprotect_system = \"maybe\"\n", 5, "worker.service.protect_system", "use"},
		{"service proc_subset", w + "[worker.service]\nproc_subset = \"some\"\n", 5, "worker.service.proc_subset", "use"},
		{"service realtime policy", w + "[worker.service]\ncpu_scheduling_policy = \"fifo\"\n", 5, "worker.service.cpu_scheduling_policy", "real-time policies are not for workers"},
		{"service w^x not bool", w + "[worker.service]\nmemory_deny_write_execute = \"no\"\n", 5, "worker.service.memory_deny_write_execute", "true or false"},
		{"dispatch unknown", w + "sticky = true\nlisten = [80]\ndispatch = \"ebpf\"\n", 6, "worker.dispatch", `"ebpf" is not a dispatch mode: use "handoff" or "kernel"`},
		{"dispatch not string", w + "sticky = true\nlisten = [80]\ndispatch = true\n", 6, "worker.dispatch", "must be a string"},
		{"dispatch kernel not sticky", w + "listen = [80]\ndispatch = \"kernel\"\n", 5, "worker.dispatch", "only applies to a sticky group"},
		{"dispatch kernel child", w + "type = \"child\"\ndispatch = \"kernel\"\n", 5, "worker.dispatch", "only applies to a sticky group"},
		{"dispatch kernel proxy", w + "sticky = true\nlisten = [80, { address = 81, proxy_protocol = true, proxy_from = [\"10.0.0.1\"], name = \"lb\" }]\ndispatch = \"kernel\"\n", 6, "worker.dispatch", `cannot serve listener "lb" with proxy_protocol = true: the client's address is inside the stream`},
		{"dispatch kernel port beside IPv6", w + "sticky = true\nlisten = [\":8080\", \"[::1]:8081\"]\ndispatch = \"kernel\"\n", 6, "worker.dispatch", `write "0.0.0.0:8080" and "[::]:8080" as two listeners`},
		{"dispatch kernel unix", w + "sticky = true\nlisten = [\"/run/w.sock\"]\ndispatch = \"kernel\"\n", 6, "worker.dispatch", "cannot serve unix socket /run/w.sock"},
		{"health bad port", "health = \"127.0.0.1:0\"\n" + w, 1, "health", "port must be"},
		{"health host name", "health = \"localhost:9990\"\n" + w, 1, "health", "IPv4 address"},
		{"health wrong type", "health = true\n" + w, 1, "health", "string or a port"},
		{"health unix unclean", "health = \"/run/../h.sock\"\n" + w, 1, "health", "clean"},
		{"health taken by a group", "health = 9990\n" + w + "listen = [\"127.0.0.1:9990\"]\n", 5, "worker.listen", "already the health endpoint's (health, line 1)"},
		{"metrics host name", "metrics = \"localhost:9464\"\n" + w, 1, "metrics", "IPv4 address"},
		{"metrics wrong type", "metrics = true\n" + w, 1, "metrics", "string or a port"},
		{"metrics is health", "health = 9990\nmetrics = \"127.0.0.1:9990\"\n" + w, 2, "metrics", "already the health endpoint's (health, line 1)"},
		{"metrics taken by a group", "metrics = 9464\n" + w + "listen = [\"127.0.0.1:9464\"]\n", 5, "worker.listen", "already the metrics endpoint's (metrics, line 1)"},
		{"prepare no exec", "[prepare]\n" + w, 1, "prepare", "missing key exec"},
		{"no worker", "title = \"x\"\n", 0, "", "at least one worker"},
		{"toml syntax", "title = \n" + w, 1, "", "expected value"},
		{"duplicate key", "title = \"a\"\ntitle = \"b\"\n" + w, 2, "", "already been defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/ph.toml", []byte(tc.src))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse error = %v, want an ErrorList", err)
			}
			for _, e := range list {
				if e.Line == tc.line && (tc.key == "" || e.Key == tc.key) && strings.Contains(e.Msg, tc.msg) {
					if !strings.HasPrefix(e.Error(), "/etc/ph.toml:") {
						t.Errorf("message %q does not start with the file name", e.Error())
					}
					return
				}
			}
			t.Errorf("want line %d key %q containing %q; got:\n%v", tc.line, tc.key, tc.msg, err)
		})
	}
}

// TestAllErrorsAtOnce is the example: five problems, five lines.
func TestAllErrorsAtOnce(t *testing.T) {
	src := `title = "two\nlines"
colour = "red"
[[worker]]
name = "web"
exec = "/bin/web"
amount = -1
listen = ["not-an-address:x"]
[[worker]]
name = "web"
exec = "/bin/web"
`
	_, err := Parse("/c.toml", []byte(src))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		"/c.toml:1: title: must not contain a line break",
		"/c.toml:2: colour: unknown key",
		"/c.toml:6: worker.amount: -1 is out of range",
		"/c.toml:7: worker.listen: address \"not-an-address:x\"",
		"/c.toml:9: worker.name: duplicate group name \"web\" (also at line 4)",
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

// TestReference parses the commented reference configuration shipped in
// docs, so it cannot drift from what the parser accepts.
func TestReference(t *testing.T) {
	if _, err := Load(filepath.Join("..", "docs", "reference.toml")); err != nil {
		t.Fatal(err)
	}
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a b  c", []string{"a", "b", "c"}},
		{`a 'b c' "d \"e\" \$f" g\ h`, []string{"a", "b c", `d "e" $f`, "g h"}},
		{`a '' ""`, []string{"a", "", ""}},
		{`a $HOME;|&`, []string{"a", "$HOME;|&"}},
	} {
		got, err := SplitCommand(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestPrivateTmpForProgramsInTmp checks that a worker whose command uses
// a path under /tmp or /var/tmp never runs with a private /tmp that hides
// it: PrivateTmp= is turned off with a warning naming the key, or, where
// the file insists on private_tmp = true for the program itself, the
// configuration is refused.
func TestPrivateTmpForProgramsInTmp(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want bool
		warn string // the whole warning, "" for none
	}{
		{"program elsewhere", "exec = \"/usr/bin/app\"\n", true, ""},
		{"program in tmp", "exec = \"/tmp/checkout/bin/app\"\n", false,
			"/etc/p.toml:3: worker.exec: /tmp/checkout/bin/app lies under /tmp, which a private /tmp would hide: group w runs with PrivateTmp=no"},
		{"program in var tmp", "exec = \"/var/tmp/app\"\n", false,
			"/etc/p.toml:3: worker.exec: /var/tmp/app lies under /var/tmp, which a private /tmp would hide: group w runs with PrivateTmp=no"},
		{"explicitly off", "exec = \"/tmp/checkout/bin/app\"\n[worker.service]\nprivate_tmp = false\n", false, ""},
		{"working directory in tmp", "exec = \"/usr/bin/app\"\n[worker.service]\nworking_directory = \"/tmp/work\"\n", false,
			"/etc/p.toml:5: worker.service.working_directory: /tmp/work lies under /tmp, which a private /tmp would hide: group w runs with PrivateTmp=no"},
		{"script argument", "exec = \"/usr/bin/python3 /tmp/app/main.py\"\n", false,
			"/etc/p.toml:3: worker.exec: refers to /tmp/app/main.py under /tmp, which a private /tmp would hide: group w runs with PrivateTmp=no (write private_tmp = true in [worker.service] if the path is meant to be in the worker's own /tmp)"},
		{"inside sh -c", "exec = [\"/bin/sh\", \"-c\", \"cd /srv && exec /var/tmp/build/app --x\"]\n", false,
			"/etc/p.toml:3: worker.exec: refers to /var/tmp/build/app under /var/tmp, which a private /tmp would hide: group w runs with PrivateTmp=no (write private_tmp = true in [worker.service] if the path is meant to be in the worker's own /tmp)"},
		{"option value", "exec = \"/usr/bin/app --config=/tmp/app.toml\"\n", false,
			"/etc/p.toml:3: worker.exec: refers to /tmp/app.toml under /tmp, which a private /tmp would hide: group w runs with PrivateTmp=no (write private_tmp = true in [worker.service] if the path is meant to be in the worker's own /tmp)"},
		{"argument kept private on request", "exec = \"/usr/bin/app --pidfile /tmp/app.pid\"\n[worker.service]\nprivate_tmp = true\n", true, ""},
		{"tmp itself is scratch space", "exec = \"/usr/bin/app --dir /tmp\"\n", true, ""},
		{"look-alikes", "exec = \"/usr/bin/app /srv/tmp/x /tmpfoo/y ./tmp/z\"\n", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/p.toml", []byte("[[worker]]\nname = \"w\"\n"+tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Workers[0].Service.PrivateTmp; got != tc.want {
				t.Errorf("PrivateTmp = %v, want %v", got, tc.want)
			}
			var warns []string
			for _, w := range c.Warnings {
				warns = append(warns, w.Error())
			}
			if got := strings.Join(warns, "\n"); got != tc.warn {
				t.Errorf("warnings:\n got %q\nwant %q", got, tc.warn)
			}
		})
	}
}

// TestPrivateTmpProgramRefused: a program under /tmp with private_tmp =
// true written in the file could never start ("started but not found").
func TestPrivateTmpProgramRefused(t *testing.T) {
	_, err := Parse("/etc/p.toml", []byte("[[worker]]\nname = \"w\"\nexec = \"/tmp/checkout/bin/app\"\n[worker.service]\nprivate_tmp = true\n"))
	want := "/etc/p.toml:5: worker.service.private_tmp: the worker could not start: exec /tmp/checkout/bin/app lies under /tmp, which private_tmp = true hides from it; remove private_tmp or move it out of /tmp"
	if err == nil || err.Error() != want {
		t.Errorf("err:\n got %v\nwant %s", err, want)
	}
}

// TestTimeoutZero: systemd reads a zero time span as "no timeout"; the
// configuration says so, so that nothing takes it for zero seconds.
func TestTimeoutZero(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0", "infinity"}, {"0s", "infinity"}, {"00min", "infinity"}, {"0ms", "infinity"},
		{"infinity", "infinity"}, {"30s", "30s"}, {"10", "10"}, {"100ms", "100ms"},
	} {
		c, err := Parse("/etc/p.toml", []byte("[[worker]]\nname = \"w\"\nexec = \"/w\"\n[worker.service]\ntimeout_stop = \""+tc.in+"\"\ntimeout_start = \""+tc.in+"\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if s := c.Workers[0].Service; s.TimeoutStop != tc.want || s.TimeoutStart != tc.want {
			t.Errorf("timeout %q: stop %q start %q, want %q", tc.in, s.TimeoutStop, s.TimeoutStart, tc.want)
		}
	}
}

// TestListenerKeys checks the PROXY trust list and the unix socket
// ownership keys, good and bad, with each whole message: file, line (the
// listener's own, in a list written over several lines), key and what to do.
func TestListenerKeys(t *testing.T) {
	const head = "[[worker]]\nname = \"web\"\nexec = \"/w\"\nsticky = true\nlisten = [\n  \"127.0.0.1:80\",\n" // listeners from line 7
	for _, tc := range []struct {
		name     string
		listener string // line 7
		want     []Listener
		err      string // the whole error, "" when accepted
	}{
		{"addresses and prefixes", `{ address = 9000, proxy_protocol = true, proxy_from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::7", "::ffff:10.1.2.3", "::ffff:0:0/104", "10.0.0.0/8"] }`,
			[]Listener{{Name: ":9000", Network: "tcp", Address: ":9000", ProxyProtocol: true, ProxyFrom: []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::7/128"),
				netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("0.0.0.0/8"),
			}}}, ""},
		{"unix PROXY listener owned", `{ address = "/run/lb.sock", proxy_protocol = true, socket_user = "root", socket_group = "haproxy", socket_mode = "660" }`,
			[]Listener{{Name: "/run/lb.sock", Network: "unix", Address: "/run/lb.sock", ProxyProtocol: true, SocketUser: "root", SocketGroup: "haproxy", SocketMode: "0660"}}, ""},
		{"direct unix listener owned", `{ address = "/run/app.sock", socket_mode = "0600" }`,
			[]Listener{{Name: "/run/app.sock", Network: "unix", Address: "/run/app.sock", SocketMode: "0600"}}, ""},
		{"missing proxy_from (a configuration from before it existed)", `{ address = "10.0.0.1:9000", proxy_protocol = true, name = "lb" }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: required with proxy_protocol = true (listener "10.0.0.1:9000"): list the addresses of your load balancers, e.g. proxy_from = ["10.0.0.5"]; only they may then send a PROXY header`},
		{"empty", `{ address = 9000, proxy_protocol = true, proxy_from = [] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: is empty: list the addresses of your load balancers, e.g. proxy_from = ["10.0.0.5"]`},
		{"not a list", `{ address = 9000, proxy_protocol = true, proxy_from = "10.0.0.5" }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: must be an array of addresses or CIDR prefixes, e.g. ["10.0.0.5", "192.0.2.0/24"], not a string`},
		{"not strings", `{ address = 9000, proxy_protocol = true, proxy_from = [10] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: entries must be strings, not an integer`},
		{"host name", `{ address = 9000, proxy_protocol = true, proxy_from = ["lb.example.com"] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: "lb.example.com" is not an IP address or a CIDR prefix such as "10.0.0.0/8" (no host names or zones)`},
		{"zone", `{ address = 9000, proxy_protocol = true, proxy_from = ["fe80::1%eth0"] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: "fe80::1%eth0" is not an IP address or a CIDR prefix such as "10.0.0.0/8" (no host names or zones)`},
		{"bad prefix", `{ address = 9000, proxy_protocol = true, proxy_from = ["10.0.0.0/33"] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: "10.0.0.0/33" is not an address or a CIDR prefix such as "10.0.0.0/8"`},
		{"host bits", `{ address = 9000, proxy_protocol = true, proxy_from = ["10.0.0.5/8"] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: "10.0.0.5/8" has bits set after the prefix: write 10.0.0.0/8 for the network, or 10.0.0.5 alone for the address`},
		{"everyone", `{ address = 9000, proxy_protocol = true, proxy_from = ["::/0"] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: "::/0" trusts every address, which is what proxy_from exists to prevent: list your load balancers`},
		{"without proxy_protocol", `{ address = 9000, proxy_from = ["10.0.0.5"] }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: only means something with proxy_protocol = true: add it, or remove proxy_from`},
		{"on a unix listener", `{ address = "/run/lb.sock", proxy_protocol = true, proxy_from = ["10.0.0.5"], socket_mode = "0660" }`, nil,
			`/etc/web.toml:7: worker.listen.proxy_from: a unix socket has no peer address to check: say who may connect with socket_user, socket_group and socket_mode instead`},
		{"unix PROXY listener open to all", `{ address = "/run/lb.sock", proxy_protocol = true }`, nil,
			`/etc/web.toml:7: worker.listen.socket_mode: required with proxy_protocol = true (unix socket "/run/lb.sock", which anyone may connect to by default and send a PROXY header): say who may, e.g. socket_group = "haproxy", socket_mode = "0660"`},
		{"socket mode on TCP", `{ address = 9000, socket_mode = "0660" }`, nil,
			`/etc/web.toml:7: worker.listen.socket_mode: only applies to a unix socket listener: a TCP listener has no socket file`},
		{"bad socket mode", `{ address = "/run/a.sock", socket_mode = "4777" }`, nil,
			`/etc/web.toml:7: worker.listen.socket_mode: "4777" is not an octal file mode such as "0660"`},
		{"bad socket user", `{ address = "/run/a.sock", socket_user = "Root" }`, nil,
			`/etc/web.toml:7: worker.listen.socket_user: "Root" is not a user name or number`},
		{"unix listeners of one unit disagree", `"/run/a.sock", { address = "/run/b.sock", socket_mode = "0600" }`, nil,
			`/etc/web.toml:5: worker.listen: unix listeners /run/a.sock and /run/b.sock (both without proxy_protocol) share a socket unit and must have the same socket_user, socket_group and socket_mode`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := head + "  " + tc.listener + ",\n]\n"
			c, err := Parse("/etc/web.toml", []byte(src))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Errorf("error:\n got %v\nwant %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Workers[0].Listen[1:]; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("listeners:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestListenerTables: listeners written as [[worker.listen]] tables are
// read like inline ones, and a problem is reported on the table's line.
func TestListenerTables(t *testing.T) {
	src := `[[worker]]
name = "a"
exec = "/w"
listen = [80]

[[worker]]
name = "web"
exec = "/w"
sticky = true

[[worker.listen]]
address = "127.0.0.1:9999"

[[worker.listen]]
address = "127.0.0.1:9997"
proxy_protocol = true
`
	_, err := Parse("/etc/web.toml", []byte(src))
	want := `/etc/web.toml:14: worker.listen.proxy_from: required with proxy_protocol = true (listener "127.0.0.1:9997"): list the addresses of your load balancers, e.g. proxy_from = ["10.0.0.5"]; only they may then send a PROXY header`
	if err == nil || err.Error() != want {
		t.Fatalf("error:\n got %v\nwant %s", err, want)
	}
	c, err := Parse("/etc/web.toml", []byte(src+"proxy_from = [\"127.0.0.1\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Workers[1].Listen; len(l) != 2 || !l[1].ProxyProtocol || l[1].ProxyFrom[0] != netip.MustParsePrefix("127.0.0.1/32") {
		t.Errorf("listeners: %+v", l)
	}
}

// TestJITRuntimes: a worker run by a runtime that compiles as it runs
// (Node, the JVM, ...) dies under MemoryDenyWriteExecute=, and Node's
// os.cpus() sees no CPU under ProcSubset=pid; unless the configuration
// chose, such a group gets both relaxed, with a warning saying so.
func TestJITRuntimes(t *testing.T) {
	const warnNode = "/etc/p.toml:3: worker.exec: runs node, a runtime that writes machine code as it runs (a JIT), which MemoryDenyWriteExecute= kills: group w runs with MemoryDenyWriteExecute=no and ProcSubset=all (os.cpus() reads /proc/cpuinfo) (write memory_deny_write_execute = true in [worker.service] to keep it)"
	for _, tc := range []struct {
		name     string
		src      string
		wantMDWE bool
		wantProc string
		warn     string // the whole warning, "" for none
	}{
		{"compiled program", "exec = \"/usr/bin/app\"\n", true, "pid", ""},
		{"node", "exec = \"/usr/bin/node /srv/app/server.js\"\n", false, "all", warnNode},
		{"versioned node in sh -c", "exec = [\"/bin/sh\", \"-c\", \"cd /srv && exec node20 server.js\"]\n", false, "all",
			"/etc/p.toml:3: worker.exec: runs node20, a runtime that writes machine code as it runs (a JIT), which MemoryDenyWriteExecute= kills: group w runs with MemoryDenyWriteExecute=no and ProcSubset=all (os.cpus() reads /proc/cpuinfo) (write memory_deny_write_execute = true in [worker.service] to keep it)"},
		{"java keeps ProcSubset", "exec = \"/usr/bin/java -jar /srv/app.jar\"\n", false, "pid",
			"/etc/p.toml:3: worker.exec: runs java, a runtime that writes machine code as it runs (a JIT), which MemoryDenyWriteExecute= kills: group w runs with MemoryDenyWriteExecute=no (write memory_deny_write_execute = true in [worker.service] to keep it)"},
		{"kept on request", "exec = \"/usr/bin/node --jitless app.js\"\n[worker.service]\nmemory_deny_write_execute = true\n", true, "pid", ""},
		{"proc_subset chosen", "exec = \"/usr/bin/node app.js\"\n[worker.service]\nproc_subset = \"pid\"\n", false, "pid",
			"/etc/p.toml:3: worker.exec: runs node, a runtime that writes machine code as it runs (a JIT), which MemoryDenyWriteExecute= kills: group w runs with MemoryDenyWriteExecute=no (write memory_deny_write_execute = true in [worker.service] to keep it)"},
		{"look-alikes", "exec = \"/usr/bin/app --mode node-compat /srv/nodejs-data\"\n", true, "pid", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/p.toml", []byte("[[worker]]\nname = \"w\"\n"+tc.src))
			if err != nil {
				t.Fatal(err)
			}
			s := c.Workers[0].Service
			if s.MemoryDenyWriteExecute != tc.wantMDWE || s.ProcSubset != tc.wantProc {
				t.Errorf("MemoryDenyWriteExecute = %v, ProcSubset = %q; want %v, %q", s.MemoryDenyWriteExecute, s.ProcSubset, tc.wantMDWE, tc.wantProc)
			}
			var warns []string
			for _, w := range c.Warnings {
				warns = append(warns, w.Error())
			}
			if got := strings.Join(warns, "\n"); got != tc.warn {
				t.Errorf("warnings:\n got %q\nwant %q", got, tc.warn)
			}
		})
	}
}

// TestWorkerError: a problem found outside the parser is placed on the
// line of the group's key, of the right [[worker]] table, like the
// parser's own.
func TestWorkerError(t *testing.T) {
	const doc = `[[worker]]
name = "a"
exec = "/bin/a"
[worker.service]
user = "web"

[[worker]]
name = "b"
exec = "/bin/b"
[worker.service]
user = "web"
group = "web"
`
	c, err := Parse("/etc/h.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		i    int
		key  string
		want string
	}{
		{name: "first group's key", i: 0, key: "service.user", want: "/etc/h.toml:5: worker.service.user: x"},
		{name: "second group's key", i: 1, key: "service.group", want: "/etc/h.toml:12: worker.service.group: x"},
		{name: "key not written: its table", i: 0, key: "service.group", want: "/etc/h.toml:4: worker.service.group: x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.WorkerError(tc.i, tc.key, "%s", "x").Error(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	if got := (&Config{File: "f"}).WorkerError(0, "service.user", "x").Error(); got != "f: worker.service.user: x" {
		t.Errorf("not made by Parse: %q", got)
	}
}

// TestHealth: the health key takes an address as listen does, normalised
// the same way, and is nil when not written.
func TestHealth(t *testing.T) {
	const w = "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\n"
	for _, tc := range []struct {
		name, src string
		want      *Listener
	}{
		{"none", w, nil},
		{"port", "health = 9990\n" + w, &Listener{Network: "tcp", Address: ":9990"}},
		{"ipv4", "health = \"127.0.0.1:9990\"\n" + w, &Listener{Network: "tcp", Address: "127.0.0.1:9990"}},
		{"ipv6", "health = \"[::1]:9990\"\n" + w, &Listener{Network: "tcp", Address: "[::1]:9990"}},
		{"unix", "health = \"/run/ph-health.sock\"\n" + w, &Listener{Network: "unix", Address: "/run/ph-health.sock"}},
		{"beside a group on another port", "health = \"127.0.0.1:9990\"\n" + w + "listen = [\"127.0.0.1:9991\"]\n", &Listener{Network: "tcp", Address: "127.0.0.1:9990"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/ph.toml", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Health, tc.want) {
				t.Errorf("Health = %+v, want %+v", c.Health, tc.want)
			}
		})
	}
}
