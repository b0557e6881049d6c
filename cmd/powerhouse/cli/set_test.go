package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		"generate: group py: powerhouse set restarts the instances one at a time but those whose worker tells its supervisor that it re-reads its configuration on SIGHUP",
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

// TestSetChecksFirst: set checks its arguments and the group before it
// reads a KEY=- value from standard input (before, `set nosuch k=-`
// waited for the value, then said there is no such group), and refuses a
// key given twice (before, the last one won, silently).
func TestSetChecksFirst(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(cfg, []byte(tinyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := powerhouse(t, "set", "--config", cfg, "nosuch", "password=-")
	stdin, err := cmd.StdinPipe() // held open: the value never comes
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd, 5*time.Second)
	if code := cmd.ProcessState.ExitCode(); code != ExitUsage || !strings.Contains(stderr.String(), `no group "nosuch"`) {
		t.Errorf("set nosuch password=-: exit %d, stderr %q; want 2 and no group \"nosuch\"", code, stderr.String())
	}
	code, _, errOut := run(t, "set", "--config", cfg, "nosuch", "k=1", "k=2")
	if code != ExitUsage || !strings.Contains(errOut, "key k given twice") {
		t.Errorf("a key twice: exit %d, stderr %q", code, errOut)
	}
}
