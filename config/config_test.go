package config

import (
	"errors"
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
listen = ["0.0.0.0:9999", "[::]:9999", { address = 9000, proxy_protocol = true, name = "lb" }, "/run/app.sock"]
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
			Amount: 4, Reloadable: true, Type: Cluster, Sticky: true, NotifyReady: true, Service: defaultService(),
			Listen: []Listener{
				{Name: "0.0.0.0:9999", Network: "tcp", Address: "0.0.0.0:9999"},
				{Name: "[::]:9999", Network: "tcp", Address: "[::]:9999"},
				{Name: "lb", Network: "tcp", Address: ":9000", ProxyProtocol: true},
				{Name: "/run/app.sock", Network: "unix", Address: "/run/app.sock"},
			},
			Config: map[string]any{"port": int64(9999), "nested": map[string]any{"a": []any{int64(1), int64(2)}}},
		}, {
			Name: "mail", Title: "MyApp", Exec: []string{"/bin/mail-loop", "--every", "5s"},
			Amount: 3, Reloadable: false, Type: Child, Service: defaultService(), Config: map[string]any{},
		}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", c, want)
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
		{"service w^x not bool", w + "[worker.service]\nmemory_deny_write_execute = \"no\"\n", 5, "worker.service.memory_deny_write_execute", "true or false"},
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

func TestPrivateTmpForProgramsInTmp(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want bool
	}{
		{"exec = \"/usr/bin/app\"\n", true},
		{"exec = \"/tmp/checkout/bin/app\"\n", false},
		{"exec = \"/var/tmp/app\"\n", false},
		{"exec = \"/tmp/checkout/bin/app\"\n[worker.service]\nprivate_tmp = true\n", true},
		{"exec = \"/usr/bin/app\"\n[worker.service]\nworking_directory = \"/tmp/work\"\n", false},
	} {
		c, err := Parse("/etc/p.toml", []byte("[[worker]]\nname = \"w\"\n"+tc.src))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Workers[0].Service.PrivateTmp; got != tc.want {
			t.Errorf("%q: PrivateTmp = %v, want %v", tc.src, got, tc.want)
		}
	}
}
