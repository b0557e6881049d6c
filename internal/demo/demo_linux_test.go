package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

func repoRoot() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(f), "..", "..")
}

// TestIntegrationDemo runs the whole demo as `make demo` does, with
// binaries built for the test, and checks that it passes and leaves no
// process behind.
func TestIntegrationDemo(t *testing.T) {
	sdbox.Require(t)
	sdbox.Exclusive(t, "powerhouse-ports") // the demo's ports, as internal/integration's houses
	root, err := filepath.Abs(repoRoot())
	if err != nil {
		t.Fatal(err)
	}
	// Out of the source tree and /tmp (internal/testenv), and seen by the
	// workers' user at boxBin whatever the host path's parents allow.
	dir := testenv.Build(t, "./cmd/powerhouse", "./examples/hello")
	const boxBin = "/run/powerhouse-test-bin"
	cfg, err := os.ReadFile(filepath.Join(root, "testdata", "demo.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.ReplaceAll(cfg, []byte(`"../bin/hello"`), []byte(`"`+boxBin+`/hello"`))
	if !bytes.Contains(cfg, []byte(`exec   = "`+boxBin+`/hello"`)) {
		t.Fatalf("testdata/demo.toml no longer names ../bin/hello:\n%s", cfg)
	}
	o := Options{
		Config:     filepath.Join(dir, "demo.toml"),
		Powerhouse: filepath.Join(dir, "powerhouse"),
		Visible:    []string{root},
		Binds:      []Bind{{Host: dir, Box: boxBin}},
	}
	if err := os.WriteFile(o.Config, cfg, 0o644); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	code := Run(t.Context(), o, &out)
	if code != exitOK {
		t.Fatalf("demo exited %d:\n%s", code, out.String())
	}
	for _, want := range []string{
		"ExecStart=" + boxBin + "/hello",
		"5 of 5 by web@",
		"12 of 12 client addresses always answered by the same instance",
		"reload: ", " failed\n",
		"✓ 0 failed of ",
		"web@2 came back with a new process",
		"worker.reload web@4",
		"0 cut of 24 long-lived connections",
		"every instance was seen with its new process serving while its old one drained",
		"signal=SIGKILL",
		"every check passed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "✗") {
		t.Errorf("a check failed, yet the demo exited 0")
	}
	if t.Failed() {
		t.Logf("output:\n%s", out.String())
	}
	// Nothing runs the binaries any more.
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		// The path as the box saw it, or as the host does.
		if exe, err := os.Readlink(p); err == nil && (strings.HasPrefix(exe, dir+"/") || strings.HasPrefix(exe, boxBin+"/")) {
			t.Errorf("%s still runs %s", filepath.Dir(p), exe)
		}
	}
}

// TestBusyPort: with a port of the demo house taken, the demo says so and
// exits 2 before booting anything. Without root it says that root is
// needed, and what to run instead.
func TestBusyPort(t *testing.T) {
	o := Options{Config: filepath.Join(repoRoot(), "testdata", "demo.toml")}
	var out bytes.Buffer
	if os.Geteuid() != 0 {
		if code := Run(t.Context(), o, &out); code != exitCannot || !strings.Contains(out.String(), "sudo make demo") ||
			!strings.Contains(out.String(), "powerhouse install --now testdata/demo.toml") {
			t.Errorf("without root: exit %d, output:\n%s", code, out.String())
		}
		return
	}
	sdbox.Exclusive(t, "powerhouse-ports")
	l, err := net.Listen("tcp", proxyAddr)
	if err != nil {
		t.Fatalf("cannot hold %s for the test: %v", proxyAddr, err)
	}
	defer l.Close()
	code := Run(t.Context(), o, &out)
	if code != exitCannot || !strings.Contains(out.String(), "port 9997 is in use") {
		t.Errorf("with port 9997 taken: exit %d, output:\n%s", code, out.String())
	}
	if strings.Contains(out.String(), "booting") {
		t.Errorf("the demo booted a box although a port was taken:\n%s", out.String())
	}
}
