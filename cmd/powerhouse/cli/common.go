package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

// managerFlags are the flags of verbs that talk to systemd.
type managerFlags struct {
	config *string
	user   *bool
}

func addManagerFlags(fs *flag.FlagSet) *managerFlags {
	return &managerFlags{
		config: fs.String("config", "", "the installed configuration `FILE` (default "+config.DefaultPath+", with --user ~/.config/powerhouse/powerhouse.toml)"),
		user:   fs.Bool("user", false, "talk to the user's service manager instead of the system's"),
	}
}

func (m *managerFlags) connect(e *env) (units.Manager, error) {
	return connect(e.ctx, *m.user)
}

// requireRoot refuses, in one line, to run verb for the system's service
// manager without root: it writes /etc or /run/powerhouse and asks
// systemd to start, stop or signal units, and without root each step
// failed its own way ("permission denied" on some file, "Interactive
// authentication required", "Unit polkit.service is masked").
func requireRoot(verb string, user bool) error {
	if user || os.Geteuid() == 0 {
		return nil
	}
	return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse %s: needs root: it changes the system's services; run it with sudo, or with --user for your own service manager", verb)}
}

// connect connects to the system's service manager, or the calling
// user's (--user). The user's is found through its bus: without one,
// the D-Bus library would try to start a bus of its own (dbus-launch)
// and fail with a message about that, or find no systemd on it; the
// error says instead what is missing and how to get it.
func connect(ctx context.Context, user bool) (units.Manager, error) {
	if !user {
		return units.Connect(ctx, units.System)
	}
	if err := userBus(); err != nil {
		return nil, err
	}
	return units.Connect(ctx, units.User)
}

// userBus checks that the calling user's manager can be found as
// units.Connect looks for it: its private socket
// $XDG_RUNTIME_DIR/systemd/private, else the user bus
// ($DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus).
func userBus() error {
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") != "" {
		return nil
	}
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	runDir := "/run/user/" + strconv.Itoa(os.Getuid())
	linger := fmt.Sprintf("log in as %s (a login starts it), or run `loginctl enable-linger %s` as root", name, name)
	dir := os.Getenv("XDG_RUNTIME_DIR")
	reachable := func(d string) bool { return isSocket(d+"/systemd/private") || isSocket(d+"/bus") }
	switch {
	case dir == "" && reachable(runDir):
		return fmt.Errorf("--user: XDG_RUNTIME_DIR is not set, so your service manager cannot be found: set XDG_RUNTIME_DIR=%s", runDir)
	case dir == "":
		return fmt.Errorf("--user: no service manager of user %s is running (XDG_RUNTIME_DIR is not set and %s/systemd/private does not exist): %s, then set XDG_RUNTIME_DIR=%s", name, runDir, linger, runDir)
	case !reachable(dir):
		return fmt.Errorf("--user: no service manager of user %s is running (no %s/systemd/private, no bus at %s/bus): %s", name, dir, dir, linger)
	}
	return nil
}

func isSocket(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode()&fs.ModeSocket != 0
}

func (m *managerFlags) load() (*config.Config, error) { return loadInstalled(*m.config, *m.user) }

// loadInstalled loads the installed configuration (see configPath). When
// there is none where install puts it, the error says so and what to do,
// rather than only "no such file or directory".
func loadInstalled(flag string, user bool) (*config.Config, error) {
	c, err := config.Load(configPath(flag, user))
	return c, notInstalled(err, flag)
}

// readInstalled reads the installed configuration's file, like
// loadInstalled.
func readInstalled(flag string, user bool) ([]byte, error) {
	b, err := config.ReadFile(configPath(flag, user))
	return b, notInstalled(err, flag)
}

func notInstalled(err error, flag string) error {
	if flag == "" && errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: no house is installed (powerhouse install CONFIG installs one; --config FILE names another configuration)", err)
	}
	return err
}

// path is the --config file as an absolute path, as config.Load takes
// it: a relative exec in the file is relative to the file, which a
// relative path given to config.Parse cannot say ("the configuration's
// own path is not absolute").
func (m *managerFlags) path() string { return configPath(*m.config, *m.user) }

// configPath is the installed configuration a verb acts on: flag, the
// --config given, or where install put it for the scope (--user: in the
// user's ~/.config, not the system's /etc/powerhouse).
func configPath(flag string, user bool) string {
	if flag == "" {
		if lay, err := newLayout(user, ""); err == nil {
			return lay.configPath
		}
		return config.DefaultPath
	}
	if abs, err := filepath.Abs(flag); err == nil {
		return abs
	}
	return flag
}

// groupsOf returns the groups named in args, or all of them.
func groupsOf(c *config.Config, args []string) ([]*config.Worker, error) {
	var ws []*config.Worker
	if len(args) == 0 {
		for i := range c.Workers {
			ws = append(ws, &c.Workers[i])
		}
		return ws, nil
	}
	for _, g := range args {
		w := c.Worker(g)
		if w == nil {
			return nil, usagef("no group %q in %s", g, c.File)
		}
		ws = append(ws, w)
	}
	return ws, nil
}
