package cli

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"

	sdbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

func init() {
	register(&command{
		name:  "set",
		args:  "GROUP KEY=VALUE...",
		short: "change a group's config live: saved in the configuration, delivered to the running workers",
		long: `Sets keys of the group's [worker.config] table. VALUE is a JSON literal
(42, true, "text", [1,2], {"a":1}); a bare word is a string. The
configuration file is edited in place (only the lines concerned; comments
stay), validated, and written atomically; then the group's JSON config is
rewritten and the running workers get SIGHUP (the activation library
re-reads it and runs OnReconfigure), without a restart. The change is
logged as master.reconfigure. A bad key or value changes nothing.`,
		flags: func(fs *flag.FlagSet) func(*env, []string) error {
			mf := addManagerFlags(fs)
			return func(e *env, args []string) error {
				if len(args) < 2 {
					return usagef("expected GROUP and at least one KEY=VALUE")
				}
				group := args[0]
				values := map[string]any{}
				for _, a := range args[1:] {
					k, v, ok := strings.Cut(a, "=")
					if !ok {
						return usagef("%q is not KEY=VALUE", a)
					}
					if err := config.ValidKey(k); err != nil {
						return usagef("%v", err)
					}
					val, err := config.ParseValue(v)
					if err != nil {
						return usagef("%s: %v", k, err)
					}
					values[k] = val
				}
				src, err := os.ReadFile(*mf.config)
				if err != nil {
					return err
				}
				c, err := config.Parse(*mf.config, src)
				if err != nil {
					return err
				}
				if c.Worker(group) == nil {
					return usagef("no group %q in %s", group, *mf.config)
				}
				out, err := config.SetGroupConfig(*mf.config, src, group, values)
				if err != nil {
					return &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse set: %w", err)}
				}
				nc, err := config.Parse(*mf.config, out)
				if err != nil {
					return err
				}
				w := nc.Worker(group)
				if _, err := units.WriteFile(*mf.config, out, 0o644); err != nil {
					return err
				}
				js, err := w.ConfigJSON()
				if err != nil {
					return err
				}
				if err := os.MkdirAll(generator.RuntimeDir+"/"+group, 0o755); err != nil {
					return err
				}
				if _, err := units.WriteFile(generator.GroupConfigPath(group), js, 0o644); err != nil {
					return err
				}
				m, err := mf.connect(e)
				if err != nil {
					return err
				}
				defer m.Close()
				sts, err := m.States(e.ctx, "powerhouse-"+group+"@*.service")
				if err != nil {
					return err
				}
				n := 0
				for _, st := range sts {
					if st.ActiveState == "active" || st.ActiveState == "reloading" {
						if err := m.Conn().KillUnitWithTarget(e.ctx, st.Name, sdbus.Main, int32(syscall.SIGHUP)); err != nil {
							return fmt.Errorf("deliver to %s: %w", st.Name, err)
						}
						n++
					}
				}
				keys := make([]string, 0, len(values))
				for k := range values {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				_ = events.Write(events.Event{Type: events.MasterReconfigure, Group: group,
					Message: fmt.Sprintf("group %s reconfigured: %s", group, strings.Join(keys, ", ")),
					Fields:  map[string]string{"keys": strings.Join(keys, ","), "config": string(js)}})
				fmt.Fprintf(e.stderr, "set %s: %s saved in %s, delivered to %d running workers\n", group, strings.Join(keys, ", "), *mf.config, n)
				return nil
			}
		},
	})
}
