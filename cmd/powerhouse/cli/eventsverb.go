package cli

import (
	"encoding/json"
	"flag"
	"fmt"

	"github.com/powerhouse/powerhouse/events"
)

var eventsVerb = verb{
	name:    "events",
	signals: true,
	args:    "[GROUP]",
	short:   "show the house's events from journald; -f follows new ones",
	long: `Prints the PowerHouse events recorded in the journal (worker.start,
worker.stop, worker.reload, worker.shutdown, worker.message,
master.shutdown, master.reconfigure), oldest first, for every group or for
GROUP. -f keeps following new events until interrupted. --json prints one
JSON object per line: {"event","time","group","instance","message","fields"}.
The same entries answer journalctl POWERHOUSE_EVENT=... queries.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		follow := fs.Bool("f", false, "follow: keep printing new events")
		asJSON := fs.Bool("json", false, "one JSON object per line")
		lines := fs.Int("n", 0, "show only the last `N` past events (default: all)")
		return func(e *env, args []string) error {
			if len(args) > 1 {
				return usagef("expected at most one GROUP")
			}
			if *lines < 0 {
				return usagef("-n must be 0 (all) or more")
			}
			o := events.ReadOptions{Follow: *follow, Lines: *lines}
			if len(args) == 1 {
				o.Group = args[0]
			}
			enc := json.NewEncoder(e.stdout)
			return events.Read(e.ctx, o, func(ev events.Event) error {
				if *asJSON {
					return enc.Encode(ev)
				}
				_, err := fmt.Fprintf(e.stdout, "%s %s\n", ev.Time.Local().Format("2006-01-02 15:04:05.000"), ev)
				return err
			})
		}
	},
}
