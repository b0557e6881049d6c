package cli

import (
	"flag"
	"fmt"
	"runtime"
)

var versionVerb = verb{
	name:  "version",
	short: "print the version of powerhouse",
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("takes no arguments")
			}
			fmt.Fprintf(e.stdout, "powerhouse %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		}
	},
}
