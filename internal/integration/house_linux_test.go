package integration

import (
	"context"
	"fmt"
	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/powerhouse/powerhouse/internal/helloclient"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/internal/testenv"
	"github.com/powerhouse/powerhouse/units"
)

// bin holds the binaries under test, built once for the package in a
// directory of the run's own outside the source tree (internal/testenv);
// every box sees it, read-only, at boxBin.
var bin string

// boxBin is where the binaries are inside a box: under the box's own /run,
// whose directories are 0755, so that workers running as the unprivileged
// user powerhouse reach them wherever the host directory and the clone
// live (under a 0700 /root or /tmp/tmp.X): paths on the host are not the
// workers' concern.
const boxBin = "/run/powerhouse-test-bin"

// pyWorker is examples/pyworker/worker.py's copy in bin, for the same
// reason: the clone's own path may not be open to the workers' user.
const pyWorker = "worker.py"

func TestMain(m *testing.M) {
	code := func() int {
		b, err := testenv.NewBin()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer b.Remove()
		if err := b.Build("./cmd/powerhouse", "./examples/hello", "./examples/session"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		py, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "pyworker", pyWorker))
		if err == nil {
			err = os.WriteFile(filepath.Join(b.Dir, pyWorker), py, 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		bin = b.Dir
		return m.Run()
	}()
	os.Exit(code)
}

func repoRoot() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(f), "..", ".."))
}

// boxOut is a directory in every house where workers, which run as the
// unprivileged user powerhouse, can leave what a test reads back.
const boxOut = "/run/powerhouse-test-out"

// boxConfig is where the installed configuration lives inside a box.
const boxConfig = "/etc/powerhouse/powerhouse.toml"

// house is a booted box with a PowerHouse configuration installed.
type house struct {
	t      *testing.T
	box    *sdbox.Box
	cfgDir string // host side of the box's /etc/powerhouse
	cfg    *config.Config
	m      units.Manager
	// raw is a go-systemd connection for what units.Manager does not
	// offer: signals to every process of a unit (SIGSTOP a worker group).
	raw *sdbus.Conn
}

// demoConfig returns testdata/demo.toml with its worker paths made
// absolute for the binaries under test.
func demoConfig(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "testdata", "demo.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), `"../bin/hello"`, `"`+filepath.Join(boxBin, "hello")+`"`)
}

// newHouse boots a box and installs the units generated for cfgText.
func newHouse(t *testing.T, cfgText string) *house {
	t.Helper()
	h := bootHouse(t, sdbox.Options{})
	if err := os.WriteFile(filepath.Join(h.cfgDir, "powerhouse.toml"), []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	h.install()
	return h
}

// bootHouse boots a box whose /etc/powerhouse is a fresh host directory
// (never the host's own /etc/powerhouse), with nothing installed.
func bootHouse(t *testing.T, o sdbox.Options) *house {
	t.Helper()
	sdbox.Require(t)
	// Houses bind loopback ports on the host's network: one at a time,
	// also across packages (internal/demo uses the demo's ports too).
	sdbox.Exclusive(t, "powerhouse-ports")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	o.Name = "powerhouse-test"
	// The workers' default user, in the box's private /etc.
	o.Sysusers = units.Sysusers
	o.Binds = append(o.Binds,
		sdbox.Bind{Source: dir, Target: "/etc/powerhouse", Writable: true},
		sdbox.Bind{Source: bin, Target: boxBin},
		// The repository (testdata, for commands run as root) at its own
		// path, also when the clone lives under /tmp, which the box
		// replaces. Workers must not need it: its path may be closed to
		// their user (a 0700 clone directory); they get boxBin.
		sdbox.Bind{Source: repoRoot(), Target: repoRoot()},
	)
	b, err := sdbox.Boot(ctx, t, o)
	if err != nil {
		t.Fatal(err)
	}
	h := &house{t: t, box: b, cfgDir: dir}
	if err := os.Mkdir(b.Path(boxOut), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(b.Path(boxOut), 0o1777); err != nil { // not subject to the umask
		t.Fatal(err)
	}
	conn, err := b.Manager(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h.raw = conn
	t.Cleanup(conn.Close)
	if h.m, err = units.NewManager(context.Background(), b.Manager); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.m.Close() })
	return h
}

// install generates the units from the configuration and reloads systemd.
func (h *house) install() {
	h.t.Helper()
	c, err := config.Load(filepath.Join(h.cfgDir, "powerhouse.toml"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.cfg = c
	o := generator.Options{Binary: filepath.Join(boxBin, "powerhouse"), ConfigPath: boxConfig}
	us, err := generator.Generate(c, o)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, u := range us {
		// A kernel-mode group's supervisor drop-in lives in a directory
		// of its own.
		if err := os.MkdirAll(filepath.Dir(h.box.Path("/etc/systemd/system/"+u.Name)), 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.WriteFile(h.box.Path("/etc/systemd/system/"+u.Name), u.Render(o), 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
	h.systemctl("daemon-reload")
}

func (h *house) systemctl(args ...string) string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := h.box.Systemctl(ctx, args...)
	if err != nil {
		h.t.Fatalf("systemctl %s: %v\n%s\njournal:\n%s", strings.Join(args, " "), err, out, h.journal())
	}
	return string(out)
}

// run runs a command inside the box.
func (h *house) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := h.box.Run(ctx, name, args...)
	return string(out), err
}

// powerhouse runs the powerhouse CLI inside the box.
func (h *house) powerhouse(args ...string) (string, error) {
	return h.run(filepath.Join(boxBin, "powerhouse"), args...)
}

func (h *house) journal() string {
	out, _ := h.run("journalctl", "--no-pager", "-n", "150", "-o", "short-monotonic")
	return out
}

// show returns one property of a unit.
func (h *house) show(unit, prop string) string {
	return strings.TrimSpace(h.systemctl("show", "-p", prop, "--value", unit))
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client returns an HTTP client whose connections come from src, one new
// connection per request; keepAliveClient reuses its connections.
func client(src string) *http.Client          { return helloclient.New(src, false) }
func keepAliveClient(src string) *http.Client { return helloclient.New(src, true) }

// getBody returns the body of a GET.
func getBody(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

// reply is what examples/hello answers.
type reply = helloclient.Reply

func get(c *http.Client, url string) (reply, error) {
	return helloclient.Get(context.Background(), c, url)
}

func runEnv(env []string, argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func sdboxOptions() sdbox.Options { return sdbox.Options{} }
