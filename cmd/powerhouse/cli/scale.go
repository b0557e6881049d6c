package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/powerhouse/powerhouse/config"
)

var scaleVerb = verb{
	name:  "scale",
	args:  "GROUP N",
	short: "run N instances of a group from now on (saved in the configuration)",
	long: `Sets the group's amount to N in the configuration file (only that line
changes), then asks the group's supervisor to apply it: it starts the
missing instances or stops the surplus ones, and answers when the
instances running match. Stickiness moves only the clients of the
instances that come or go. For a kernel-mode group (dispatch = "kernel") it
first rewrites the supervisor's drop-in to list the instances' sockets
and reloads systemd; the supervisor then restarts itself to take the new
instances' sockets (it is out of the data path: no connection waits). Waits for that answer at most --timeout; the
supervisor goes on with the change whether the command waits or not. A
group whose supervisor does not run only has the amount saved, and starts
with it.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		mf := addManagerFlags(fs)
		timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the supervisor's answer")
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
			// Checked before the lock is taken; written below from the
			// file as it is then.
			if _, err := config.SetAmount(cfg, src, group, n); err != nil {
				return &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse scale: %w", err)}
			}
			if err := editLocked(cfg, group, func(src []byte) ([]byte, error) {
				out, err := config.SetAmount(cfg, src, group, n)
				if err != nil {
					return nil, &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse scale: %w", err)}
				}
				return out, nil
			}); err != nil {
				return err
			}
			if err := scaleKernelDropIn(e, cfg, group, n, *mf.user); err != nil {
				return err
			}
			g := e.group(group, *mf.user)
			ctx, cancel := context.WithTimeout(e.ctx, *timeout)
			defer cancel()
			res, err := client(g).Scale(ctx, n, e.progress("scale", group))
			switch {
			case notRunning(err):
				state, stopped := e.supervisorState(g)
				if !stopped {
					return noAnswer("scale", g, state, fmt.Sprintf("%d instances saved in %s; ", n, cfg))
				}
				// The saved amount is what it starts with.
				fmt.Fprintf(e.stderr, "scale %s: %d instances saved in %s; the group is not running (%s): it starts with them\n", group, n, cfg, state)
				return nil
			case errors.Is(err, context.DeadlineExceeded):
				return fmt.Errorf("scale %s: %d instances saved in %s; no answer from the supervisor after %v: it goes on with the change (powerhouse status %s shows where it is)", group, n, cfg, *timeout, group)
			case err != nil:
				return callFailed("scale", err)
			}
			fmt.Fprintf(e.stderr, "scale %s: %d instances saved in %s; %s\n", group, n, cfg, res.Message)
			return nil
		}
	},
}
