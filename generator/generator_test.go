package generator

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/powerhouse/powerhouse/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in ../testdata/golden")

var testOpts = Options{Binary: "/usr/bin/powerhouse", ConfigPath: "/etc/powerhouse/powerhouse.toml"}

// TestGolden generates the units of every testdata/config/*.good.toml and
// compares them with testdata/golden/<name>/.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("../testdata/config/*.good.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configurations: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".good.toml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// A fixed path keeps relative exec paths and the output stable.
			c, err := config.Parse(testOpts.ConfigPath, data)
			if err != nil {
				t.Fatal(err)
			}
			us, err := Generate(c, testOpts)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join("../testdata/golden", name)
			if *update {
				os.RemoveAll(dir)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got := map[string]bool{}
			for _, u := range us {
				got[u.Name] = true
				p := filepath.Join(dir, u.Name)
				if *update {
					if err := os.WriteFile(p, u.Render(testOpts), 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(p)
				if err != nil {
					t.Fatalf("%v (run go test ./generator -update)", err)
				}
				if out := u.Render(testOpts); !bytes.Equal(out, want) {
					t.Errorf("%s differs from %s (run with -update and review git diff):\n%s", u.Name, p, out)
				}
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
		c, err := config.Parse(testOpts.ConfigPath, data)
		if err != nil {
			t.Fatal(err)
		}
		us, err := Generate(c, testOpts)
		if err != nil {
			t.Fatal(err)
		}
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
listen = [80]
[[worker]]
name = "api"
exec = "/w"
listen = [81]
[[worker]]
name = "mail"
type = "child"
exec = "/w"
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
		"powerhouse@web.socket powerhouse-web@.service powerhouse-web@.socket " +
		"powerhouse@api.socket powerhouse-api@.service powerhouse-mail@.service"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("units:\n got %s\nwant %s", got, want)
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
	f.Fuzz(func(t *testing.T, data []byte) {
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
