package cli

import (
	"flag"
	"fmt"

	"github.com/powerhouse/powerhouse/config"
)

var reloadVerb = verb{
	name:  "reload",
	args:  "[GROUP...]",
	short: "restart a group's instances one at a time, each once the previous is ready",
	long: `A rolling reload, carried out by the group's supervisor: instance by
instance, it restarts it and waits until the new process reported ready
(READY=1), then goes on with the next. Each step is printed as the
supervisor reports it. It returns when every instance has been restarted,
or fails with the supervisor's message naming the first instance that did
not come back; the instances after it keep running the old process. This
is what "systemctl reload powerhouse@GROUP" runs, so both report the same
failure in the same words. Interrupting the command does not stop the
reload: the supervisor finishes it and logs its end. Without GROUP, every
reloadable group is reloaded. Groups with reloadable = false refuse. A
group whose supervisor does not run is not reloaded (restarting its
instances would start its workers without their supervisor): named, it is
an error; otherwise it is skipped, and said so.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		cfg := fs.String("config", "", "configuration `FILE` (default "+config.DefaultPath+", with --user ~/.config/powerhouse/powerhouse.toml)")
		user := fs.Bool("user", false, "talk to the user's service manager instead of the system's")
		return func(e *env, args []string) error {
			if err := requireRoot("reload", *user); err != nil {
				return err
			}
			c, err := loadInstalled(*cfg, *user)
			if err != nil {
				return err
			}
			var groups []*config.Worker
			if len(args) == 0 {
				for i := range c.Workers {
					if c.Workers[i].Reloadable {
						groups = append(groups, &c.Workers[i])
					}
				}
			}
			for _, g := range args {
				w := c.Worker(g)
				if w == nil {
					return usagef("no group %q in %s", g, c.File)
				}
				if !w.Reloadable {
					return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse reload: group %s is not reloadable (reloadable = false in %s)", g, c.File)}
				}
				groups = append(groups, w)
			}
			if len(groups) == 0 {
				fmt.Fprintf(e.stderr, "reload: no group is reloadable (every group of %s has reloadable = false)\n", c.File)
				return nil
			}
			for _, w := range groups {
				g := e.group(w.Name, *user)
				res, err := client(g).Reload(e.ctx, e.progress("reload", w.Name))
				if notRunning(err) {
					state, stopped := e.supervisorState(g)
					switch {
					case !stopped:
						return noAnswer("reload", g, state, "")
					case len(args) == 0:
						fmt.Fprintf(e.stderr, "reload %s: not running (%s), skipped\n", w.Name, state)
						continue
					}
					return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse reload: group %s is not running (%s): nothing to reload; powerhouse %sstart starts the house", w.Name, state, flagWord(*user))}
				}
				if err != nil {
					return callFailed("reload", err)
				}
				fmt.Fprintf(e.stderr, "reload %s: %s\n", w.Name, res.Message)
			}
			return nil
		}
	},
}
