package config

import (
	"strings"
	"testing"
)

const editSrc = `# house
title = "x"

[[worker]]
name = "web"   # the web
exec = "/w"
amount = 2     # two
[worker.config]
greeting = "hello"   # said first
list = [
  1, 2,
]

[[worker]]
name = "api"
exec = "/a"

[prepare]
exec = "/p"
`

func TestSetGroupConfig(t *testing.T) {
	for _, tc := range []struct {
		name, group, key, arg string
		wantLine              string
		wantErr               string
	}{
		{"replace string", "web", "greeting", `"hi"`, `greeting = "hi"`, ""},
		{"bare word", "web", "greeting", `hi`, `greeting = "hi"`, ""},
		{"new key number", "web", "port", `8080`, `port = 8080`, ""},
		{"float", "web", "ratio", `0.5`, `ratio = 0.5`, ""},
		{"object", "web", "limits", `{"a":1,"b":[true,"x"]}`, `limits = { a = 1, b = [true, "x"] }`, ""},
		{"new table", "api", "mode", `"fast"`, "[worker.config]\nmode = \"fast\"\n\n[prepare]", ""},
		{"quoted key", "web", "a b", `1`, `"a b" = 1`, ""},
		{"multi-line value", "web", "list", `[3]`, "", "several lines"},
		{"null", "web", "greeting", `null`, "", "null"},
		{"broken json", "web", "greeting", `{"a":`, "", "must be JSON"},
		{"unknown group", "nope", "k", `1`, "", "no group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ParseValue(tc.arg)
			if err == nil {
				var out []byte
				out, err = SetGroupConfig("/c.toml", []byte(editSrc), tc.group, map[string]any{tc.key: v})
				if err == nil {
					if tc.wantErr != "" {
						t.Fatalf("no error, want %q", tc.wantErr)
					}
					if !strings.Contains(string(out), tc.wantLine) {
						t.Errorf("result lacks %q:\n%s", tc.wantLine, out)
					}
					if !strings.Contains(string(out), "# house") || !strings.Contains(string(out), "# the web") {
						t.Errorf("comments lost:\n%s", out)
					}
					return
				}
			}
			if tc.wantErr == "" || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestSetAmount(t *testing.T) {
	out, err := SetAmount("/c.toml", []byte(editSrc), "web", 6)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "amount = 6") || strings.Count(string(out), "\n") != strings.Count(editSrc, "\n") {
		t.Errorf("result:\n%s", out)
	}
	out, err = SetAmount("/c.toml", []byte(editSrc), "api", 3)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("/c.toml", out)
	if err != nil || c.Worker("api").Amount != 3 || c.Worker("web").Amount != 2 {
		t.Errorf("after edit: %v %+v", err, c)
	}
}

func TestAbsoluteExec(t *testing.T) {
	src := "[prepare]\nexec = \"./prep 1\"\n[[worker]]\nname = \"w\"\nexec = \"../bin/hello --x 'a b'\"  # the app\n[[worker]]\nname = \"v\"\nexec = \"/abs/v\"\n"
	out, err := AbsoluteExec("/srv/app/conf/house.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("/etc/powerhouse/powerhouse.toml", out)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Workers[0].Exec, "|"); got != "/srv/app/bin/hello|--x|a b" {
		t.Errorf("worker exec = %q", got)
	}
	if got := c.Prepare.Exec[0]; got != "/srv/app/conf/prep" {
		t.Errorf("prepare exec = %q", got)
	}
	if !strings.Contains(string(out), `exec = "/abs/v"`) {
		t.Errorf("absolute exec was rewritten:\n%s", out)
	}
}

// TestParseValueKeepsSecrets: a value set refuses is not quoted in the
// error (it may be a password, and standard error ends up in logs), and
// the error says what is wrong with it. Before, every refusal was
// `"<the whole value>" is neither a JSON value nor a plain word`.
func TestParseValueKeepsSecrets(t *testing.T) {
	for _, tc := range []struct{ name, arg, want string }{
		{"broken object", `{"password": "s3cr3t"`, "must be JSON"},
		{"broken string", `"s3cr3t`, "must be JSON"},
		{"text after JSON", `["s3cr3t"] x`, "must be JSON, and this is not: more text"},
		{"line break", "s3cr3t\nline two", "a plain word must not contain a line break (give it as a JSON string"},
		{"long word", strings.Repeat("s3cr3t", 1000), "a plain word is longer than 4096 bytes"},
		{"control character", "s3cr3t\x1b", "control character"},
		{"empty", "", `empty value: write "" for an empty string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseValue(tc.arg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("err = %v, want %q and no trace of the value", err, tc.want)
			}
		})
	}
	if v, err := ParseValue(`"` + strings.Repeat("s3cr3t", 1000) + `"`); err != nil || v != strings.Repeat("s3cr3t", 1000) {
		t.Errorf("a long JSON string: %v", err)
	}
}
