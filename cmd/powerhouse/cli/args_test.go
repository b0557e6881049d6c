package cli

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// flagValue returns a value fs's flag f accepts (its type is not known
// here: the first candidate that Set takes), or "" for a bool flag.
func flagValue(t *testing.T, c *verb, f *flag.Flag) string {
	t.Helper()
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
		return ""
	}
	for _, v := range []string{"7", "3s", "/some/where"} {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.flags(fs)
		if fs.Set(f.Name, v) == nil {
			return v
		}
	}
	t.Fatalf("no value found for --%s", f.Name)
	return ""
}

// TestEveryVerbFlagsAnywhere walks every verb and every one of its flags:
// a flag is taken before, between and after positional arguments, as
// --name VALUE, --name=VALUE and -name VALUE; a bool flag does not eat
// the next word; "--" ends the flags; an unknown flag is an error that
// names it, wherever it stands.
func TestEveryVerbFlagsAnywhere(t *testing.T) {
	for _, c := range verbs {
		name := c.name
		probe := flag.NewFlagSet(name, flag.ContinueOnError)
		c.flags(probe)
		t.Run(name, func(t *testing.T) {
			parse := func(args ...string) (*flag.FlagSet, []string, error) {
				fs := flag.NewFlagSet(name, flag.ContinueOnError)
				fs.SetOutput(io.Discard)
				c.flags(fs)
				pos, err := parseArgs(fs, args, strings.Contains(c.args, "-- COMMAND"))
				return fs, pos, err
			}
			probe.VisitAll(func(f *flag.Flag) {
				v := flagValue(t, c, f)
				want := v
				var forms [][]string
				if v == "" { // bool
					want = "true"
					forms = [][]string{{"--" + f.Name}, {"-" + f.Name}, {"--" + f.Name + "=true"}}
				} else {
					forms = [][]string{{"--" + f.Name, v}, {"-" + f.Name, v}, {"--" + f.Name + "=" + v}, {"-" + f.Name + "=" + v}}
				}
				for _, form := range forms {
					for _, args := range [][]string{
						append(append([]string{}, form...), "P1", "P2"),
						append(append([]string{"P1"}, form...), "P2"),
						append([]string{"P1", "P2"}, form...),
					} {
						fs, pos, err := parse(args...)
						if err != nil {
							t.Errorf("%q: %v", args, err)
							continue
						}
						if got := fs.Lookup(f.Name).Value.String(); got != want && !(want == "3s" && got == "3s") {
							t.Errorf("%q: --%s = %q, want %q", args, f.Name, got, want)
						}
						if !reflect.DeepEqual(pos, []string{"P1", "P2"}) {
							t.Errorf("%q: positional %q, want [P1 P2]", args, pos)
						}
					}
				}
				// After "--", a flag is an argument like any other.
				fs, pos, err := parse("P1", "--", "--"+f.Name, "-x")
				if err != nil || !reflect.DeepEqual(pos, []string{"P1", "--" + f.Name, "-x"}) || fs.Lookup(f.Name).Value.String() != f.DefValue {
					t.Errorf(`"P1 -- --%s -x": positional %q, err %v`, f.Name, pos, err)
				}
				if v != "" {
					// A value flag at the end, without its value.
					if _, _, err := parse("P1", "--"+f.Name); err == nil || !strings.Contains(err.Error(), "--"+f.Name) {
						t.Errorf("--%s without a value: err %v", f.Name, err)
					}
				}
			})
			for _, args := range [][]string{{"--nope"}, {"P1", "--nope"}, {"P1", "--nope=1", "P2"}, {"-nope", "P1"}} {
				if _, _, err := parse(args...); err == nil || !strings.Contains(err.Error(), "not defined: -") || !strings.Contains(err.Error(), "nope") {
					t.Errorf("%q: err %v, want an error naming the unknown flag", args, err)
				}
			}
			for _, args := range [][]string{{"P1", "--help"}, {"-h", "P1"}} {
				if _, _, err := parse(args...); err != flag.ErrHelp {
					t.Errorf("%q: err %v, want flag.ErrHelp", args, err)
				}
			}
			// Words that merely contain a dash are positional.
			if _, pos, err := parse("key=-", "key=--x", "-", "-1"); err != nil || !reflect.DeepEqual(pos, []string{"key=-", "key=--x", "-", "-1"}) {
				t.Errorf("positional %q, err %v", pos, err)
			}
		})
	}
}

// TestFlagsAfterArguments runs verbs with their flags after their
// positional arguments, end to end.
func TestFlagsAfterArguments(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	units := filepath.Join(dir, "units")
	if code, _, stderr := run(t, "generate", cfg, "-o", units, "--binary=/usr/bin/powerhouse"); code != 0 {
		t.Fatalf("generate CONFIG -o DIR: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(units, "powerhouse.target")); err != nil {
		t.Errorf("generate CONFIG -o DIR wrote no units: %v", err)
	}
	root := filepath.Join(dir, "root")
	if code, _, stderr := run(t, "install", cfg, "--root", root, "--binary", "/usr/bin/powerhouse"); code != 0 {
		t.Fatalf("install CONFIG --root DIR: exit %d: %s", code, stderr)
	}
	// The group is looked up in the --config given after it (no systemd
	// needed to get that far: the group does not exist).
	for _, args := range [][]string{
		{"status", "nosuch", "--json", "--config", cfg},
		{"set", "nosuch", "key=--x", "other=-x", "--config=" + cfg},
		{"scale", "nosuch", "3", "--config", cfg},
		{"reload", "nosuch", "--config", cfg},
	} {
		code, _, stderr := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, cfg) || !strings.Contains(stderr, `no group "nosuch"`) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and no group \"nosuch\"", args, code, stderr)
		}
	}
	out := filepath.Join(dir, "env")
	if code, _, stderr := run(t, "prepare", "--output", out, "--", "/bin/echo", "A=1", "--output", "-n"); code != 0 {
		t.Fatalf("prepare: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(out); string(b) != "A=\"1 --output -n\"\n" {
		t.Errorf("prepare wrote %q", b)
	}
	code, _, stderr := run(t, "prepare", "--output", out, "/bin/echo", "-n", "A=1")
	if code != ExitUsage || !strings.Contains(stderr, "not defined: -n") || !strings.Contains(stderr, `go after "--"`) {
		t.Errorf("prepare without --: exit %d, stderr %q", code, stderr)
	}
}

// TestVerbTable: the table names each verb once, and every verb has its
// one line, its flags and a run function.
func TestVerbTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range verbs {
		if c.name == "" || seen[c.name] {
			t.Errorf("verb %q: empty or listed twice", c.name)
		}
		seen[c.name] = true
		if c.short == "" || c.flags == nil {
			t.Errorf("verb %s: no one-line description or no flags function", c.name)
			continue
		}
		if c.flags(flag.NewFlagSet(c.name, flag.ContinueOnError)) == nil {
			t.Errorf("verb %s: no run function", c.name)
		}
		if lookup(c.name) != c {
			t.Errorf("lookup(%q) is not the table's verb", c.name)
		}
	}
	if lookup("nosuch") != nil {
		t.Error("lookup found a verb that is not in the table")
	}
}

// TestSplitVerb: flags may come before the verb (`powerhouse --user
// status`, as systemctl is written); a flag that takes a value in every
// verb takes the next word with it; the verb's own flags are handed to
// it in front of its arguments.
func TestSplitVerb(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantVerb string
		wantRest []string
		wantErr  string
	}{
		{name: "verb first", args: []string{"status", "web", "--json"}, wantVerb: "status", wantRest: []string{"web", "--json"}},
		{name: "bool flag first", args: []string{"--user", "status"}, wantVerb: "status", wantRest: []string{"--user"}},
		{name: "value flag first", args: []string{"--config", "/f.toml", "reload", "web"}, wantVerb: "reload", wantRest: []string{"--config", "/f.toml", "web"}},
		{name: "value flag with =", args: []string{"--config=/f.toml", "--user", "scale", "web", "3"}, wantVerb: "scale", wantRest: []string{"--config=/f.toml", "--user", "web", "3"}},
		{name: "single dash", args: []string{"-user", "-config", "f", "set", "web", "k=-"}, wantVerb: "set", wantRest: []string{"-user", "-config", "f", "web", "k=-"}},
		{name: "-- after the verb kept", args: []string{"--user", "run", "--", "cmd", "-x"}, wantVerb: "run", wantRest: []string{"--user", "--", "cmd", "-x"}},
		{name: "unknown flag taken as bool", args: []string{"--nope", "status"}, wantVerb: "status", wantRest: []string{"--nope"}},
		{name: "negative number is the verb", args: []string{"-1"}, wantVerb: "-1", wantRest: []string{}},
		{name: "no verb", args: []string{"--user", "--config", "f"}, wantErr: "no VERB after the flags"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, rest, err := splitVerb(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || v != tc.wantVerb || !reflect.DeepEqual(rest, tc.wantRest) && !(len(rest) == 0 && len(tc.wantRest) == 0) {
				t.Errorf("verb %q rest %q err %v; want %q %q", v, rest, err, tc.wantVerb, tc.wantRest)
			}
		})
	}
}

// TestFlagsBeforeVerb runs verbs with flags before the verb, end to end:
// the same as after it.
func TestFlagsBeforeVerb(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--config", cfg, "status", "nosuch", "--json"},
		{"--config=" + cfg, "reload", "nosuch"},
		{"--user", "--config", cfg, "scale", "nosuch", "2"},
		{"--config", cfg, "set", "nosuch", "k=1"},
	} {
		code, _, stderr := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, `no group "nosuch"`) || !strings.Contains(stderr, cfg) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and no group \"nosuch\"", args, code, stderr)
		}
	}
	code, stdout, _ := run(t, "--user", "version")
	if code != ExitUsage {
		t.Errorf("--user version: exit %d, stdout %q; want 2 (version has no --user)", code, stdout)
	}
}
