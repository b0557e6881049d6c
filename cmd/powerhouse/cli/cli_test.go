package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/config"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Run(context.Background(), append([]string{"powerhouse"}, args...), &o, &e)
	return code, o.String(), e.String()
}

// TestEveryVerbHasHelp walks the registry: each verb answers --help with
// its usage on stdout and exit status 0.
func TestEveryVerbHasHelp(t *testing.T) {
	if len(verbs) < 3 {
		t.Fatalf("only %d verbs in the table", len(verbs))
	}
	for _, c := range verbs {
		name := c.name
		t.Run(name, func(t *testing.T) {
			if c.short == "" {
				t.Error("no one-line description")
			}
			for _, h := range []string{"--help", "-h"} {
				code, out, errOut := run(t, name, h)
				if code != 0 || !strings.HasPrefix(out, "usage: powerhouse "+name) || errOut != "" {
					t.Errorf("%s %s: exit %d, stdout %q, stderr %q", name, h, code, out, errOut)
				}
			}
			code, out, _ := run(t, "help", name)
			if code != 0 || !strings.Contains(out, "usage: powerhouse "+name) {
				t.Errorf("help %s: exit %d, %q", name, code, out)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no verb", nil, "usage: powerhouse VERB"},
		{"unknown verb", []string{"frobnicate"}, `unknown verb "frobnicate"`},
		{"unknown flag", []string{"generate", "--nope"}, "flag provided but not defined: --nope"},
		{"unknown flag after an argument", []string{"generate", "x.toml", "--nope"}, "flag provided but not defined: --nope"},
		{"flags and no verb", []string{"--config", "x.toml"}, "--config x.toml: no VERB after the flags"},
		{"flag before the verb that the verb lacks", []string{"--json", "start"}, "flag provided but not defined: --json"},
		{"flag value missing", []string{"install", "--root", "--now"}, "flag --root needs a value, not the flag --now"},
		{"bool value", []string{"status", "--json=maybe"}, `invalid value "maybe" for flag --json: want true or false`},
		{"duration value", []string{"scale", "w", "2", "--timeout", "soon"}, `invalid value "soon" for flag --timeout: want a duration such as 30s or 2m`},
		{"number value", []string{"events", "-n=x"}, `invalid value "x" for flag -n: want a whole number`},
		{"install, relative binary", []string{"install", "--root", "/nonexistent", "--binary", "bin/powerhouse", "x.toml"}, `--binary "bin/powerhouse" is not a clean absolute path`},
		{"two configs", []string{"generate", "a", "b"}, "at most one CONFIG"},
		{"version args", []string{"version", "x"}, "takes no arguments"},
		{"bad proxy-from", []string{"run", "--proxy", "127.0.0.1:0", "--proxy-from", "10.0.0.0/8,nope", "--", "true"}, `--proxy-from "nope": not a CIDR prefix or an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := run(t, tc.args...)
			if code != ExitUsage || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d stderr %q; want 2 and %q", code, errOut, tc.want)
			}
		})
	}
}

func TestGenerateBadConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.toml")
	src := "title = \"a\\nb\"\ncolour = 1\n[[worker]]\nname = \"w\"\nexec = \"/w\"\namount = -1\nlisten = [\"nowhere:x\"]\n[[worker]]\nname = \"w\"\nexec = \"/w\"\n"
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "units")
	for _, args := range [][]string{{"generate", p}, {"generate", "-o", out, p}, {"verify", p}} {
		code, stdout, stderr := run(t, args...)
		if code != ExitUsage || stdout != "" {
			t.Errorf("%v: exit %d stdout %q", args, code, stdout)
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		wantLines := []string{p + ":1: title:", p + ":2: colour:", p + ":6: worker.amount:", p + ":7: worker.listen:", p + ":9: worker.name:"}
		if len(lines) != len(wantLines) {
			t.Fatalf("%v: stderr:\n%s", args, stderr)
		}
		for i, w := range wantLines {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("%v: line %d = %q, want prefix %q", args, i, lines[i], w)
			}
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("generate -o wrote %s for a bad configuration", out)
	}
}

func TestGenerateStdoutMatchesFiles(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := run(t, "generate", "--binary", "/usr/bin/powerhouse", "../../../testdata/demo.toml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if code, _, stderr := run(t, "generate", "--binary", "/usr/bin/powerhouse", "-o", dir, "../../../testdata/demo.toml"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	parts := strings.Split(stdout, "### ")[1:]
	entries, _ := os.ReadDir(dir)
	if len(parts) != len(entries) || len(parts) == 0 {
		t.Fatalf("%d units printed, %d files written", len(parts), len(entries))
	}
	for _, p := range parts {
		name, body, _ := strings.Cut(p, "\n")
		file, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(file) != body {
			t.Errorf("%s: printed and written units differ (%v)", name, err)
		}
	}
	// Writing the same units again leaves the files untouched.
	st, _ := os.Stat(filepath.Join(dir, "powerhouse.target"))
	run(t, "generate", "--binary", "/usr/bin/powerhouse", "-o", dir, "../../../testdata/demo.toml")
	st2, _ := os.Stat(filepath.Join(dir, "powerhouse.target"))
	if !st.ModTime().Equal(st2.ModTime()) {
		t.Error("an unchanged unit was rewritten")
	}
}

// TestProxyFromMigration: a configuration written before proxy_from
// existed is refused by every verb that generates units, with the line to
// fix and what to add, and nothing is written.
func TestProxyFromMigration(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "web.toml")
	src := "[[worker]]\nname = \"web\"\nexec = \"/w\"\nsticky = true\nlisten = [\n  \"127.0.0.1:9999\",\n  { address = \"10.0.0.1:9000\", proxy_protocol = true, name = \"lb\" },\n]\n"
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	want := p + `:7: worker.listen.proxy_from: required with proxy_protocol = true (listener "10.0.0.1:9000"): list the addresses of your load balancers, e.g. proxy_from = ["10.0.0.5"]; only they may then send a PROXY header` + "\n"
	root := filepath.Join(dir, "root")
	for _, args := range [][]string{{"generate", p}, {"generate", "-o", filepath.Join(dir, "units"), p}, {"verify", p}, {"install", "--root", root, "--binary", "/usr/bin/powerhouse", p}} {
		code, stdout, stderr := run(t, args...)
		if code != ExitUsage || stdout != "" || stderr != want {
			t.Errorf("%v: exit %d stdout %q stderr:\n%s\nwant exit 2 and:\n%s", args, code, stdout, stderr, want)
		}
	}
	for _, d := range []string{"units", "root"} {
		if _, err := os.Stat(filepath.Join(dir, d)); !os.IsNotExist(err) {
			t.Errorf("%s was written for a refused configuration", d)
		}
	}
}

// TestGenerateWarnings: what generation works around is printed on
// standard error, the units alone on standard output.
func TestGenerateWarnings(t *testing.T) {
	p := filepath.Join(t.TempDir(), "w.toml")
	if err := os.WriteFile(p, []byte("[[worker]]\nname = \"w\"\nexec = [\"/bin/sh\", \"-c\", \"exec /tmp/build/app\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "generate", "--binary", "/usr/bin/powerhouse", p)
	want := "warning: " + p + ":3: worker.exec: refers to /tmp/build/app under /tmp, which a private /tmp would hide: group w runs with PrivateTmp=no (write private_tmp = true in [worker.service] if the path is meant to be in the worker's own /tmp)\n"
	if code != 0 || !strings.HasPrefix(stderr, want) {
		t.Errorf("exit %d stderr:\n%s\nwant 0 and first:\n%s", code, stderr, want)
	}
	if !strings.Contains(stdout, "\nPrivateTmp=no\n") || strings.Contains(stdout, "warning") {
		t.Errorf("units:\n%s", stdout)
	}
}

// TestGenerateSaysRoot: a group that runs as root because its
// configuration asks for it is named on standard error; the default
// (the user powerhouse) is not worth a word.
func TestGenerateSaysRoot(t *testing.T) {
	for _, tc := range []struct{ name, service, want string }{
		{"root", "[worker.service]\nuser = \"root\"\n", "generate: group web runs as root because the configuration asks for it"},
		{"default user", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "p.toml")
			os.WriteFile(p, []byte("[[worker]]\nname = \"web\"\nexec = \"/bin/w\"\n"+tc.service), 0o644)
			code, stdout, stderr := run(t, "generate", "--binary", "/usr/bin/powerhouse", p)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if tc.want == "" && strings.Contains(stderr, "root") || !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q, want %q", stderr, tc.want)
			}
			if strings.Contains(stdout, "runs as root") {
				t.Error("the note is mixed into the units on standard output")
			}
		})
	}
}

// TestEventsNegativeLines: events -n takes 0 (all) or more; a negative
// count was taken as "all" without a word.
func TestEventsNegativeLines(t *testing.T) {
	code, _, stderr := run(t, "events", "-n", "-5")
	if code != ExitUsage || !strings.Contains(stderr, "-n must be 0 (all) or more") {
		t.Errorf("events -n -5: exit %d, stderr %q", code, stderr)
	}
}

// TestReloadNothingReloadable: reload without GROUP where no group is
// reloadable says so, instead of returning without a word.
func TestReloadNothingReloadable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(p, []byte("[[worker]]\nname = \"w\"\nexec = \"/bin/true\"\nreloadable = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "reload", "--config", p)
	if code != 0 || !strings.Contains(stderr, "reload: no group is reloadable") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestNoConfigGiven: generate, verify and install without CONFIG, where
// no house is installed, say that CONFIG is missing, not only "no such
// file or directory".
func TestNoConfigGiven(t *testing.T) {
	if _, err := os.Stat(config.DefaultPath); err == nil {
		t.Skipf("%s exists on this machine", config.DefaultPath)
	}
	for _, args := range [][]string{{"generate"}, {"verify"}, {"install", "--root", t.TempDir()}} {
		code, _, stderr := run(t, args...)
		if code != ExitFailure || !strings.Contains(stderr, "no CONFIG given, and no house is installed there (name the configuration file as CONFIG)") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// TestHelpFlagsDoSomething: start and stop act on powerhouse.target and
// read no configuration, so they list no --config (it was listed, taken
// and ignored); every flag a verb's help lists is one it defines.
func TestHelpFlagsDoSomething(t *testing.T) {
	for _, verb := range []string{"start", "stop"} {
		_, out, _ := run(t, verb, "--help")
		if strings.Contains(out, "-config") {
			t.Errorf("%s --help lists --config, which it ignores:\n%s", verb, out)
		}
		if code, _, stderr := run(t, verb, "--config", "/x.toml"); code != ExitUsage || !strings.Contains(stderr, "not defined: --config") {
			t.Errorf("%s --config: exit %d, stderr %q", verb, code, stderr)
		}
	}
}

// TestSuperviseByHand: supervise run from a shell, not by systemd, says
// how to start the group instead of starting its instances outside its
// unit.
func TestSuperviseByHand(t *testing.T) {
	t.Setenv("INVOCATION_ID", "")
	p := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(p, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "supervise", "--config", p, "w")
	if code != ExitUsage || !strings.Contains(stderr, "runs as powerhouse@w.service, started by systemd: use `systemctl start powerhouse@w.service` or `powerhouse start`") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = run(t, "supervise", "--user", "--config", p, "w")
	if code != ExitUsage || !strings.Contains(stderr, "use `systemctl --user start powerhouse@w.service` or `powerhouse --user start`") {
		t.Errorf("--user: exit %d, stderr %q", code, stderr)
	}
}
