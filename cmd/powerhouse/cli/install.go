package cli

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

// layout is where an installation puts things, as the target system sees
// them (before --root is prefixed).
type layout struct {
	configPath, unitDir, manifest, wantsLink string
	user                                     bool
}

func newLayout(user bool) (layout, error) {
	if !user {
		return layout{
			configPath: config.DefaultPath,
			unitDir:    "/etc/systemd/system",
			manifest:   "/etc/powerhouse/.installed.json",
			wantsLink:  "/etc/systemd/system/multi-user.target.wants/" + generator.Target,
		}, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return layout{}, fmt.Errorf("--user: %w", err)
	}
	cfg := filepath.Join(home, ".config")
	return layout{
		configPath: filepath.Join(cfg, "powerhouse", "powerhouse.toml"),
		unitDir:    filepath.Join(cfg, "systemd", "user"),
		manifest:   filepath.Join(cfg, "powerhouse", ".installed.json"),
		wantsLink:  filepath.Join(cfg, "systemd", "user", "default.target.wants", generator.Target),
		user:       true,
	}, nil
}

func init() {
	register(&command{
		name:  "install",
		args:  "[CONFIG]",
		short: "install a configuration: copy it, write its units, reload systemd, enable the house",
		long: `Validates CONFIG (default: the installed ` + config.DefaultPath + `), copies
it to ` + config.DefaultPath + ` (--user: ~/.config/powerhouse/), writes the
generated units to /etc/systemd/system (--user: ~/.config/systemd/user),
enables powerhouse.target and asks systemd to reload. System scope: writes
` + units.SysusersPath + ` and runs systemd-sysusers, which creates
the static user and group "powerhouse" workers run as by default (under
--root, only when DIR has an /etc/passwd). Uninstall leaves the user. --now also starts the
house, or, when it runs, restarts or reloads only the groups that changed.

Idempotent: files whose content is unchanged are not touched, and a second
run with the same configuration reports no change. Units of groups that
are gone are removed. Every write is atomic. --root DIR writes the same
tree under DIR and talks to no systemd (packaging, images). Workers given
by a relative path in CONFIG are written with absolute paths.`,
		flags: func(fs *flag.FlagSet) func(*env, []string) error {
			user := fs.Bool("user", false, "install for the calling user's service manager")
			root := fs.String("root", "", "write under `DIR` and talk to no systemd")
			now := fs.Bool("now", false, "start the house, or apply the changes to it")
			binary := fs.String("binary", "", "absolute `PATH` of powerhouse written into the units (default: this executable)")
			return func(e *env, args []string) error {
				src, err := configArg(args)
				if err != nil {
					return err
				}
				if *root != "" && *now {
					return usagef("--now cannot be used with --root")
				}
				return install(e, src, *root, *binary, *user, *now)
			}
		},
	})
}

func install(e *env, src, root, binary string, user, now bool) error {
	lay, err := newLayout(user)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read configuration: %w", err)
	}
	abs, _ := filepath.Abs(src)
	if _, err := config.Parse(abs, data); err != nil {
		return err
	}
	data, err = config.AbsoluteExec(abs, data)
	if err != nil {
		return err
	}
	c, err := config.Parse(lay.configPath, data)
	if err != nil {
		return err
	}
	if binary == "" {
		if binary, err = selfPath(); err != nil {
			return err
		}
	}
	o := generator.Options{Binary: binary, ConfigPath: lay.configPath, User: user}
	us, err := generator.Generate(c, o)
	if err != nil {
		return err
	}
	var old *config.Config
	if b, err := os.ReadFile(filepath.Join(root, lay.configPath)); err == nil {
		old, _ = config.Parse(lay.configPath, b)
	}
	files := []units.File{{Path: lay.configPath, Data: data, Mode: 0o644}}
	for _, u := range us {
		files = append(files, units.File{Path: filepath.Join(lay.unitDir, u.Name), Data: u.Render(o), Mode: 0o644})
	}
	files = append(files, units.File{Path: lay.wantsLink, Link: filepath.Join(lay.unitDir, generator.Target)})
	if !user {
		// The workers' default user; user managers run workers as their user.
		files = append(files, units.File{Path: units.SysusersPath, Data: units.Sysusers, Mode: 0o644})
	}
	for _, n := range generator.Notes(c, o) {
		fmt.Fprintf(e.stderr, "install: %s\n", n)
	}

	var m *units.Manager
	if root == "" {
		scope := units.System
		if user {
			scope = units.User
		}
		if m, err = units.Connect(e.ctx, scope); err != nil {
			return err
		}
		defer m.Close()
		// Groups that are gone: stop them before their units disappear.
		if old != nil {
			for _, w := range old.Workers {
				if c.Worker(w.Name) == nil {
					fmt.Fprintf(e.stderr, "install: stopping removed group %s\n", w.Name)
					stopGroup(e, m, w.Name)
				}
			}
		}
	}
	res, err := units.Apply(root, lay.manifest, files)
	if err != nil {
		return err
	}
	if !res.Changed() {
		fmt.Fprintf(e.stdout, "install: no change (%d files up to date)\n", len(res.Unchanged))
	}
	for _, p := range res.Written {
		fmt.Fprintf(e.stdout, "install: wrote %s\n", filepath.Join(root, p))
	}
	for _, p := range res.Removed {
		fmt.Fprintf(e.stdout, "install: removed %s\n", filepath.Join(root, p))
	}
	if !user {
		if ok, err := units.ApplySysusers(e.ctx, root); err != nil {
			return err
		} else if !ok {
			fmt.Fprintf(e.stdout, "install: %s has no /etc/passwd: systemd-sysusers creates user %s at its first boot\n", root, config.DefaultUser)
		}
	}
	if m == nil {
		return nil
	}
	if res.Changed() {
		if err := m.Conn().ReloadContext(e.ctx); err != nil {
			return fmt.Errorf("systemctl daemon-reload: %w", err)
		}
	}
	if !now {
		return nil
	}
	target, err := m.State(e.ctx, generator.Target)
	if err != nil {
		return err
	}
	if target.ActiveState != "active" {
		fmt.Fprintf(e.stderr, "install: starting %s\n", generator.Target)
		return m.Start(e.ctx, generator.Target)
	}
	for _, g := range affectedGroups(old, c, res.Written, lay.unitDir) {
		fmt.Fprintf(e.stderr, "install: applying the change to group %s\n", g)
		if err := applyGroup(e, m, old, c, g, res.Written, lay.unitDir); err != nil {
			return err
		}
	}
	return m.Start(e.ctx, generator.Target)
}

// affectedGroups lists the groups whose units or settings changed.
func affectedGroups(old, c *config.Config, written []string, unitDir string) []string {
	set := map[string]bool{}
	all := false
	for _, p := range written {
		name := strings.TrimPrefix(p, unitDir+"/")
		switch {
		case name == generator.SupervisorPrefix+".service", name == generator.PrepareService:
			all = true
		case strings.HasPrefix(name, "powerhouse-"):
			set[strings.SplitN(strings.TrimPrefix(name, "powerhouse-"), "@", 2)[0]] = true
		case strings.HasPrefix(name, generator.SupervisorPrefix):
			set[strings.SplitN(strings.TrimPrefix(name, generator.SupervisorPrefix), ".", 2)[0]] = true
		}
	}
	var out []string
	for _, w := range c.Workers {
		var prev *config.Worker
		if old != nil {
			prev = old.Worker(w.Name)
		}
		if all || set[w.Name] || prev == nil || !reflect.DeepEqual(*prev, w) {
			out = append(out, w.Name)
		}
	}
	sort.Strings(out)
	return out
}

// applyGroup brings a running group in line with its new configuration:
// changed worker units mean a rolling restart of the workers; anything else
// (amount, config, sockets) is picked up by restarting the supervisor,
// which leaves the workers running.
func applyGroup(e *env, m *units.Manager, old, c *config.Config, g string, written []string, unitDir string) error {
	w := c.Worker(g)
	workerChanged := false
	for _, p := range written {
		if p == filepath.Join(unitDir, generator.WorkerTemplate(g)) || p == filepath.Join(unitDir, "powerhouse-"+g+"@.socket") {
			workerChanged = true
		}
	}
	if sock := filepath.Join(unitDir, generator.PublicSocket(g)); contains(written, sock) {
		if err := m.Restart(e.ctx, generator.PublicSocket(g)); err != nil {
			return err
		}
	}
	if err := m.Restart(e.ctx, generator.SupervisorService(g)); err != nil {
		return err
	}
	if workerChanged && w.Reloadable {
		for n := 1; n <= w.Amount; n++ {
			if err := m.Restart(e.ctx, generator.WorkerService(g, n)); err != nil {
				return fmt.Errorf("group %s: instance %d: %w", g, n, err)
			}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// stopGroup stops a group's supervisor, workers and sockets.
func stopGroup(e *env, m *units.Manager, g string) {
	m.Stop(e.ctx, generator.SupervisorService(g))
	sts, _ := m.States(e.ctx, "powerhouse-"+g+"@*")
	for _, st := range sts {
		m.Stop(e.ctx, st.Name)
	}
	m.Stop(e.ctx, generator.PublicSocket(g))
}

func init() {
	register(&command{
		name:  "uninstall",
		short: "stop the house and remove exactly the files install wrote",
		long: `Stops powerhouse.target (every group's supervisor and workers), removes the
files listed in the installation manifest (the configuration copy, the
units, the enablement link) and nothing else, and asks systemd to reload.
--root DIR removes them under DIR and talks to no systemd.`,
		flags: func(fs *flag.FlagSet) func(*env, []string) error {
			user := fs.Bool("user", false, "uninstall from the calling user's service manager")
			root := fs.String("root", "", "remove under `DIR` and talk to no systemd")
			return func(e *env, args []string) error {
				if len(args) > 0 {
					return usagef("takes no arguments")
				}
				lay, err := newLayout(*user)
				if err != nil {
					return err
				}
				if !units.Installed(*root, lay.manifest) {
					fmt.Fprintln(e.stdout, "uninstall: nothing installed")
					return nil
				}
				var m *units.Manager
				if *root == "" {
					scope := units.System
					if *user {
						scope = units.User
					}
					if m, err = units.Connect(e.ctx, scope); err != nil {
						return err
					}
					defer m.Close()
					if err := m.Stop(e.ctx, generator.Target); err != nil {
						return err
					}
					// Sockets and workers are PartOf the target; stop
					// whatever is left of each group too.
					if b, err := os.ReadFile(filepath.Join(*root, lay.configPath)); err == nil {
						if c, err := config.Parse(lay.configPath, b); err == nil {
							for _, w := range c.Workers {
								stopGroup(e, m, w.Name)
							}
						}
					}
				}
				removed, err := units.Uninstall(*root, lay.manifest)
				for _, p := range removed {
					fmt.Fprintf(e.stdout, "uninstall: removed %s\n", filepath.Join(*root, p))
				}
				if err != nil {
					return err
				}
				if m != nil {
					if err := m.Conn().ReloadContext(e.ctx); err != nil {
						return fmt.Errorf("systemctl daemon-reload: %w", err)
					}
				}
				return nil
			}
		},
	})
}
