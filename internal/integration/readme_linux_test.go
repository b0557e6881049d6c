package integration

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/internal/testenv"
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

// boxReadme is the directory the README's commands run from inside the
// box: the repository's root as they expect it, with bin/ (make build)
// and testdata/, put together by the test.
const boxReadme = "/run/powerhouse-test-readme"

// TestIntegrationREADME runs every command of the README's runnable blocks,
// in order, inside a private systemd, from a copy of the repository's root,
// as root: each must succeed, so the README cannot drift from the program.
func TestIntegrationREADME(t *testing.T) {
	blocks := runnableBlocks(t)
	if len(blocks) < 2 {
		t.Fatalf("README has %d runnable blocks", len(blocks))
	}
	testenv.Program(t, "curl") // the commands include a curl
	// The README's commands use bin/ (make build) and testdata/ and
	// `powerhouse` on PATH. Not the clone's own: it has no bin/ (and a
	// test must not make one), and its path may be closed to the
	// workers' user. bin/ is the binaries TestMain built, as the box sees
	// them.
	work := testenv.Dir(t)
	if err := os.Symlink(boxBin, filepath.Join(work, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(filepath.Join(work, "testdata"), os.DirFS(filepath.Join(repoRoot(), "testdata"))); err != nil {
		t.Fatal(err)
	}
	o := sdboxOptions()
	o.Binds = append(o.Binds, sdbox.Bind{Source: work, Target: boxReadme})
	h := bootHouse(t, o)
	n := 0
	for _, b := range blocks {
		for _, line := range b {
			n++
			cmdline := strings.TrimPrefix(line, "sudo ")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			out, err := h.box.Run(ctx, "/bin/sh", "-c", "cd "+boxReadme+" && PATH="+boxReadme+"/bin:$PATH && "+cmdline)
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
