package integration

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runnableBlocks returns the shell lines of every ```sh block of the README
// that is preceded by an "<!-- runnable -->" line, block by block.
func runnableBlocks(t *testing.T) [][]string {
	f, err := os.Open(filepath.Join(repoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks [][]string
	var cur []string
	marked, in := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "<!-- runnable -->":
			marked = true
		case marked && !in && strings.HasPrefix(line, "```sh"):
			in, cur = true, nil
		case in && strings.HasPrefix(line, "```"):
			blocks = append(blocks, cur)
			in, marked = false, false
		case in:
			if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
				cur = append(cur, s)
			}
		case strings.TrimSpace(line) != "":
			marked = false
		}
	}
	return blocks
}

// TestIntegrationREADME runs every command of the README's runnable blocks,
// in order, inside a private systemd, from the repository's root, as root:
// each must succeed, so the README cannot drift from the program.
func TestIntegrationREADME(t *testing.T) {
	blocks := runnableBlocks(t)
	if len(blocks) < 2 {
		t.Fatalf("README has %d runnable blocks", len(blocks))
	}
	root := repoRoot()
	// The README's commands use the repository's bin/ (make build) and
	// `powerhouse` on PATH.
	for _, p := range []struct{ out, pkg string }{{"bin/powerhouse", "./cmd/powerhouse"}, {"bin/hello", "./examples/hello"}} {
		cmd := exec.Command("go", "build", "-o", p.out, p.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p.pkg, err, out)
		}
	}
	h := bootHouse(t, sdboxOptions())
	n := 0
	for _, b := range blocks {
		for _, line := range b {
			n++
			cmdline := strings.TrimPrefix(line, "sudo ")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			out, err := h.box.Run(ctx, "/bin/sh", "-c", "cd '"+root+"' && PATH='"+filepath.Join(root, "bin")+"':$PATH && "+cmdline)
			cancel()
			if err != nil {
				t.Fatalf("README command %q failed: %v\n%s\njournal:\n%s", line, err, out, h.journal())
			}
			t.Logf("$ %s\n%s", line, firstLines(string(out), 6))
		}
	}
	t.Logf("%d README commands ran", n)
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}
