package cli

import (
	"flag"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

var scaleVerb = verb{
	name:  "scale",
	args:  "GROUP N",
	short: "run N instances of a group from now on (saved in the configuration)",
	long: `Sets the group's amount to N in the configuration file (only that line
changes), then asks the group's supervisor to apply it (SIGHUP): it starts
the missing instances or stops the surplus ones. Stickiness moves only the
clients of the instances that come or go. Waits until the running
instances match, at most --timeout. A group that is not running only has
the amount saved, and starts with it.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		mf := addManagerFlags(fs)
		timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the instances")
		return func(e *env, args []string) error {
			if len(args) != 2 {
				return usagef("expected GROUP and N")
			}
			if err := requireRoot("scale", *mf.user); err != nil {
				return err
			}
			group := args[0]
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 || n > config.MaxAmount {
				return usagef("N must be a number from 1 to %d", config.MaxAmount)
			}
			if *timeout <= 0 {
				return usagef("--timeout must be more than 0")
			}
			cfg := mf.path()
			src, err := readInstalled(*mf.config, *mf.user)
			if err != nil {
				return err
			}
			// Checked here, before systemd is asked anything; written
			// below from the file as it is then.
			if _, err := config.SetAmount(cfg, src, group, n); err != nil {
				return &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse scale: %w", err)}
			}
			// Connected first: a service manager out of reach leaves
			// the configuration as it was.
			m, err := mf.connect(e)
			if err != nil {
				return err
			}
			defer m.Close()
			if _, _, err := editLocked(cfg, func(src []byte) ([]byte, error) {
				out, err := config.SetAmount(cfg, src, group, n)
				if err != nil {
					return nil, &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse scale: %w", err)}
				}
				return out, nil
			}, group, false); err != nil {
				return err
			}
			sup := units.Group{Name: group}.SupervisorUnit()
			// A group that does not run has no supervisor to signal
			// (systemd would answer "No main process to kill"): the
			// saved amount is what it starts with.
			if st, err := m.State(e.ctx, sup); err == nil && st.ActiveState != "active" && st.ActiveState != "reloading" {
				fmt.Fprintf(e.stderr, "scale %s: %d instances saved in %s; the group is not running (%s is %s): it starts with them\n", group, n, cfg, sup, st.ActiveState)
				return nil
			}
			if err := m.Signal(e.ctx, sup, syscall.SIGHUP); err != nil {
				return fmt.Errorf("ask %s to apply: %w", sup, err)
			}
			deadline := time.Now().Add(*timeout)
			for {
				sts, err := m.States(e.ctx, units.Group{Name: group}.InstancePattern())
				if err != nil {
					return err
				}
				ok := 0
				extra := 0
				for _, st := range sts {
					i, _ := strconv.Atoi(st.Name[len("powerhouse-"+group+"@") : len(st.Name)-len(".service")])
					active := st.ActiveState == "active" && st.JobType == ""
					switch {
					case i >= 1 && i <= n && active:
						ok++
					case i > n && st.ActiveState != "inactive" && st.ActiveState != "failed":
						extra++
					}
				}
				if ok == n && extra == 0 {
					fmt.Fprintf(e.stderr, "scale %s: %d instances running\n", group, n)
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("scale %s: after %v, %d of %d instances running and %d surplus still up", group, *timeout, ok, n, extra)
				}
				select {
				case <-e.ctx.Done():
					return e.ctx.Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	},
}
