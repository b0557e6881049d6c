package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadValue(t *testing.T) {
	for _, tc := range []struct {
		name, in, want, wantErr string
	}{
		{name: "newline dropped", in: "\"s3cret\"\n", want: `"s3cret"`},
		{name: "CRLF dropped", in: "42\r\n", want: "42"},
		{name: "inner newlines kept", in: "{\"a\":\n1}\n", want: "{\"a\":\n1}"},
		{name: "empty", in: "\n", wantErr: "no value"},
		{name: "too long", in: strings.Repeat("a", maxStdinValue+1), wantErr: "longer than"},
		{name: "at the bound", in: strings.Repeat("a", maxStdinValue), want: strings.Repeat("a", maxStdinValue)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readValue(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q %v, want %q", got, err, tc.want)
			}
		})
	}
}

// TestGenerateSaysHowSetDelivers: generate tells, per group, whether set
// will send SIGHUP or restart the instances.
func TestGenerateSaysHowSetDelivers(t *testing.T) {
	code, _, stderr := run(t, "generate", "--binary", "/usr/bin/powerhouse", "../../../testdata/demo.toml")
	if code != 0 {
		t.Fatalf("generate: %d %s", code, stderr)
	}
	cfg := filepath.Join(t.TempDir(), "py.toml")
	os.WriteFile(cfg, []byte("[[worker]]\nname = \"py\"\nexec = \"/usr/bin/python3 w.py\"\n"), 0o644)
	_, _, pyErr := run(t, "generate", "--binary", "/usr/bin/powerhouse", cfg)
	stderr += pyErr
	for _, want := range []string{
		"generate: group py: powerhouse set restarts the instances one at a time (no reload_signal",
		"generate: group web: powerhouse set sends SIGHUP",
		"generate: group api: powerhouse set sends SIGHUP",
		"generate: group mail: powerhouse set changes the configuration for the next start only",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// TestRelativeConfigFlag: set and scale take --config as a relative
// path, like every other verb, when the file names its program relative
// to itself: before, they parsed it under the relative name and refused
// it ("the configuration's own path is not absolute").
func TestRelativeConfigFlag(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.toml"), []byte("[[worker]]\nname = \"w\"\nexec = \"../bin/app\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, args := range [][]string{
		{"set", "--config", "p.toml", "nosuch", "k=1"},
		{"scale", "--config", "p.toml", "nosuch", "2"},
		{"status", "--config", "p.toml", "nosuch"},
	} {
		code, _, stderr := run(t, args...)
		if code != ExitUsage || !strings.Contains(stderr, `no group "nosuch"`) || strings.Contains(stderr, "not absolute") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and no group \"nosuch\"", args, code, stderr)
		}
	}
}
