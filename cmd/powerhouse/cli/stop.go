package cli

import (
	"flag"
	"fmt"

	"github.com/powerhouse/powerhouse/generator"
)

func init() {
	for _, v := range []struct{ name, short, long string }{
		{"stop", "stop the whole house: every worker drains and exits (systemctl stop powerhouse.target)",
			"Stops powerhouse.target and waits: each supervisor logs master.shutdown, each worker gets SIGTERM, finishes its requests and exits."},
		{"start", "start the whole house (systemctl start powerhouse.target)",
			"Starts powerhouse.target and waits until every supervisor reported ready."},
	} {
		v := v
		register(&command{
			name: v.name, short: v.short, long: v.long,
			flags: func(fs *flag.FlagSet) func(*env, []string) error {
				mf := addManagerFlags(fs)
				return func(e *env, args []string) error {
					if len(args) > 0 {
						return usagef("takes no arguments")
					}
					m, err := mf.connect(e)
					if err != nil {
						return err
					}
					defer m.Close()
					if v.name == "stop" {
						err = m.Stop(e.ctx, generator.Target)
					} else {
						err = m.Start(e.ctx, generator.Target)
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stderr, "%s: %s done\n", generator.Target, v.name)
					return nil
				}
			},
		})
	}
}
