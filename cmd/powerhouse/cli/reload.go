package cli

import (
	"flag"
	"fmt"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/units"
)

var reloadVerb = verb{
	name:  "reload",
	args:  "[GROUP...]",
	short: "restart a group's instances one at a time, each once the previous is ready",
	long: `A rolling reload: instance by instance, restart it and wait until the new
process reported ready (READY=1), then go on with the next. It returns when
every instance has been restarted, or fails naming the first instance that
did not come back; the instances after it keep running the old process.
This is what "systemctl reload powerhouse@GROUP" runs. Without GROUP,
every reloadable group is reloaded. Groups with reloadable = false refuse.
A group that is not running is not reloaded (restarting its instances
would start its workers without their supervisor): named, it is an error;
otherwise it is skipped, and said so.`,
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
			m, err := connect(e.ctx, *user)
			if err != nil {
				return err
			}
			defer m.Close()
			for _, w := range groups {
				// Restarting the instances of a group that is not
				// running would start its workers, without their
				// supervisor: half a house nobody asked for.
				sup := units.Group{Name: w.Name}.SupervisorUnit()
				st, err := m.State(e.ctx, sup)
				if err != nil {
					return err
				}
				if st.ActiveState != "active" && st.ActiveState != "reloading" && len(args) == 0 {
					fmt.Fprintf(e.stderr, "reload %s: not running (%s is %s), skipped\n", w.Name, sup, st.ActiveState)
					continue
				}
				if st.ActiveState != "active" && st.ActiveState != "reloading" {
					return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse reload: group %s is not running (%s is %s): nothing to reload; powerhouse start starts the house", w.Name, sup, st.ActiveState)}
				}
				if err := rollingRestart(e, m, "reload", w); err != nil {
					return err
				}
			}
			return nil
		}
	},
}

// rollingRestart restarts a group's instances one at a time, each once
// the previous one is ready again (reload, and set without
// reload_signal). verb prefixes the progress lines.
func rollingRestart(e *env, m units.Manager, verb string, w *config.Worker) error {
	for n := 1; n <= w.Amount; n++ {
		unit := units.Group{Name: w.Name}.Instance(n)
		fmt.Fprintf(e.stderr, "%s %s: restarting %s (%d/%d)\n", verb, w.Name, unit, n, w.Amount)
		if err := m.Restart(e.ctx, unit); err != nil {
			return fmt.Errorf("group %s: instance %d (%s) did not become ready: %w", w.Name, n, unit, err)
		}
		// Best effort: outside systemd there is no journal.
		_ = events.Write(events.Event{Type: events.WorkerReload, Group: w.Name, Instance: n,
			Message: fmt.Sprintf("worker %s@%d reloaded", w.Name, n)})
	}
	fmt.Fprintf(e.stderr, "%s %s: %d instances restarted\n", verb, w.Name, w.Amount)
	return nil
}
