package cli

import (
	"flag"
	"fmt"

	"github.com/powerhouse/powerhouse/config"
)

var reloadVerb = verb{
	name:  "reload",
	args:  "[GROUP...]",
	short: "hand a group's instances over to new processes, one at a time: each new one ready before the old one drains",
	long: `A handover reload, carried out by the group's supervisor: instance by
instance, it starts a new process beside the old one (the instance's other
unit, powerhouse-GROUP.b@N.service or powerhouse-GROUP@N.service, on the
same socket: same clients) and waits until it reported ready (READY=1);
then the old one is told to stop and drains (finishes what it has, up to
the group's timeout_stop) while the supervisor goes on with the next
instance. Each step is printed as the supervisor reports it, naming units
and PIDs. It returns when every instance has been handed over (the old
processes may still drain), or fails with the supervisor's message naming
the first instance whose new process did not become ready: that one is
stopped, the old one keeps serving, and the instances after it keep
running the old process. A supervisor restarted in the middle of a reload
resumes it. This
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
