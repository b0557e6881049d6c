package cli

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

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

// tree is the installation's place under root: it writes in the
// configuration's directory and the unit directory, and in system scope
// the sysusers.d directory, nowhere else.
func (l layout) tree(root string) units.Tree {
	dirs := []string{filepath.Dir(l.configPath), l.unitDir}
	if !l.user {
		dirs = append(dirs, filepath.Dir(units.SysusersPath), filepath.Dir(units.SysctlFile))
	}
	return units.Tree{Root: root, Manifest: l.manifest, Dirs: dirs}
}

// emptyRoot refuses --root given as "": most likely an unset variable
// (--root "$DESTDIR"), which would otherwise mean the live system.
func emptyRoot(fs *flag.FlagSet) error {
	empty := false
	fs.Visit(func(f *flag.Flag) { empty = empty || f.Name == "root" && f.Value.String() == "" })
	if empty {
		return usagef(`--root "": an empty DIR (an unset variable?); leave --root out to act on this system`)
	}
	return nil
}

// newLayout returns the paths of a system installation, or of the
// calling user's (--user). root is --root.
func newLayout(user bool, root string) (layout, error) {
	if !user {
		return layout{
			configPath: config.DefaultPath,
			unitDir:    "/etc/systemd/system",
			manifest:   "/etc/powerhouse/.installed.json",
			wantsLink:  "/etc/systemd/system/multi-user.target.wants/" + units.Target,
		}, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return layout{}, fmt.Errorf("--user: %w", err)
	}
	cfg := filepath.Join(home, ".config")
	phDir, unitDir := filepath.Join(cfg, "powerhouse"), filepath.Join(cfg, "systemd", "user")
	if root == "" {
		// The user's own links (~/.config kept in a dotfiles checkout)
		// are the user's choice: resolved here, once, so that the
		// installation, which follows no link, writes where they lead.
		phDir, unitDir = resolveExisting(phDir), resolveExisting(unitDir)
	}
	return layout{
		configPath: filepath.Join(phDir, "powerhouse.toml"),
		unitDir:    unitDir,
		manifest:   filepath.Join(phDir, ".installed.json"),
		wantsLink:  filepath.Join(unitDir, "default.target.wants", units.Target),
		user:       true,
	}, nil
}

// resolveExisting resolves the symbolic links in the longest existing
// prefix of the absolute path p.
func resolveExisting(p string) string {
	rest := ""
	for dir := p; ; dir = filepath.Dir(dir) {
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(r, rest)
		}
		if dir == "/" || dir == "." {
			return p
		}
		rest = filepath.Join(filepath.Base(dir), rest)
	}
}

var installVerb = verb{
	name:  "install",
	args:  "[CONFIG]",
	short: "install a configuration: copy it, write its units, reload systemd, enable the house",
	long: `Validates CONFIG (default: the installed ` + config.DefaultPath + `, with --user
~/.config/powerhouse/powerhouse.toml), copies
it to ` + config.DefaultPath + ` (--user: ~/.config/powerhouse/), writes the
generated units to /etc/systemd/system (--user: ~/.config/systemd/user),
enables powerhouse.target and asks systemd to reload. System scope: writes
` + units.SysusersPath + ` and runs systemd-sysusers, which creates
the static user and group "powerhouse" workers run as by default (under
--root, only when DIR has an /etc/passwd). Uninstall leaves the user. --now also starts the
house, or, when it runs, applies the change to the groups that changed
only (changed worker units by the group's reload, as powerhouse reload
does; anything else by a restart of its supervisor, which leaves the
workers running), and waits until every group's supervisor is ready (it dispatches to a
ready instance): a group that is not fails the command, which names its
supervisor unit, its state and result, and the last lines the supervisor
wrote to the journal. While install writes, it holds the lock set and
scale take on the configuration's directory.
A [worker.service] user or group other than "powerhouse" must exist (on
this system, or with --root in DIR/etc/passwd and DIR/etc/group when DIR
has both; numeric ids are not checked): the supervisors join every
workers' group, so one missing group would keep the whole house down.
CONFIG is refused otherwise, before anything is written.

Idempotent: files whose content is unchanged are not touched, and a second
run with the same configuration reports no change. Units of groups that
are gone are removed. Every write is atomic. --root DIR writes the same
tree under DIR and talks to no systemd (packaging, images). Workers given
by a relative path in CONFIG are written with absolute paths.

A house with a dispatch = "kernel" group also gets
/etc/sysctl.d/50-powerhouse.conf (net.ipv4.tcp_migrate_req = 1, applied by
systemd-sysctl at boot: install sets no sysctl), removed with the last
such group; a kernel that cannot steer is warned about in one line. --user
refuses kernel mode.

Nothing is written outside the configuration's directory, the unit
directory and (system scope) sysusers.d and sysctl.d, and no symbolic link
in the target tree is followed: a link at a unit's path or as a directory
on the way is an error. The configuration copy may hold secrets: it is
created 0600; a file already there keeps its mode, owner and group, but
not what it granted others. A configuration already in place before the
first install (CONFIG is the installed path) is adopted: uninstall leaves
it.`,
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
			if len(args) == 0 {
				// The installed configuration of the scope: with --user,
				// the user's, not the system's.
				src = configPath("", *user)
			}
			if err := emptyRoot(fs); err != nil {
				return err
			}
			if *root == "" {
				if err := requireRoot("install", *user); err != nil {
					return err
				}
			}
			if *root != "" && *now {
				return usagef("--now cannot be used with --root")
			}
			if *binary != "" && (!filepath.IsAbs(*binary) || filepath.Clean(*binary) != *binary) {
				return usagef("--binary %q is not a clean absolute path", *binary)
			}
			return install(e, src, *root, *binary, *user, *now)
		}
	},
}

func install(e *env, src, root, binary string, user, now bool) error {
	began := time.Now()
	lay, err := newLayout(user, root)
	if err != nil {
		return err
	}
	// set and scale edit the configuration under this lock: neither
	// changes it while install reads it (CONFIG may be the installed
	// file), replaces it and restarts what changed. A first install has
	// no directory yet, and nothing to race with. The lock is released
	// once systemd has the new units: the groups' start, which may take
	// minutes, needs it no more.
	unlock, err := lockExisting(filepath.Join(root, filepath.Dir(lay.configPath)))
	if err != nil {
		return err
	}
	release := sync.OnceFunc(unlock)
	defer release()
	data, err := config.ReadFile(src)
	if err != nil && !isConfigError(err) {
		err = fmt.Errorf("read configuration: %w", err)
	}
	if src == configPath("", user) {
		err = noConfigGiven(err, nil)
	}
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(src)
	given, err := config.Parse(abs, data)
	if err != nil {
		return err
	}
	printWarnings(e, given)
	if err := generator.CheckScope(given, generator.Options{User: user}); err != nil {
		return err // said of the file given, not of its installed copy
	}
	if !user {
		// A user or group that does not exist fails the workers, and a
		// group fails every supervisor of the house (they join all the
		// workers' groups, 216/GROUP): refused before anything is written.
		if err := checkTargetAccounts(given, root); err != nil {
			return err
		}
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
	if b, err := config.ReadFile(filepath.Join(root, lay.configPath)); err == nil {
		old, _ = config.Parse(lay.configPath, b)
	}
	// The configuration may hold secrets (its [worker.config] is the
	// workers' credentials): root's alone. A configuration the operator
	// wrote in place before the first install is adopted: uninstall
	// leaves it.
	files := []units.File{{Path: lay.configPath, Data: data, Perm: units.Secret, Adopt: true}}
	for _, u := range us {
		files = append(files, units.File{Path: filepath.Join(lay.unitDir, u.Name), Data: u.Render(o), Perm: units.Public})
	}
	files = append(files, units.File{Path: lay.wantsLink, Link: filepath.Join(lay.unitDir, units.Target)})
	if !user {
		// The workers' default user; user managers run workers as their user.
		files = append(files, units.File{Path: units.SysusersPath, Data: units.Sysusers, Perm: units.Public})
		// Kernel mode's sysctl, for systemd-sysctl to apply at boot: the
		// house sets no sysctl itself. Generate refuses kernel mode
		// under --user.
		if f, ok := sysctlFile(c); ok {
			files = append(files, f)
		}
	}
	warnKernelMode(e, "install", c, root)
	for _, n := range generator.Notes(c, o) {
		fmt.Fprintf(e.stderr, "install: %s\n", n)
	}

	var m units.Manager
	if root == "" {
		if m, err = connect(e.ctx, user); err != nil {
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
	res, err := lay.tree(root).Apply(files)
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
		if err := m.DaemonReload(e.ctx); err != nil {
			return fmt.Errorf("systemctl daemon-reload: %w", err)
		}
	}
	release()
	if !now {
		return nil
	}
	var groups []string
	for _, w := range c.Workers {
		groups = append(groups, w.Name)
	}
	target, err := m.State(e.ctx, units.Target)
	if err != nil {
		return err
	}
	scope := scopeOf(user)
	if target.ActiveState != units.Active {
		fmt.Fprintf(e.stderr, "install: starting %s\n", units.Target)
		if err := m.Start(e.ctx, units.Target); err != nil {
			return err
		}
		return groupsReady(e, m, scope, groups, began)
	}
	for _, g := range affectedGroups(old, c, res.Written, lay.unitDir) {
		fmt.Fprintf(e.stderr, "install: applying the change to group %s\n", g)
		if err := applyGroup(e, m, old, c, e.group(g, user), res.Written, lay.unitDir); err != nil {
			// Why the group's supervisor did not come back says more
			// than the failed job.
			if rerr := groupsReady(e, m, scope, []string{g}, began); rerr != nil {
				return rerr
			}
			return err
		}
	}
	if err := m.Start(e.ctx, units.Target); err != nil {
		return err
	}
	return groupsReady(e, m, scope, groups, began)
}

// checkTargetAccounts refuses c when a user or group it names does not
// exist on the system it is installed on: the running one, or with --root
// an image (DIR/etc/passwd and DIR/etc/group); a package tree without them
// is not checked.
func checkTargetAccounts(c *config.Config, root string) error {
	a := hostAccounts()
	if root != "" && root != "/" { // "/": the running system, as for systemd-sysusers
		var err error
		if a, err = imageAccounts(root); err != nil || a == nil {
			return err
		}
	}
	errs, err := checkAccounts(c, a)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// affectedGroups lists the groups whose units or settings changed.
func affectedGroups(old, c *config.Config, written []string, unitDir string) []string {
	set := map[string]bool{}
	all := false
	for _, p := range written {
		name := strings.TrimPrefix(p, unitDir+"/")
		if name == units.SupervisorTemplate || name == units.PrepareService {
			all = true
			continue
		}
		for _, w := range c.Workers {
			if (units.Group{Name: w.Name}).Owns(name) {
				set[w.Name] = true
			}
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
// changed worker units mean a reload of the workers, by the group's
// supervisor (a handover per instance, one at a time: the new process
// starts on the side of its instance that is not running, from the new
// unit, and the old one drains); anything else (amount, config, sockets)
// is picked up by restarting the supervisor, which leaves the workers
// running.
func applyGroup(e *env, m units.Manager, old, c *config.Config, gr units.Group, written []string, unitDir string) error {
	g := gr.Name
	w := c.Worker(g)
	workerChanged := false
	changed := []string{gr.HandoffTemplate()}
	for _, s := range generator.Sides(w) {
		changed = append(changed, gr.WorkerTemplateSide(s))
	}
	for _, p := range written {
		for _, u := range changed {
			workerChanged = workerChanged || p == filepath.Join(unitDir, u)
		}
	}
	// Socket units whose listeners changed are rebound: these and the ones
	// the group no longer has are all stopped, so that an address moving
	// from one unit to another (a listener that became a PROXY one) is
	// free, then the changed ones are started. systemd refuses to start a
	// socket unit while its service runs ("already active, refusing"), so
	// the supervisor stops meanwhile and the restart below starts it
	// again. Sticky workers keep running; a shared group's workers, which
	// require the sockets, stop with them and the supervisor starts them.
	// Connections to the rebound addresses are refused for that moment.
	socks := generator.GroupSockets(w)
	var gone []string
	if old != nil {
		if prev := old.Worker(g); prev != nil {
			for _, s := range generator.GroupSockets(prev) {
				if !contains(socks, s) {
					gone = append(gone, s)
				}
			}
		}
	}
	var start []string
	for _, s := range socks {
		if contains(written, filepath.Join(unitDir, s)) {
			start = append(start, s)
		}
	}
	// A sticky group that changed dispatch mode has instance sockets of
	// the other kind running (hand-off datagram sockets where kernel mode
	// wants listening ones, or the reverse), which restarting their
	// services would not rebind: they are stopped too (Requires= takes
	// each instance down with its socket), and the restarted supervisor
	// brings the group up again on the new units.
	remade := instanceSocketsToRemake(e, m, old, w)
	if len(gone)+len(start)+len(remade) > 0 {
		if err := m.Stop(e.ctx, gr.SupervisorUnit()); err != nil {
			return err
		}
		for _, s := range append(append(gone, start...), remade...) {
			m.Stop(e.ctx, s) // a unit never started cannot be stopped: fine
		}
		for _, s := range start {
			if err := m.Start(e.ctx, s); err != nil {
				return err
			}
		}
	}
	if err := m.Restart(e.ctx, gr.SupervisorUnit()); err != nil {
		return err
	}
	if workerChanged && w.Reloadable && len(remade) == 0 { // remade: already stopped, they start on the new units
		// Not a restart of each instance's side-A unit: after a reload
		// an instance may run on side B, and restarting side A would
		// start a second process on its socket and leave the old one.
		// The supervisor knows which side serves.
		res, err := client(gr).Reload(e.ctx, e.progress("install", g))
		if err != nil {
			return callFailed("install", err)
		}
		fmt.Fprintf(e.stderr, "install: %s\n", res.Message)
	}
	return nil
}

// instanceSocketsToRemake lists the loaded instance sockets of group w
// when its dispatch mode changed from old (see applyGroup), else none.
func instanceSocketsToRemake(e *env, m units.Manager, old *config.Config, w *config.Worker) []string {
	if old == nil {
		return nil
	}
	prev := old.Worker(w.Name)
	if prev == nil || !prev.Sticky || !w.Sticky || prev.KernelDispatch() == w.KernelDispatch() {
		return nil
	}
	sts, _ := m.States(e.ctx, units.Group{Name: w.Name}.InstanceSocketPattern())
	var out []string
	for _, st := range sts {
		out = append(out, st.Name)
	}
	return out
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
func stopGroup(e *env, m units.Manager, g string) {
	gr := units.Group{Name: g}
	m.Stop(e.ctx, gr.SupervisorUnit())
	sts, _ := m.States(e.ctx, units.HousePattern)
	for _, st := range sts {
		if gr.Owns(st.Name) {
			m.Stop(e.ctx, st.Name)
		}
	}
	m.Stop(e.ctx, gr.PublicSocket())
	m.Stop(e.ctx, gr.ProxySocket())
}

var uninstallVerb = verb{
	name:  "uninstall",
	short: "stop the house and remove exactly the files install wrote",
	long: `Stops powerhouse.target (every group's supervisor and workers), removes the
files listed in the installation manifest (the configuration copy, the
units, the enablement link) and nothing else, and asks systemd to reload.
A configuration that was in place before install is left, and said so.
The manifest is checked first: an entry outside the installation's
directories, with "..", relative, or behind a symbolic link is refused and
nothing is removed. --root DIR removes them under DIR and talks to no
systemd.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		user := fs.Bool("user", false, "uninstall from the calling user's service manager")
		root := fs.String("root", "", "remove under `DIR` and talk to no systemd")
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("takes no arguments")
			}
			if err := emptyRoot(fs); err != nil {
				return err
			}
			if *root == "" {
				if err := requireRoot("uninstall", *user); err != nil {
					return err
				}
			}
			lay, err := newLayout(*user, *root)
			if err != nil {
				return err
			}
			tree := lay.tree(*root)
			if !tree.Installed() {
				fmt.Fprintln(e.stdout, "uninstall: nothing installed")
				return nil
			}
			var m units.Manager
			if *root == "" {
				if m, err = connect(e.ctx, *user); err != nil {
					return err
				}
				defer m.Close()
				if err := m.Stop(e.ctx, units.Target); err != nil {
					return err
				}
				// Sockets and workers are PartOf the target; stop
				// whatever is left of each group too.
				if b, err := config.ReadFile(filepath.Join(*root, lay.configPath)); err == nil {
					if c, err := config.Parse(lay.configPath, b); err == nil {
						for _, w := range c.Workers {
							stopGroup(e, m, w.Name)
						}
					}
				}
			}
			res, err := tree.Uninstall()
			for _, p := range res.Removed {
				fmt.Fprintf(e.stdout, "uninstall: removed %s\n", filepath.Join(*root, p))
			}
			for _, p := range res.Kept {
				fmt.Fprintf(e.stdout, "uninstall: left %s: it was there before install (remove it yourself if it should go)\n", filepath.Join(*root, p))
			}
			if err != nil {
				return err
			}
			if m != nil {
				if err := m.DaemonReload(e.ctx); err != nil {
					return fmt.Errorf("systemctl daemon-reload: %w", err)
				}
			}
			return nil
		}
	},
}
