package cli

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/powerhouse/powerhouse/units"
)

var (
	stopVerb = targetVerb("stop", "stop the whole house: every worker drains and exits (systemctl stop powerhouse.target)",
		"Stops powerhouse.target and waits: each supervisor logs master.shutdown, each worker gets SIGTERM, finishes its requests and exits.")
	startVerb = targetVerb("start", "start the whole house (systemctl start powerhouse.target)",
		"Starts powerhouse.target and waits until every supervisor reported ready.")
)

// targetVerb is start or stop: the verb name does to powerhouse.target.
func targetVerb(name, short, long string) verb {
	return verb{
		name: name, short: short, long: long,
		flags: func(fs *flag.FlagSet) func(*env, []string) error {
			// No --config: the verb acts on powerhouse.target, whatever
			// configuration made it, and a flag that changed nothing
			// would only mislead.
			user := fs.Bool("user", false, "talk to the user's service manager instead of the system's")
			return func(e *env, args []string) error {
				if len(args) > 0 {
					return usagef("takes no arguments")
				}
				if err := requireRoot(name, *user); err != nil {
					return err
				}
				m, err := connect(e.ctx, *user)
				if err != nil {
					return err
				}
				defer m.Close()
				if name == "stop" {
					if err = m.Stop(e.ctx, units.Target); err == nil {
						// The target is ordered after the groups, so its
						// own stop job ends first: wait for the rest.
						err = waitStopped(e, m)
					}
				} else {
					err = m.Start(e.ctx, units.Target)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "%s: %s done\n", units.Target, name)
				return nil
			}
		},
	}
}

// waitStopped waits until no unit of the house is active or stopping.
func waitStopped(e *env, m units.Manager) error {
	deadline := time.Now().Add(3 * time.Minute)
	for {
		sts, err := m.States(e.ctx, "powerhouse*")
		if err != nil {
			return err
		}
		var busy []string
		for _, st := range sts {
			if st.ActiveState != "inactive" && st.ActiveState != "failed" {
				busy = append(busy, st.Name)
			}
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still running after 3 minutes: %s", strings.Join(busy, " "))
		}
		select {
		case <-e.ctx.Done():
			return e.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
