package cli

import (
	"flag"
	"path/filepath"

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
		config: fs.String("config", config.DefaultPath, "the installed configuration `FILE`"),
		user:   fs.Bool("user", false, "talk to the user's service manager instead of the system's"),
	}
}

func (m *managerFlags) connect(e *env) (*units.Manager, error) {
	scope := units.System
	if *m.user {
		scope = units.User
	}
	return units.Connect(e.ctx, scope)
}

func (m *managerFlags) load() (*config.Config, error) { return config.Load(*m.config) }

// path is the --config file as an absolute path, as config.Load takes
// it: a relative exec in the file is relative to the file, which a
// relative path given to config.Parse cannot say ("the configuration's
// own path is not absolute").
func (m *managerFlags) path() string {
	if abs, err := filepath.Abs(*m.config); err == nil {
		return abs
	}
	return *m.config
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
